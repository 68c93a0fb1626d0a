"""Streaming steps captured as CUDA graphs: a steady step replayed as one launch.

A 1-frame step runs 400-odd small kernels (convs, Snakes, history updates); on a GPU,
launching them costs more than running them until the batch is large. Captured once
per shape (streams in the batch, frames per step) into a CUDA graph, the step is one
replay: the histories are copied into the graph's inputs, unless they are its own
outputs from the step before (a steady stream of steps), the latents too, and the new
histories come back in one copy (the states own that copy: nothing a state holds is
written by a later replay, so a `GraphedSteps` can serve several `DecoderStreams`).

A step of B streams runs in the smallest captured batch of at least B, its other rows
padding (a batch's rows never mix), so a few captured sizes (`bucket_sizes`: 1, 2, 4, ...)
serve every count: each shape holds its inputs and the last histories it gave out, two
copies of its batch's state (0.46 MiB a stream at full size), and the shapes share one
pool for their activations.

Only steady steps run graphed (no value to zero, as `CompiledSteps`); any other step,
and any shape not captured, runs eagerly on the same states. The graphs read the
decoder's weights where they were at capture: a change of weights, dtype or TF32 setting
(seen as `CompiledSteps` sees it) drops the graphs, with a warning, until `capture` is
called again. Capture while no other thread uses the GPU (CUDA refuses a capture that
meets another thread's work): `higgs-tokenizer serve --graph-steps` captures before it
serves.
"""

from __future__ import annotations

import threading
import warnings

import torch

from .causal_layers import eager_layers, steady_layers
from .runtime import float32_math
from .streaming import _time_major, new_state
from .weights_key import DecoderWeights


def bucket_sizes(most: int) -> list[int]:
    """Batch sizes to capture so that every count of streams up to `most` has one at most
    twice its size: the powers of two below `most`, and `most`."""
    sizes, size = [], 1
    while size < most:
        sizes.append(size)
        size *= 2
    return sizes + [most]


class GraphedSteps:
    """A model's steady streaming step, captured as CUDA graphs for chosen (batch, frames)
    shapes."""

    def __init__(self, model, graphs: bool = True):
        """`graphs=False` runs the same steps without capturing them (each replay calls the
        step on the graph's buffers): what a CPU can check of this class."""
        if graphs and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device; this one is on {model.device}")
        self.model, self._graphs = model, graphs
        self._weights = DecoderWeights(model.acoustic_decoder)
        self._captured: dict[tuple[int, int], _Graph] = {}
        self._settings = None  # what the graphs were captured with: weights, dtype, TF32
        self._pool = None
        self._lock = threading.Lock()  # one capture or replay at a time: the graphs' buffers are shared
        self.steps_run = 0  # steps that ran graphed

    @property
    def shapes(self) -> set[tuple[int, int]]:
        return set(self._captured)

    def capture(self, batch_sizes=(1,), frames=(1,)) -> None:
        """Capture the step now for every pair of batch size and frames per step."""
        shapes = {(int(b), int(k)) for b in batch_sizes for k in frames}
        if any(b < 1 or k < 1 for b, k in shapes):
            raise ValueError(f"batch sizes and frames must be positive, got {sorted(shapes)}")
        with self._lock:
            if self._settings != self._current_settings():
                self._captured, self._pool = {}, None
                self._settings = self._current_settings()
            if self._graphs and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            for shape in sorted(shapes - set(self._captured)):
                self._captured[shape] = _Graph(self.model, *shape, self._pool if self._graphs else None)

    def step_for(self, batch: int, frames: int):
        """The graphed step for `batch` streams advancing `frames` frames, `(buffers, latents)
        -> (audio, buffers)`, in the smallest captured batch that holds them; None when there
        is none (or the weights changed since)."""
        sizes = [b for b, k in self._captured if k == frames and b >= batch]
        if not sizes:
            return None
        graph = self._captured[min(sizes), frames]
        if self._settings != self._current_settings():
            warnings.warn("the model's weights or precision changed since its streaming steps were captured: "
                          "steps run eagerly until GraphedSteps.capture is called again", stacklevel=3)
            with self._lock:
                self._captured, self._pool = {}, None
            return None

        def run(buffers: dict[str, torch.Tensor], latents: torch.Tensor):
            with self._lock:
                result = graph.run(buffers, latents)
                self.steps_run += 1
            return result

        return run

    def _current_settings(self) -> tuple:
        return self._weights.key(), self.model.dtype, self.model.allow_tf32


class _Graph:
    """One shape's graph: its input buffers (histories, latents), its audio, and its replay."""

    def __init__(self, model, batch: int, frames: int, pool):
        decoder, self.device, dtype = model.acoustic_decoder, model.device, model.dtype
        time_major = _time_major(self.device)
        self.layout = _FlatLayout(new_state(model).buffers, batch, time_major)
        self._flat_inputs = torch.zeros(self.layout.size, dtype=dtype, device=self.device)
        self.inputs = self.layout.views(self._flat_inputs)
        self.latents = torch.zeros(batch, decoder.conv1.in_channels, frames, dtype=dtype, device=self.device)
        self._last: dict[str, torch.Tensor] | None = None  # the histories this graph gave out last
        self.layers = eager_layers(decoder)  # held: a graph reads its tensors where they were at capture

        def step() -> torch.Tensor:
            # The new histories go back into the inputs, so that a steady stream of steps needs
            # no copy in; the states get a copy of them (`run`).
            with torch.inference_mode(), float32_math(self.device, dtype, tf32=model.allow_tf32):
                audio, buffers = steady_layers(self.layers, self.inputs, self.latents, time_major)
                for name, view in self.inputs.items():
                    view.copy_(buffers[name])
            return audio

        if pool is None:  # not captured: each replay runs the step
            self._step, self.audio = step, None
            return
        with torch.cuda.device(self.device):  # capture and replay use the current device
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # kernels chosen and caches filled (derived weights) before capture
                    step()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, pool=pool):
                self.audio = step()
        self._step = None

    def run(self, buffers: dict[str, torch.Tensor], latents: torch.Tensor):
        """Copy the step's inputs in, replay, and copy its outputs out: the audio, and the new
        histories in one flat tensor of their own. Fewer streams than the graph's batch take
        its first rows."""
        count, last = latents.shape[0], self._last
        if last is None or any(buffers[name] is not last[name] for name in last):
            for name, view in self.inputs.items():  # other streams than the last step's
                view[:count].copy_(buffers[name])
        self.latents[:count].copy_(latents)
        if self._step is not None:
            self.audio = self._step()
        else:
            with torch.cuda.device(self.device):
                self._graph.replay()
        copy = self.layout.views(self._flat_inputs.clone())
        self._last = {name: view[:count] for name, view in copy.items()}
        return self.audio[:count].clone(), dict(self._last)


class _FlatLayout:
    """A batch's histories in one flat tensor, each place a view of it laid out as a step
    lays out its histories: a batch is then copied in one operation."""

    def __init__(self, template: dict[str, torch.Tensor], batch: int, time_major: bool):
        self.shapes = {name: (t.shape[1], t.shape[2]) for name, t in template.items()}  # (channels, length)
        self.batch, self.time_major = batch, time_major
        self.size = sum(batch * channels * length for channels, length in self.shapes.values())

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        views, offset = {}, 0
        for name, (channels, length) in self.shapes.items():
            part = flat[offset : offset + self.batch * channels * length]
            offset += part.numel()
            if self.time_major:
                views[name] = part.view(self.batch, length, channels).transpose(1, 2)
            else:
                views[name] = part.view(self.batch, channels, length)
        return views
