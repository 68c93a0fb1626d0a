"""Band-limited resampling equal to `torchaudio.functional.resample`'s defaults.

The semantic branch resamples the model's audio (24 kHz) to HuBERT's 16 kHz.
The reference does it with torchaudio's windowed-sinc resampler (Hann window,
`lowpass_filter_width=6`, `rolloff=0.99`), and HuBERT features depend on every
detail of that filter, so it is reproduced here rather than replaced by a
"better" resampler. Any pair of integer rates is supported.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@lru_cache(maxsize=16)
def _polyphase_filters(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """One windowed-sinc filter per output phase: `[new, 1, 2 * width + orig]`, and `width`.

    `orig` and `new` are the rates divided by their gcd. Output phase j of every
    block of `orig` input samples sits at input time j * orig / new.
    """
    cutoff = min(orig, new) * ROLLOFF  # in units of the reduced rates
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=dtype) / orig
    phase = torch.arange(0, -new, -1, dtype=dtype)[:, None] / new
    t = (phase + taps) * cutoff
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    hann = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype), t.sin() / t)
    filters = sinc * (hann * (cutoff / orig))
    return filters[:, None, :], width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample the last axis of `waveform` from `orig_freq` to `new_freq` Hz.

    Output length is `ceil(new_freq * length / orig_freq)`, as in torchaudio.
    """
    for name, rate in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if int(rate) != rate or rate <= 0:
            raise ValueError(f"{name} must be a positive integer, got {rate!r}")
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    filters, width = _polyphase_filters(orig, new, waveform.dtype)
    filters = filters.to(waveform.device)

    shape = waveform.shape
    flat = waveform.reshape(-1, 1, shape[-1])
    length = shape[-1]
    padded = F.pad(flat, (width, width + orig))
    # [N, new, blocks] -> interleave the phases -> [N, blocks * new]
    out = F.conv1d(padded, filters, stride=orig).transpose(1, 2).reshape(flat.shape[0], -1)
    out_length = -(-new * length // orig)  # ceil without float rounding
    return out[:, :out_length].reshape(*shape[:-1], -1)
