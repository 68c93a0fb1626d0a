"""How far a reconstruction is from its original: the distances codec papers report.

The spectral distances are those of the Descript Audio Codec (Kumar et al., "High-Fidelity
Audio Compression with Improved RVQGAN", 2023), as its evaluation script computes them
(`scripts/evaluate.py` with the defaults of `dac/nn/loss.py`, from `audiotools`):

- **multi-scale STFT distance**: for each window length w in (2048, 512), a Hann-windowed
  STFT with hop w/4 (centred, reflect-padded); the mean absolute difference of
  log10(max(|X|, 1e-5)^2), plus the mean absolute difference of |X|; summed over the two
  scales. The STFT term of the DDSP paper (Engel et al., 2020) that DAC cites.
- **mel distance**: the same, on mel spectrograms of 150 and 80 bands (for windows 2048
  and 512; Slaney mel scale and area normalisation, as librosa's defaults, from 0 Hz to
  Nyquist) of the STFT magnitudes.

DAC evaluates at 22.05 and 44.1 kHz; here both signals are compared at the codec's
24 kHz, so the values are comparable with other codecs only at that rate.

- **SI-SDR** (Le Roux et al., "SDR - half-baked or well done?", 2019): zero-mean signals,
  the reference scaled to best fit the estimate, 10 log10(|scaled reference|^2 / |rest|^2).
- **SNR**: 10 log10(|reference|^2 / |estimate - reference|^2) on the waveforms as they are.
- **PESQ** (wide band) and **STOI** at 16 kHz, through the `pesq` and `pystoi` packages
  when installed (`[eval]` extra): speech metrics, meaningless on music.

All take 1-D float arrays of the same length and rate, reference first.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

STFT_WINDOWS = (2048, 512)
MEL_BANDS = (150, 80)
CLAMP = 1e-5
SPEECH_RATE = 16000  # what PESQ (wide band) and STOI expect


def _magnitudes(audio: np.ndarray, window: int) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(audio, dtype=np.float64))
    hann = torch.hann_window(window, dtype=torch.float64)
    return torch.stft(x, window, hop_length=window // 4, window=hann, center=True, pad_mode="reflect",
                      return_complex=True).abs()  # [bins, frames]


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    log_a, log_b = a.clamp(min=CLAMP).pow(2).log10(), b.clamp(min=CLAMP).pow(2).log10()
    return float((log_a - log_b).abs().mean() + (a - b).abs().mean())


def stft_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    """DAC's multi-scale STFT distance (0 for identical signals; lower is closer)."""
    _check(reference, estimate)
    return sum(_distance(_magnitudes(estimate, w), _magnitudes(reference, w)) for w in STFT_WINDOWS)


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """DAC's mel distance (0 for identical signals; lower is closer)."""
    _check(reference, estimate)
    total = 0.0
    for window, bands in zip(STFT_WINDOWS, MEL_BANDS):
        filters = torch.as_tensor(mel_filters(sample_rate, window, bands))
        total += _distance(filters @ _magnitudes(estimate, window), filters @ _magnitudes(reference, window))
    return total


def log_mel(audio: np.ndarray, sample_rate: int, window: int = 1024, bands: int = 80) -> np.ndarray:
    """A log-mel spectrogram in dB, `[bands, frames]` (for pictures)."""
    mel = torch.as_tensor(mel_filters(sample_rate, window, bands)) @ _magnitudes(audio, window)
    return (20 * mel.clamp(min=CLAMP).log10()).numpy()


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, bands: int) -> np.ndarray:
    """`[bands, n_fft // 2 + 1]` triangular filters on the Slaney mel scale, each normalised
    to unit area (librosa's `filters.mel` defaults), from 0 Hz to Nyquist."""
    def to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        linear, log_start = hz / (200.0 / 3), 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(hz >= 1000.0, log_start, linear)

    def to_hz(mel):
        mel = np.asarray(mel, dtype=np.float64)
        return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), bands + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (inf for an estimate that is the reference times a gain)."""
    _check(reference, estimate)
    reference = np.asarray(reference, np.float64) - np.mean(reference)
    estimate = np.asarray(estimate, np.float64) - np.mean(estimate)
    power = np.dot(reference, reference)
    if power == 0:
        return float("nan")
    target = (np.dot(estimate, reference) / power) * reference
    return _ratio_db(np.dot(target, target), np.sum((estimate - target) ** 2))


def snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Waveform SNR in dB (inf for identical signals)."""
    _check(reference, estimate)
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    return _ratio_db(np.dot(reference, reference), np.sum((estimate - reference) ** 2))


def speech_metrics(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float]:
    """PESQ (wide band) and STOI at 16 kHz, for those of `pesq` and `pystoi` that are installed."""
    from ..audio import resample_audio

    _check(reference, estimate)
    ref = resample_audio(np.asarray(reference, np.float32), sample_rate, SPEECH_RATE)
    est = resample_audio(np.asarray(estimate, np.float32), sample_rate, SPEECH_RATE)
    out = {}
    try:
        from pystoi import stoi

        out["stoi"] = float(stoi(ref, est, SPEECH_RATE, extended=False))
    except ImportError:
        pass
    try:
        from pesq import pesq
    except ImportError:
        return out
    try:
        out["pesq"] = float(pesq(SPEECH_RATE, ref, est, "wb"))
    except Exception:  # pesq refuses clips without speech it can find ("no utterances detected")
        out["pesq"] = float("nan")
    return out


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * math.log10(signal / noise))


def _check(reference: np.ndarray, estimate: np.ndarray) -> None:
    if np.shape(reference) != np.shape(estimate) or np.ndim(reference) != 1:
        raise ValueError(f"compare 1-D signals of one length, got {np.shape(reference)} and {np.shape(estimate)}")
