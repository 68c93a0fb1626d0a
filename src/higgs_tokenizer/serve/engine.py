"""The server's two model workers: live streams first, whole requests when the CPU is free.

- The live worker owns every open decode stream (a `DecoderStreams` per lookahead).
  Each tick it takes what the clients sent since the last one (new streams, frames,
  ends, closes), advances every stream that has frames waiting in one batched decoder
  step (at most `max_frames_per_step` frames each, so one client's backlog cannot make
  a tick long), and hands each stream its new audio. It sleeps while nothing waits.
- The bulk worker runs whole requests, oldest first. Encode requests wait up to
  `max_wait_ms` for others, and up to `max_batch` share one masked batch (exact: each
  gets the codes it would get alone). A decode request is decoded with
  `HiggsAudioTokenizer.decode` (in chunks beyond the encoding window).
- The bulk worker runs at the lowest OS priority (Linux's SCHED_IDLE, else nice +10;
  the threads its math library starts inherit it), so while streams are live they get
  the cores first: a long request slows down, the streams do not stall.

Nothing here knows about HTTP: the app (`app.py`) submits work and awaits futures, and
receives each stream's audio through the `StreamSink` it opened the stream with.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .. import compiled_steps
from ..decoder_streams import DecoderStreams
from ..graphed_steps import GraphedSteps, bucket_sizes
from .metrics import Metrics
from .settings import ServeSettings

log = logging.getLogger("higgs_tokenizer.serve")

BULK_NICE = 10


class Busy(RuntimeError):
    """The server is at a limit (open streams, queued requests): try again later."""


class StreamSink(Protocol):
    """Where a stream's audio goes; called from the live worker's thread."""

    def audio(self, samples: torch.Tensor) -> None: ...
    def finished(self, samples: int) -> None: ...
    def failed(self, error: Exception) -> None: ...


@dataclass
class _Encode:
    clip: object  # mono float32 numpy array at the model's rate
    bandwidth: float | None
    future: concurrent.futures.Future
    queued: float = field(default_factory=time.monotonic)


@dataclass
class _Decode:
    codes: object  # [n_q, frames] tensor, or an EncodedAudio
    future: concurrent.futures.Future


@dataclass
class _LiveStream:
    streams: DecoderStreams
    inner_id: int
    sink: StreamSink
    ending: bool = False


class Engine:
    def __init__(self, tokenizer, settings: ServeSettings, metrics: Metrics):
        self.tokenizer, self.settings, self.metrics = tokenizer, settings, metrics
        self._cond = threading.Condition()
        self._commands: list[tuple] = []  # for the live worker, in order
        self._bulk: deque = deque()  # _Encode and _Decode, oldest first
        self._open_streams = 0
        self._waiting: dict[int, int] = {}  # stream -> frames pushed, not yet decoded
        self._next_id = 0
        self._stopping = False
        self._live_elsewhere = False
        self._threads: list[threading.Thread] = []
        self.compiled = compiled_steps.shared(tokenizer.model) if settings.compiled_step_streams else None
        self.graphs = GraphedSteps(tokenizer.model) if settings.graphed_step_streams else None  # CUDA only: checked

    def compile_steps(self) -> None:
        """Compile the decoder's 1-frame steps of 1 to `compiled_step_streams` streams (before
        serving: a live step must not wait for a compiler)."""
        if self.compiled is not None:
            self.compiled.compile(batch_sizes=range(1, self.settings.compiled_step_streams + 1), frames=(1,))

    def capture_graphs(self) -> None:
        """Capture the decoder's 1-frame steps of 1 to `graphed_step_streams` streams as CUDA
        graphs (before serving): batches of 1, 2, 4, ... and that many, the rest padded."""
        if self.graphs is not None:
            self.graphs.capture(batch_sizes=bucket_sizes(self.settings.graphed_step_streams), frames=(1,))

    def start(self, live_in_this_process_main_thread: bool = False) -> None:
        """Start the bulk worker, and the live one in a thread of its own unless the caller
        runs it (`run_live`) on the process's main thread, where it is faster: PyTorch's OpenMP
        parallel regions cost more when opened from any other thread, and a streamed step
        opens hundreds of small ones (a 4-stream step took 21 ms on the main thread, 33 ms on
        another, on the project's 2-core CPU)."""
        self._live_elsewhere = live_in_this_process_main_thread
        self._threads = [threading.Thread(target=self._run_bulk, name="higgs-bulk", daemon=True)]
        if not live_in_this_process_main_thread:
            self._threads.append(threading.Thread(target=self.run_live, name="higgs-live", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the work queued, then end the workers (`run_live` returns)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ streams
    def open_stream(self, sink: StreamSink, lookahead_frames: int | None) -> int:
        """A new stream's id, or `Busy` when `max_streams` are open."""
        with self._cond:
            if self._stopping:
                raise Busy("the server is shutting down")
            if self._open_streams >= self.settings.max_streams:
                raise Busy(f"{self._open_streams} streams are open, the most this server takes; try again later")
            self._open_streams += 1
            self.metrics.active_streams.set(self._open_streams)
            stream_id, self._next_id = self._next_id, self._next_id + 1
            self._waiting[stream_id] = 0
            self._commands.append(("open", stream_id, sink, lookahead_frames))
            self._cond.notify_all()
        return stream_id

    def push(self, stream_id: int, codes: torch.Tensor) -> None:
        """Frames `[n_q, k]` for a stream, already checked (`model.check_codes`); `Busy` when
        the stream would have more than `max_frames_waiting` frames not yet decoded (a client
        far ahead of real time, or a server far behind): memory and step time stay bounded."""
        with self._cond:
            if stream_id not in self._waiting:
                return  # closed already: its frames have nowhere to go
            waiting = self._waiting[stream_id] + codes.shape[-1]
            if waiting > self.settings.max_frames_waiting:
                raise Busy(f"{waiting} frames would wait to be decoded, more than the "
                           f"{self.settings.max_frames_waiting} a stream may have; send at the pace of the audio")
            self._waiting[stream_id] = waiting
            self._commands.append(("push", stream_id, codes))
            self._cond.notify_all()

    def end(self, stream_id: int) -> None:
        """No more frames: the stream's last audio, then `sink.finished`."""
        self._command("end", stream_id)

    def close(self, stream_id: int) -> None:
        """Forget a stream (its client left): its state is freed, its frames dropped."""
        self._command("close", stream_id)

    def _command(self, *command) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify_all()

    def run_live(self) -> None:
        """The live worker's loop: returns once `stop` is called and no stream is open."""
        torch.set_grad_enabled(False)
        live: dict[int, _LiveStream] = {}
        engines: dict[int | None, DecoderStreams] = {}
        while True:
            with self._cond:
                while not self._commands and not self._stopping and not _has_work(engines):
                    self._cond.wait()
                commands, self._commands = self._commands, []
                stopping = self._stopping
            self._apply_all(commands, live, engines)
            if stopping and not live and not commands:
                return
            try:
                self._tick(live, engines)
            except Exception as err:  # a bug, not bad input (checked before): fail every stream
                log.exception("decoder step failed")
                for stream_id in list(live):
                    self._drop(stream_id, live, error=err)

    def _apply_all(self, commands: list[tuple], live: dict, engines: dict) -> None:
        """The commands in order, except that a run of pushes to different streams is queued
        as one `push_batch` per decoder and shape: one check of the codes for all of them,
        where a push checks its own (hundreds of streams would pay it hundreds of times)."""
        pushes: dict[int, torch.Tensor] = {}  # stream -> codes: the run of pushes so far
        for command in commands:
            if command[0] != "push" or command[1] in pushes:  # the run ends
                self._push_all(pushes, live, engines)
                pushes = {}
            if command[0] == "push":
                pushes[command[1]] = command[2]
            else:
                self._apply(command, live, engines)
        self._push_all(pushes, live, engines)

    def _push_all(self, pushes: dict[int, torch.Tensor], live: dict, engines: dict) -> None:
        batches: dict[tuple, list[int]] = {}  # (decoder, shape) -> streams
        for stream_id, codes in pushes.items():
            if stream_id in live:  # else closed already
                batches.setdefault((id(live[stream_id].streams), codes.shape), []).append(stream_id)
        for ids in batches.values():
            try:
                live[ids[0]].streams.push_batch([live[i].inner_id for i in ids], torch.stack([pushes[i] for i in ids]))
            except Exception:  # checked before; each stream on its own, so that one that refuses fails alone
                for stream_id in ids:
                    self._apply(("push", stream_id, pushes[stream_id]), live, engines)

    def _apply(self, command: tuple, live: dict, engines: dict) -> None:
        kind, stream_id = command[0], command[1]
        if kind == "open":
            sink, lookahead = command[2], command[3]
            if lookahead not in engines:
                engines[lookahead] = DecoderStreams(  # one compiled step serves every lookahead
                    self.tokenizer.model, lookahead_frames=lookahead, max_frames_per_step=self.settings.max_frames_per_step,
                    compiled=self.compiled, graphs=self.graphs,
                )
            streams = engines[lookahead]
            live[stream_id] = _LiveStream(streams, streams.add(), sink)
            return
        stream = live.get(stream_id)
        if stream is None:
            return  # closed already (the client left while its frames were on the way)
        try:
            if kind == "push":
                stream.streams.push(stream.inner_id, command[2])
            elif kind == "end":
                stream.streams.end(stream.inner_id)
                stream.ending = True
            elif kind == "close":
                self._drop(stream_id, live)
        except Exception as err:  # checked before; a stream that refuses it fails alone
            self._drop(stream_id, live, error=err)

    def _tick(self, live: dict, engines: dict) -> None:
        for streams in engines.values():
            members = {sid: s for sid, s in live.items() if s.streams is streams}
            if not any(s.ending or streams.frames_waiting(s.inner_id) for s in members.values()):
                continue
            decoded = {sid: streams.frames_decoded(s.inner_id) for sid, s in members.items()}
            started, compiled, graphed = time.perf_counter(), _steps_run(self.compiled), _steps_run(self.graphs)
            out = streams.step()
            self.metrics.step_seconds.observe(time.perf_counter() - started)
            self.metrics.compiled_steps.inc(_steps_run(self.compiled) - compiled)
            self.metrics.graphed_steps.inc(_steps_run(self.graphs) - graphed)
            with self._cond:
                for sid, s in members.items():
                    if sid in self._waiting:
                        self._waiting[sid] -= streams.frames_decoded(s.inner_id) - decoded[sid]
            self.metrics.step_streams.observe(len(out))
            by_inner = {s.inner_id: (sid, s) for sid, s in members.items()}
            for inner_id, audio in out.items():
                stream_id, stream = by_inner[inner_id]
                if len(audio):
                    self.metrics.audio_seconds_out.inc(len(audio) / self.tokenizer.sample_rate)
                    stream.sink.audio(audio)
                if stream.ending and not streams.frames_waiting(inner_id):
                    samples = streams.samples_emitted(inner_id)
                    self._drop(stream_id, live)
                    stream.sink.finished(samples)

    def _drop(self, stream_id: int, live: dict, error: Exception | None = None) -> None:
        stream = live.pop(stream_id)
        stream.streams.remove(stream.inner_id)
        with self._cond:
            self._open_streams -= 1
            self._waiting.pop(stream_id, None)
            self.metrics.active_streams.set(self._open_streams)
        if error is not None:
            stream.sink.failed(error)

    # ------------------------------------------------------------------ requests
    def encode(self, clip, bandwidth: float | None) -> concurrent.futures.Future:
        """Codes `[n_q, frames]` of a mono clip at the model's rate (a future)."""
        return self._submit(_Encode(clip, bandwidth, concurrent.futures.Future()))

    def decode(self, codes) -> concurrent.futures.Future:
        """Audio (1-D float32) of codes `[n_q, frames]` or an `EncodedAudio` (a future)."""
        return self._submit(_Decode(codes, concurrent.futures.Future()))

    def _submit(self, job):
        with self._cond:
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._bulk) >= self.settings.max_pending_requests:
                raise Busy(f"{len(self._bulk)} requests are queued, the most this server holds; try again later")
            self._bulk.append(job)
            self._cond.notify_all()
        return job.future

    def _run_bulk(self) -> None:
        torch.set_grad_enabled(False)
        _lower_priority()
        while True:
            with self._cond:
                while not self._bulk and not self._stopping:
                    self._cond.wait()
                if not self._bulk:
                    return
                job = self._bulk[0]
                if isinstance(job, _Encode):
                    batch = self._encode_batch_locked()
                else:
                    self._bulk.popleft()
            if isinstance(job, _Encode):
                self._run_encodes(batch)
            elif job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(self.tokenizer.decode(job.codes))
                except Exception as err:
                    job.future.set_exception(err)

    def _encode_batch_locked(self) -> list[_Encode]:
        """Up to `max_batch` queued encodes of the oldest one's bandwidth, once the oldest has
        waited `max_wait_ms` or the batch is full (called holding the lock; waits on it)."""
        first = self._bulk[0]
        deadline = first.queued + self.settings.max_wait_ms / 1000

        def alike() -> list[_Encode]:
            jobs = [j for j in self._bulk if isinstance(j, _Encode) and j.bandwidth == first.bandwidth]
            return jobs[: self.settings.max_batch]

        while len(alike()) < self.settings.max_batch and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        batch = alike()
        for job in batch:
            self._bulk.remove(job)
        return batch

    def _run_encodes(self, batch: list[_Encode]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        self.metrics.encode_batch.observe(len(batch))
        results = self.tokenizer.try_encode_clips([job.clip for job in batch], batch[0].bandwidth)
        for job, result in zip(batch, results):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                self.metrics.audio_seconds_in.inc(len(job.clip) / self.tokenizer.sample_rate)
                job.future.set_result(result)


def _has_work(engines: dict) -> bool:
    return any(streams.frames_waiting(i) for streams in engines.values() for i in streams.stream_ids)


def _lower_priority() -> None:
    """Run this thread, and the threads it starts (its OpenMP team), only on CPU time that
    nothing else wants: Linux's SCHED_IDLE policy, or else nice +10 (both per thread there,
    inherited, and allowed without privileges)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)
    except (AttributeError, OSError) as err:  # not Linux, or not allowed: the policy still holds, unenforced
        log.warning("could not lower the bulk worker's priority (%s): long requests may slow live streams", err)


def _steps_run(programs) -> int:
    return programs.steps_run if programs is not None else 0
