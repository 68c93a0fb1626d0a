"""`HiggsAudioTokenizer`: the high-level API, from files and arrays to codes and back.

    tokenizer = HiggsAudioTokenizer.from_pretrained("bosonai/higgs-audio-v2-tokenizer")
    codes = tokenizer.encode("speech.flac")                 # [8, frames] int64
    audio = tokenizer.decode(codes)                         # [frames * hop] float32, 24 kHz
    tokenizer.encode_file("speech.flac", "speech.hac")      # codes + metadata on disk
    tokenizer.decode_to_file("speech.hac", "speech.wav")    # back to the original length
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .audio import load_audio, normalize_loudness, resample_audio, write_audio
from .codes_file import SUFFIX, EncodedAudio, ModelIdentity, load_codes
from .model import HiggsAudioV2TokenizerModel

DEFAULT_MODEL = "bosonai/higgs-audio-v2-tokenizer"
MODEL_ENV = "HIGGS_TOKENIZER_MODEL"


def default_model() -> str:
    """The checkpoint used when none is named: $HIGGS_TOKENIZER_MODEL, else the official one."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


class HiggsAudioTokenizer:
    def __init__(self, model: HiggsAudioV2TokenizerModel, name: str = "unnamed"):
        self.model = model.eval()
        self.name = name
        self._identity: ModelIdentity | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        *,
        device=None,
        dtype=None,
        length_rule: str | None = None,
        **kwargs,
    ) -> "HiggsAudioTokenizer":
        """Load a checkpoint (Hub id or directory; default `default_model()`) onto `device` in `dtype`."""
        name = os.fspath(model) if model is not None else default_model()
        loaded = HiggsAudioV2TokenizerModel.from_pretrained(name, device=device, dtype=dtype, length_rule=length_rule, **kwargs)
        return cls(loaded, name=name)

    # ------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> int:
        return self.config.frame_rate

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self._identity = ModelIdentity.of(self.model, self.name)
        return self._identity

    # ------------------------------------------------------------ audio in
    def load(self, item, sample_rate: int | None = None, loudness: float | None = None) -> np.ndarray:
        """One input as mono float32 at the model's rate: a path, an array/tensor (with `sample_rate`),
        or an `(array, sample_rate)` pair. `loudness`: target LUFS, or None to leave the level alone."""
        if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], (np.ndarray, torch.Tensor)):
            item, sample_rate = item
        if isinstance(item, (str, os.PathLike)):
            samples, rate = load_audio(item)
        else:
            if sample_rate is None:
                raise ValueError(
                    "an array or tensor needs its sample rate: encode(x, sample_rate=...) or encode((x, rate))"
                )
            samples, rate = _as_mono_float(item), int(sample_rate)
            if samples.size == 0:
                raise ValueError("empty audio")
            if not np.isfinite(samples).all():
                raise ValueError("audio contains NaN or infinite samples")
        if loudness is not None:
            samples = normalize_loudness(samples, rate, loudness)
        return resample_audio(samples, rate, self.sample_rate)

    # ------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, x, sample_rate: int | None = None, bandwidth: float | None = None, loudness: float | None = None):
        """Codes `[num_quantizers, frames]` (int64, CPU) for one input, or a list of them for a list.

        Each item's codes cover exactly that item: with the default length rule the
        audio is right-padded to a whole frame, as the feature extractor does.
        """
        return self._encode(x, sample_rate, bandwidth, loudness, lambda codes, samples, item: codes)

    @torch.inference_mode()
    def encode_to_result(self, x, sample_rate=None, bandwidth=None, loudness=None, source: str | None = None):
        """Like `encode`, but each result is an `EncodedAudio` (codes with the metadata a codes file holds)."""

        def wrap(codes, samples, item):
            name = source if source is not None else (os.fspath(item) if isinstance(item, (str, os.PathLike)) else "")
            return self.encoded(codes, len(samples), name)

        return self._encode(x, sample_rate, bandwidth, loudness, wrap)

    def encoded(self, codes: torch.Tensor, num_samples: int, source: str = "") -> EncodedAudio:
        """Codes of a clip of `num_samples` samples (at the model's rate), with this model's metadata."""
        return EncodedAudio(
            codes=codes,
            num_samples=num_samples,
            sample_rate=self.sample_rate,
            hop_length=self.hop_length,
            frame_rate=self.frame_rate,
            codebook_size=self.config.codebook_size,
            model=self.identity,
            source=source,
            length_rule=self.config.length_rule,
        )

    def _encode(self, x, sample_rate, bandwidth, loudness, wrap):
        single = not isinstance(x, list)
        items = [x] if single else x
        if not items:
            return []
        clips = [self.load(item, sample_rate, loudness) for item in items]
        codes = self.encode_clips(clips, bandwidth)
        results = [wrap(c, clip, item) for c, clip, item in zip(codes, clips, items)]
        return results[0] if single else results

    def encode_clips(self, clips: Sequence[np.ndarray], bandwidth: float | None = None) -> list[torch.Tensor]:
        """Codes for mono clips already at the model's rate. Clips of equal length share a batch."""
        pad_to_frame = self.config.length_rule == "transformers"
        prepared = [_pad_to_multiple(c, self.hop_length) if pad_to_frame else c for c in clips]
        results: list[torch.Tensor | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for i, clip in enumerate(prepared):
            by_length.setdefault(len(clip), []).append(i)
        for indices in by_length.values():
            batch = torch.from_numpy(np.stack([prepared[i] for i in indices]))[:, None, :]
            codes = self.model.encode(batch, bandwidth=bandwidth).audio_codes.cpu()
            for row, i in enumerate(indices):
                results[i] = codes[row]
        return results

    # ------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, codes):
        """Waveform(s) at the model's rate, float32 on the CPU.

        `codes`: `[n_q, frames]` (or a list of them) → `[frames * hop]` samples;
        an `EncodedAudio` or codes-file path → the recording at its original length.
        """
        single = not isinstance(codes, list)
        items = [codes] if single else codes
        out = [self._decode_one(item) for item in items]
        return out[0] if single else out

    def _decode_one(self, item) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            item = load_codes(item)
        if isinstance(item, EncodedAudio):
            item.check_model(self.identity)
            audio = self._decode_one(item.codes)
            # Restore the recording's length (the last frame is cut, or, rarely, padded).
            audio = audio[: item.num_samples]
            if len(audio) < item.num_samples:
                audio = torch.nn.functional.pad(audio, (0, item.num_samples - len(audio)))
            return audio
        codes = torch.as_tensor(item)
        if codes.dim() != 2:
            raise ValueError(f"codes must be [num_quantizers, frames], got shape {tuple(codes.shape)}")
        return self.model.decode(codes[None]).audio_values[0, 0].float().cpu()

    # ------------------------------------------------------------ files
    def encode_file(
        self,
        path: str | os.PathLike,
        out_path: str | os.PathLike | None = None,
        bandwidth: float | None = None,
        loudness: float | None = None,
    ) -> EncodedAudio:
        """Encode an audio file; write its codes file to `out_path` when given."""
        result = self.encode_to_result(os.fspath(path), bandwidth=bandwidth, loudness=loudness)
        if out_path is not None:
            result.save(out_path)
        return result

    def decode_to_file(self, codes, out_path: str | os.PathLike) -> Path:
        """Decode codes (an `EncodedAudio`, a codes-file path, or a `[n_q, frames]` tensor) to a WAV or FLAC file."""
        return write_audio(out_path, self.decode(codes).numpy(), self.sample_rate)


def _as_mono_float(x) -> np.ndarray:
    """An array or tensor `[samples]` or `[channels, samples]` → mono float32; integer PCM scaled to [-1, 1]."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        scale = float(max(abs(info.min), info.max + 1))
        offset = (info.max + 1) / 2 if array.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit WAV) is centred
        array = (array.astype(np.float64) - offset) / (scale / 2 if array.dtype.kind == "u" else scale)
    elif array.dtype.kind != "f":
        raise TypeError(f"audio must be numbers, got dtype {array.dtype}")
    if array.ndim == 2:
        if array.shape[0] > 16:
            raise ValueError(
                f"audio of shape {array.shape}: expected [channels, samples]; transpose a [samples, channels] array"
            )
        array = array.mean(axis=0)
    elif array.ndim != 1:
        raise ValueError(f"audio must be [samples] or [channels, samples], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _pad_to_multiple(samples: np.ndarray, multiple: int) -> np.ndarray:
    extra = -len(samples) % multiple
    return np.pad(samples, (0, extra)) if extra else samples


def codes_path_for(audio_path: str | os.PathLike) -> Path:
    return Path(audio_path).with_suffix(SUFFIX)
