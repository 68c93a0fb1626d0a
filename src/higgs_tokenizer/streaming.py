"""Incremental decoding: each layer of the acoustic decoder keeps the state its next
inputs need, so decoding k new code frames costs about k frames of work, and the
audio equals one-shot decoding.

Every layer of the decoder is time-invariant, so run causally each is itself with a
delay:
- a conv with kernel K, dilation d and symmetric padding p = d(K - 1) / 2 is a causal
  conv whose output lags its input by p: it keeps its last 2p inputs;
- a transposed conv with stride s and kernel 2s is, phase by phase, a causal conv
  with two taps over input frames (`UpsamplingConv1d.phase_weight`): it keeps its last
  input frame, and cropping its padding p makes its output lag by p samples;
- a residual unit's skip is delayed by its branch conv's p (a FIFO of p inputs);
- Snake and the 1-tap convs work sample by sample and keep nothing.

So each layer's output stream starts with `lead` values at negative times (its own
delay plus its input's, scaled by the upsampling), standing where one-shot decoding
has zero padding: they are zeroed at the output of each layer whose output feeds a
padded conv, and at a stream's end the values past each layer's length are too. The
last layer's lead is the decoder's latency in samples, derived from the layers
(`DecoderPlan.latency_samples`); `decoder_context` gives the same from the receptive
field, in frames.

The layers as a step runs them are `causal_layers`'s. `DecoderState` is one stream's
whole state, apart from the model, which stays stateless and shared. `decode_step` advances a batch of states by the same number of
frames in one call per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .causal_layers import Histories, decoder_layers, eager_layers
from .runtime import float32_math


def decoder_context(model) -> tuple[int, int]:
    """(left, right): code frames before and after frame f that f's audio depends on."""
    hop = model.config.hop_length
    frame = 10_000  # far from both ends, so no edge clips the intervals
    lo, hi = frame * hop, (frame + 1) * hop - 1
    convs = [m for m in model.acoustic_decoder.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    for conv in reversed(convs):  # walk from the output back to the codes
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        if isinstance(conv, nn.ConvTranspose1d):
            # output t receives input j when 0 <= t + p - j*s <= d*(k-1)
            lo, hi = math.ceil((lo + p - d * (k - 1)) / s), (hi + p) // s
        else:
            lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return frame - lo, hi - frame


@dataclass(frozen=True)
class LayerTiming:
    """Where a layer's output stream stands: `lead` values at negative times come first,
    and it carries `rate` values per code frame."""

    lead: int
    rate: int


class DecoderPlan:
    """The timing of every stateful place of a model's decoder, derived from its layers."""

    def __init__(self, model):
        layers = eager_layers(model.acoustic_decoder)
        self.timing: dict[str, LayerTiming] = {}
        lead = layers.conv1.delay
        self.timing[layers.conv1.name] = LayerTiming(lead, 1)
        rate = 1
        for block in layers.blocks:
            upsample = block.upsample
            lead, rate = lead * upsample.stride + upsample.padding, rate * upsample.stride
            self.timing[upsample.name] = LayerTiming(lead, rate)
            for unit in block.units:
                lead += unit.delay
                self.timing[unit.name] = LayerTiming(lead, rate)
        lead += layers.conv2.delay
        self.timing[layers.conv2.name] = LayerTiming(lead, rate)
        if rate != model.config.hop_length:
            raise ValueError(f"the decoder upsamples by {rate}, not by the hop length {model.config.hop_length}")
        self.hop = rate

    @property
    def latency_samples(self) -> int:
        """Samples of audio that lag the newest code frame's end: the decoder's right context."""
        return self.timing["conv2"].lead

    @property
    def steady_latent_frames(self) -> int:
        """Latent frames after which every layer is past its lead (`steady`)."""
        return max(-(-t.lead // t.rate) for t in self.timing.values())

    @property
    def end_frames(self) -> int:
        """Frames of zero latents that carry every layer's last values out at a stream's end."""
        return -(-self.latency_samples // self.hop)


class _StackedHistories:
    """The histories of a batch of streams after a step, as the step left them: `[B, C, L]`
    per stateful place. Each stream's state reads its row, so a step of the same streams as
    the last one takes them as they are, and a step costs no tensor operation per stream."""

    __slots__ = ("tensors", "size")

    def __init__(self, tensors: dict[str, torch.Tensor], size: int):
        self.tensors, self.size = tensors, size

    def row(self, b: int) -> dict[str, torch.Tensor]:
        return {name: t[b : b + 1] for name, t in self.tensors.items()}


class DecoderState:
    """One stream's state: what each layer keeps between steps, and where the stream is.

    The model holds none of it, so one model serves any number of streams; a state can
    be copied (`copy`) to explore a continuation without disturbing the original. After a
    step the state's histories are its row of the batch it stepped in (shared with the
    batch's other streams, never written into); `detach` gives it a copy.
    """

    def __init__(self, buffers: dict[str, torch.Tensor] | None = None, frames: int = 0, latent_frames: int = 0,
                 num_quantizers: int | None = None, ended: bool = False):
        self._own = {} if buffers is None else buffers  # [1, channels, length] each; None while a row of `_stack`
        self._stack: _StackedHistories | None = None
        self._row = 0
        self.frames = frames  # code frames taken in
        # Latent frames the layers have taken in: the code frames, and at the end the frames of
        # zero padding. Layer `name` has output `latent_frames * plan.timing[name].rate` values.
        self.latent_frames = latent_frames
        self.num_quantizers = num_quantizers  # fixed by the first frames
        self.ended = ended

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The inputs each stateful layer keeps, `[1, channels, length]` per place."""
        if self._own is None:
            self._own = self._stack.row(self._row)
        return self._own

    @property
    def batch(self) -> "_StackedHistories | None":
        """The step's batch whose row its histories are (None when it holds its own)."""
        return self._stack

    def _place_in(self, stack: _StackedHistories, row: int) -> None:
        self._own, self._stack, self._row = None, stack, row

    def detach(self) -> None:
        """Hold a copy of its histories instead of a row of its last step's batch, so that the
        batch can be freed (a stream left out of later steps); `detach_all` for many, which
        copies the rows of one batch together."""
        detach_all([self])

    def copy(self) -> "DecoderState":
        """An independent state, with copies of the history tensors."""
        return DecoderState({k: v.clone() for k, v in self.buffers.items()}, self.frames, self.latent_frames,
                            self.num_quantizers, self.ended)

    def branch(self) -> "DecoderState":
        """A state to step on without disturbing this one, at no cost per layer: it shares the
        history tensors, which no step writes into (a step makes new ones); write into
        neither's tensors."""
        state = DecoderState(None, self.frames, self.latent_frames, self.num_quantizers, self.ended)
        state._own, state._stack, state._row = None if self._own is None else dict(self._own), self._stack, self._row
        return state

    @property
    def nbytes(self) -> int:
        """Bytes of state this stream holds."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())


def detach_all(states: list[DecoderState]) -> None:
    """`detach` for many states at once: those of one batch take their rows in one copy per
    history (`_gather`: a batch of their own), whatever their number; states that are the
    whole of their batch, in order, keep it as it is (its rows are all theirs)."""
    by_stack: dict[int, list[DecoderState]] = {}
    for state in states:
        if state._stack is not None:
            by_stack.setdefault(id(state._stack), []).append(state)
    for group in by_stack.values():
        device = next(iter(group[0]._stack.tensors.values())).device
        stack = _StackedHistories(_gather(group, _time_major(device)), len(group))
        for b, state in enumerate(group):
            state._place_in(stack, b)


def new_state(model) -> DecoderState:
    """A stream's state before its first frame: every history is the zero padding."""
    dtype, device = model.dtype, model.device

    def zeros(channels: int, length: int) -> torch.Tensor:
        if _time_major(device):  # laid out as a step leaves its buffers
            return torch.zeros(1, length, channels, dtype=dtype, device=device).transpose(1, 2)
        return torch.zeros(1, channels, length, dtype=dtype, device=device)

    histories = eager_layers(model.acoustic_decoder).histories()
    return DecoderState(buffers={name: zeros(channels, length) for name, channels, length in histories})


class _Step(Histories):
    """One batched step: the states' histories as one batch, and each layer's validity masks."""

    def __init__(self, model, plan: DecoderPlan, states: list[DecoderState], end: bool):
        time_major = _time_major(model.device)
        super().__init__(dict(_gather(states, time_major)), time_major)  # a dict of its own: steps replace entries
        self.plan, self.states, self.end = plan, states, end
        self.latent_frames = [s.latent_frames for s in states]  # before this step
        self.fewest = min(self.latent_frames)
        self.device = model.device

    @property
    def steady(self) -> bool:
        """Whether no value of this step needs zeroing: not an end, and every stream steady."""
        return not self.end and self.fewest >= self.plan.steady_latent_frames

    def settle(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """Zero the values of layer `name`'s output that stand outside its signal: before its
        start (its lead) and, at a stream's end, past its length."""
        timing = self.plan.timing[name]
        if not self.end and self.fewest * timing.rate >= timing.lead:
            return y
        produced = torch.tensor(self.latent_frames, device=self.device) * timing.rate  # values output before
        times = produced[:, None] - timing.lead + torch.arange(y.shape[-1], device=self.device)
        valid = times >= 0
        if self.end:
            lengths = torch.tensor([s.frames * timing.rate for s in self.states], device=self.device)
            valid &= times < lengths[:, None]
        return torch.where(valid[:, None, :], y, torch.zeros((), dtype=y.dtype, device=y.device))

    def finish(self, frames: int) -> None:
        """Give each state its row of the histories, and count the `frames` latent frames that
        the layers have taken in."""
        stack = _StackedHistories(self.buffers, len(self.states))
        for b, state in enumerate(self.states):
            state._place_in(stack, b)
            state.latent_frames += frames


def steady(plan: DecoderPlan, states: list[DecoderState]) -> bool:
    """Whether every layer of every stream is past its lead: from then on a step of frames
    (not an end) has no value to zero."""
    return all(s.latent_frames >= plan.steady_latent_frames for s in states)


def _gather(states: list[DecoderState], time_major: bool) -> dict[str, torch.Tensor]:
    """The states' histories as one batch, in their order: as the last step left them when
    these are its streams in the same order (a steady stream of steps: no copy), else their
    rows picked from the batches they were in (one copy per place, however many streams)."""
    first = states[0]._stack
    if first is not None and first.size == len(states) and all(s._stack is first and s._row == b for b, s in enumerate(states)):
        return first.tensors
    sources: dict[int, int] = {}  # id of a stack -> its first row in the pool
    stacks: list[_StackedHistories] = []
    loose = [s for s in states if s._stack is None]  # histories of their own (new, copied or detached)
    pool_size = len(loose)
    index, next_loose = [], 0
    for state in states:
        if state._stack is None:
            index.append(next_loose)
            next_loose += 1
            continue
        offset = sources.get(id(state._stack))
        if offset is None:
            offset = sources[id(state._stack)] = pool_size
            stacks.append(state._stack)
            pool_size += state._stack.size
        index.append(offset + state._row)
    in_order = index == list(range(pool_size))
    names = list(loose[0].buffers if loose else stacks[0].tensors)
    rows, gathered = None, {}
    for name in names:
        parts = ([_stack([s.buffers[name] for s in loose], time_major)] if loose else []) + [s.tensors[name] for s in stacks]
        pool = parts[0] if len(parts) == 1 else _stack(parts, time_major)
        if not in_order and rows is None:
            rows = torch.tensor(index, device=pool.device)
        gathered[name] = pool if in_order else _pick(pool, rows, time_major)
    return gathered


def _pick(pool: torch.Tensor, rows: torch.Tensor, time_major: bool) -> torch.Tensor:
    """`pool[rows]`, laid out as the pool is."""
    if not time_major:
        return pool.index_select(0, rows)
    return pool.transpose(1, 2).index_select(0, rows).transpose(1, 2)


def _time_major(device: torch.device) -> bool:
    """Whether a step keeps its activations time-major in memory (`[B, C, T]` tensors laid out
    as `[B, T, C]`): on the CPU, where its matrix products then read and write them without a
    transposing copy, and oneDNN's convs take them as they are (channels last), 10-20 %
    faster than channels first at a step's sizes. GPUs keep the usual layout."""
    return device.type == "cpu"


def _stack(tensors: list[torch.Tensor], time_major: bool) -> torch.Tensor:
    """Batches of histories (`[b, C, L]` each) as one, always laid out alike (a compiled
    step's inputs must be)."""
    if not time_major:
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    if len(tensors) == 1 and tensors[0].stride(1) == 1:
        return tensors[0]
    return torch.cat([t.transpose(1, 2) for t in tensors]).transpose(1, 2)


def decode_step(
    model,
    plan: DecoderPlan,
    states: list[DecoderState],
    codes: torch.Tensor | None,
    end_frames: int | None = None,
    programs: tuple = (),
    to_host: bool = False,
) -> list[torch.Tensor]:
    """Advance a batch of streams by the same number of frames; each stream's new audio.

    `codes` `[batch, n_q, k]` (checked by the caller) are the next k frames of each
    stream; None ends the streams instead (their last samples), by `end_frames` frames of
    the decoder's zero padding (default `plan.end_frames`, all of them; fewer give only
    the first of the last samples). A stream's audio starts once its first samples are
    final and stops at its length; everything in between equals one-shot decoding of the
    whole stream. `programs`: `CompiledSteps` or `GraphedSteps`, the first of which that
    has a steady step's shape runs it (any other step runs eagerly). `to_host`: the audio
    in float32 on the CPU, moved there in one transfer for the batch (not one per stream,
    each of which waits for the device).

    Afterwards each state's histories are its row of the step's batch, which a next step
    of the same states in the same order takes as it is; a state left out of it keeps the
    whole batch alive until it steps again or is `detach`ed.
    """
    decoder = model.acoustic_decoder
    end = codes is None
    step = _Step(model, plan, states, end)
    with torch.no_grad(), float32_math(model.device, model.dtype, tf32=model.allow_tf32):
        if end:
            channels = decoder.conv1.in_channels
            frames = plan.end_frames if end_frames is None else end_frames
            x = torch.zeros(len(states), channels, frames, dtype=model.dtype, device=model.device)
        else:
            x = model.decoder_latents(codes.to(model.device))
        run = None
        for program in programs if step.steady else ():
            run = program.step_for(x.shape[0], x.shape[-1])
            if run is not None:
                break
        result = run(step.buffers, x) if run is not None else None
        if result is not None:
            audio, step.buffers = result
        else:
            audio = decoder_layers(eager_layers(decoder), step, x)
    if to_host:
        audio = audio.to(device="cpu", dtype=torch.float32)
    step.finish(x.shape[-1])
    out, width = [], audio.shape[-1]
    for row, state, latent_frames in zip(audio.unbind(0), states, step.latent_frames):
        start = latent_frames * plan.hop - plan.latency_samples  # the time of row[0]
        stop = min(start + width, state.frames * plan.hop) if end else start + width
        out.append(row if start >= 0 and stop == start + width else row[max(0, -start) : max(0, stop - start)])
        if not end:
            state.frames += codes.shape[-1]
    return out
