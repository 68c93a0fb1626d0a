"""Encoding recordings of any length in bounded memory.

HuBERT attends over the whole input, so memory and time grow with its length
(quadratically for attention). The policy: a recording is encoded in one call while
`encode_memory_bytes` estimates that the call fits a memory budget, and in windows
beyond it. A long recording is encoded in windows: each
window's core frames are encoded together with `context_frames` of audio on
both sides and only the core's codes are kept, stitched at frame boundaries.
Windows start on the frame grid (multiples of the hop), where both branches
line up exactly with one-shot encoding; the convolutions then give the
one-shot result wherever the context covers their receptive field, and only
attention, which sees just the window, differs. A recording that fits in one
window (core plus context) is encoded in one call: the one-shot codes.

The length rule is decided once for the whole recording, as one-shot encoding
decides it: when the acoustic branch is padded, every window's acoustic input
is cut from the padded signal, so the frame grid is the one-shot grid.

`SampleSource` feeds the windows: from an array in memory, or streamed from a
file (decoded, mixed and resampled block by block) so that the recording is
never held whole.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .layers import conv_lengths

WINDOW_SECONDS = 30.0
CONTEXT_SECONDS = 5.0
MEMORY_BUDGET_GB = 2.0

# How many times over the largest buffers are alive at the peak of one encode, fitted to
# peak memory measured with benchmarks/batch_long_stream.py memory-estimate (CPU, float32,
# full-size model 10-120 s, tiny model 10-180 s; docs/batching-long-streaming.md): the
# widest conv activation (residual inputs, Snake and conv outputs, blocks the allocator
# keeps for reuse) and the attention scores of one HuBERT layer. 8 before the acoustic
# encoder kept fewer activations alive at once (2026-11-28).
ACTIVATION_COPIES = 6.5
ATTENTION_COPIES = 1.0


class SampleSource:
    """Mono samples at the model's rate, read forwards in overlapping ranges.

    `read(start, stop)` returns samples [start, stop), zeros past the end; starts
    never go backwards, so only the samples from the latest start on are kept.
    """

    def __init__(self, chunks: Iterator[np.ndarray], length: int):
        self.num_samples = length
        self._chunks = chunks
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # index of _buffer[0]

    @classmethod
    def from_array(cls, samples: np.ndarray) -> "SampleSource":
        samples = np.asarray(samples, dtype=np.float32)
        return cls(iter([samples]), len(samples))

    def read(self, start: int, stop: int) -> np.ndarray:
        if start < self._buffer_start:
            raise ValueError("SampleSource reads must move forwards")
        end = min(stop, self.num_samples)
        while self._buffer_start + len(self._buffer) < end:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise ValueError(
                    f"the audio ended after {self._buffer_start + len(self._buffer)} samples, {self.num_samples} expected"
                )
            self._buffer = np.concatenate([self._buffer, np.asarray(chunk, dtype=np.float32)])
        # Forget what no later read can ask for.
        self._buffer = self._buffer[start - self._buffer_start :]
        self._buffer_start = start
        out = self._buffer[: max(0, end - start)]
        return np.pad(out, (0, stop - start - len(out))) if len(out) < stop - start else out.copy()


def encode_memory_bytes(model, num_samples: int) -> int:
    """An estimate of the memory one `encode` of a clip of `num_samples` needs beyond the
    weights: a term linear in the length, from the widest activation of the acoustic
    encoder and of HuBERT's conv feature encoder (channels x length, found from their
    layers), and a quadratic one, from HuBERT's attention scores (heads x frames²)."""
    config, hubert = model.config, model.config.semantic_model_config
    semantic_samples = num_samples * config.semantic_sample_rate // config.sample_rate
    widest = 0
    for encoder, samples in ((model.acoustic_encoder, num_samples + 2 * model.acoustic_padding(num_samples)),
                             (model.semantic_model.feature_extractor, semantic_samples)):
        length = torch.tensor(samples)
        for conv in encoder.modules():
            if isinstance(conv, nn.Conv1d):
                length = conv_lengths(conv, length)
                widest = max(widest, conv.out_channels * int(length))
    frames = semantic_samples / math.prod(hubert.conv_stride)
    attention = hubert.num_attention_heads * frames**2
    itemsize = torch.finfo(model.dtype).bits // 8
    return int(itemsize * (ACTIVATION_COPIES * widest + ATTENTION_COPIES * attention))


