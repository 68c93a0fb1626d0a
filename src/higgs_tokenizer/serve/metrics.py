"""The server's counters, in the Prometheus text format (version 0.0.4).

A handful of metrics need no client library: each is a value or a set of histogram
buckets behind one lock, rendered on request.
"""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _value(number: float) -> str:
    """A sample value with every digit a float holds (counters must not round)."""
    number = float(number)
    return str(int(number)) if math.isfinite(number) and number == int(number) else repr(number)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"] + self._lines()

    def _lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str):
        super().__init__(name, help_text)
        self._values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def _lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(dict(key))} {_value(value)}" for key, value in items] or [f"{self.name} 0"]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str):
        super().__init__(name, help_text)
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = float(value)

    def _lines(self) -> list[str]:
        return [f"{self.name} {_value(self._value)}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple):
        super().__init__(name, help_text)
        self.buckets = tuple(buckets)
        self._series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def _lines(self) -> list[str]:
        with self._lock:
            items = sorted((key, list(series)) for key, series in self._series.items())
        lines = []
        for key, series in items:
            labels = dict(key)
            for bound, count in zip(self.buckets, series):
                lines.append(f"{self.name}_bucket{_labels({**labels, 'le': f'{bound:g}'})} {count}")
            lines.append(f"{self.name}_bucket{_labels({**labels, 'le': '+Inf'})} {series[-1]}")
            lines.append(f"{self.name}_sum{_labels(labels)} {_value(series[-2])}")
            lines.append(f"{self.name}_count{_labels(labels)} {series[-1]}")
        return lines


class Metrics:
    """Every metric the server keeps."""

    def __init__(self):
        self.requests = Counter("higgs_requests_total", "Requests by endpoint and status code (streams: by close code).")
        self.latency = Histogram("higgs_request_seconds", "Request latency by endpoint (streams: their whole life).", LATENCY_BUCKETS)
        self.encode_batch = Histogram("higgs_encode_batch_size", "Encode requests per model call.", COUNT_BUCKETS)
        self.step_streams = Histogram("higgs_stream_step_streams", "Streams advanced per decoder step.", COUNT_BUCKETS)
        self.step_seconds = Histogram("higgs_stream_step_seconds", "Time of one batched decoder step.", LATENCY_BUCKETS)
        self.compiled_steps = Counter("higgs_stream_compiled_steps_total", "Decoder steps that ran compiled (--compile-steps).")
        self.graphed_steps = Counter("higgs_stream_graphed_steps_total", "Decoder steps that ran as CUDA graphs (--graph-steps).")
        self.active_streams = Gauge("higgs_active_streams", "Decode streams open now.")
        self.audio_seconds_in = Counter("higgs_audio_seconds_in_total", "Seconds of audio encoded.")
        self.audio_seconds_out = Counter("higgs_audio_seconds_out_total", "Seconds of audio decoded (requests and streams).")

    def render(self) -> str:
        metrics = (self.requests, self.latency, self.encode_batch, self.step_streams, self.step_seconds,
                   self.compiled_steps, self.graphed_steps, self.active_streams, self.audio_seconds_in, self.audio_seconds_out)
        return "\n".join(line for metric in metrics for line in metric.render()) + "\n"