def window_plan(total_frames: int, window_frames: int, context_frames: int) -> list[tuple[int, int, int, int]]:
    """(core_start, core_stop, input_start, input_stop) in frames, for each window."""
    if total_frames <= window_frames + 2 * context_frames:
        return [(0, total_frames, 0, total_frames)]
    plan = []
    for core_start in range(0, total_frames, window_frames):
        core_stop = min(core_start + window_frames, total_frames)
        plan.append((core_start, core_stop, max(0, core_start - context_frames), min(total_frames, core_stop + context_frames)))
    return plan


@torch.inference_mode()
def encode_long(
    model,
    source: SampleSource,
    *,
    bandwidth: float | None = None,
    length_rule: str | None = None,
    window_seconds: float = WINDOW_SECONDS,
    context_seconds: float = CONTEXT_SECONDS,
) -> torch.Tensor:
    """Codes `[n_q, frames]` of the whole recording in `source`, window by window, encoded
    as the clip alone: at the model's `valid_length` (zeros past the recording)."""
    config = model.config
    rule = length_rule or config.length_rule
    hop = config.hop_length
    n = model.valid_length(source.num_samples, rule)
    window_frames = max(1, round(window_seconds * config.frame_rate))
    context_frames = max(0, round(context_seconds * config.frame_rate))
    if n < model.min_input_length(rule):
        raise ValueError(f"input of {n} samples is too short: the shortest this model encodes is {model.min_input_length(rule)}")
    total = model.code_frames(n, rule)
    pad = model.acoustic_padding(n, rule)
    pieces = []
    for core_start, core_stop, start, stop in window_plan(total, window_frames, context_frames):
        last = stop == total
        # The semantic branch reads the recording, the acoustic branch the recording with
        # the rule's padding on both sides; both cut on the same frame grid.
        semantic_stop = n if last else stop * hop
        acoustic_stop = n + 2 * pad if last else stop * hop
        offset = max(0, start * hop - pad)  # index of raw[0] in the recording
        raw = source.read(offset, max(semantic_stop, acoustic_stop - pad))
        semantic = raw[start * hop - offset : semantic_stop - offset]
        acoustic = _padded_slice(raw, offset, start * hop - pad, acoustic_stop - pad, n)
        semantic_t = torch.from_numpy(np.ascontiguousarray(semantic))[None, None]
        acoustic_t = torch.from_numpy(np.ascontiguousarray(acoustic))[None, None]
        codes = model.encode_window(semantic_t, acoustic_t, bandwidth, rule)[0]
        pieces.append(codes[:, core_start - start : core_stop - start].cpu())
    return torch.cat(pieces, dim=1)


def _padded_slice(raw: np.ndarray, offset: int, start: int, stop: int, length: int) -> np.ndarray:
    """Recording samples [start, stop), with zeros where that range leaves [0, length)."""
    out = np.zeros(stop - start, dtype=np.float32)
    lo, hi = max(start, 0), min(stop, length)
    if hi > lo:
        out[lo - start : hi - start] = raw[lo - offset : hi - offset]
    return out


def file_source(path, sample_rate: int, block_seconds: float = 10.0) -> SampleSource:
    """Stream a soundfile-readable file as mono samples at `sample_rate` (soxr, the same result
    as resampling it whole)."""
    import soundfile as sf
    import soxr

    info = sf.info(str(path))
    rate, frames = int(info.samplerate), int(info.frames)
    # soxr's output length for the whole input: n * out / in, rounded half up.
    length = (2 * frames * sample_rate + rate) // (2 * rate) if rate != sample_rate else frames

    def chunks():
        stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="VHQ") if rate != sample_rate else None
        block = max(1, int(block_seconds * rate))
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                last = len(data) < block
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                yield stream.resample_chunk(mono, last=last) if stream is not None else mono
                if last:
                    return

    return SampleSource(chunks(), length)
