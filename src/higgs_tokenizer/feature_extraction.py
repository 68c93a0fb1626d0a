"""The feature extractor: raw mono audio → padded `input_values` and `padding_mask`.

Behaves like transformers' `DacFeatureExtractor` as configured for this model:
a list is a batch, every item is right-padded with zeros to the longest and to
a multiple of the hop length, and the mask marks the real samples.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic
from .checkpoint_files import PREPROCESSOR_NAME, read_json, resolve_checkpoint
from .config import HiggsAudioV2TokenizerConfig


class BatchFeature(dict):
    """A dict whose entries are also attributes (`inputs.input_values`), movable with `.to()`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs) -> "BatchFeature":
        """Move tensors like `Tensor.to`; a dtype applies to floating-point tensors only."""
        out = BatchFeature()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    value = value.to(*args, **kwargs)
                else:
                    device = next((a for a in args if not isinstance(a, torch.dtype)), kwargs.get("device"))
                    value = value.to(device) if device is not None else value
            out[key] = value
        return out


class HiggsAudioV2TokenizerFeatureExtractor:
    model_input_names = ["input_values", "padding_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 24000,
        padding_value: float = 0.0,
        hop_length: int = 960,
        padding_side: str = "right",
        return_attention_mask: bool = True,
        **extra,
    ):
        if feature_size != 1:
            raise ValueError("only mono audio (feature_size=1) is supported")
        if padding_side != "right":
            raise ValueError("only right padding is supported")
        self.feature_size = feature_size
        self.sampling_rate = int(sampling_rate)
        self.padding_value = float(padding_value)
        self.hop_length = int(hop_length)
        if self.hop_length < 1 or self.sampling_rate < 1:
            raise ValueError(f"hop_length and sampling_rate must be positive, got {hop_length} and {sampling_rate}")
        self.padding_side = padding_side
        self.return_attention_mask = return_attention_mask
        self.extra = extra

    @classmethod
    def from_model_config(cls, config: HiggsAudioV2TokenizerConfig) -> "HiggsAudioV2TokenizerFeatureExtractor":
        return cls(sampling_rate=config.sample_rate, hop_length=config.hop_length)

    @classmethod
    def from_pretrained(cls, name_or_path, **hub):
        """From `preprocessor_config.json`, or derived from the model config where there is none
        (original-format checkpoints have none). Reads no weights. `hub`: the Hub options
        (`checkpoint_files.HUB_OPTIONS`)."""
        directory, fmt = resolve_checkpoint(name_or_path, weights=False, **hub)
        path = Path(directory) / PREPROCESSOR_NAME
        if path.is_file():
            data = read_json(path)
            data.pop("feature_extractor_type", None)
            return cls(**data)
        return cls.from_model_config(HiggsAudioV2TokenizerConfig.from_checkpoint_directory(directory, fmt))

    def to_dict(self) -> dict:
        return {
            **self.extra,
            "feature_extractor_type": "DacFeatureExtractor",
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "padding_side": self.padding_side,
            "padding_value": self.padding_value,
            "return_attention_mask": self.return_attention_mask,
            "sampling_rate": self.sampling_rate,
        }

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `preprocessor_config.json` into `directory`, atomically."""
        os.makedirs(directory, exist_ok=True)
        text = self.to_json_string()
        write_atomic(Path(directory) / PREPROCESSOR_NAME, lambda path: Path(path).write_text(text))

    def __call__(
        self,
        raw_audio,
        padding: bool | str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """`raw_audio`: one clip (1-D array, tensor or list of floats) or a list of clips (a batch).

        Returns `input_values` `[batch, 1, samples]` and, when padding, `padding_mask`
        `[batch, samples]` (1 = audio, 0 = padding). `padding`: True/"longest" (default),
        "max_length" (to `max_length`) or False; `truncation` cuts to `max_length`.
        """
        if sampling_rate is None:
            warnings.warn(
                "pass sampling_rate to the feature extractor: audio at another rate would be silently mis-encoded",
                stacklevel=2,
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"this feature extractor expects audio at {self.sampling_rate} Hz, got {sampling_rate} Hz: "
                "resample it first"
            )
        # As in the reference: explicit padding with truncation is a conflict, but the
        # default padding (None → pad to the longest) combines with truncation.
        if padding and truncation:
            raise ValueError("Both padding and truncation were set. Make sure you only set one.")
        if padding is None:
            padding = True
        if truncation and max_length is None:
            raise ValueError("truncation needs max_length")
        clips = [self._as_mono(clip, i) for i, clip in enumerate(_as_batch(raw_audio))]
        if truncation:
            # The reference rounds max_length up to a whole hop before cutting.
            limit = -(-max_length // self.hop_length) * self.hop_length
            clips = [clip[:limit] for clip in clips]

        if padding in (True, "longest"):
            target = max(len(c) for c in clips)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            target = max_length
        elif padding in (False, "do_not_pad"):
            target = None
        else:
            raise ValueError(f"padding must be True, 'longest', 'max_length' or False, got {padding!r}")

        if target is None:
            values = [clip[None] for clip in clips]
            result = BatchFeature(input_values=values)
        else:
            target = -(-target // self.hop_length) * self.hop_length
            if any(len(c) > target for c in clips):
                raise ValueError(f"a clip is longer than max_length={max_length}; pass truncation=True to cut it")
            values = np.full((len(clips), 1, target), self.padding_value, dtype=np.float32)
            mask = np.zeros((len(clips), target), dtype=np.int32)
            for i, clip in enumerate(clips):
                values[i, 0, : len(clip)] = clip
                mask[i, : len(clip)] = 1
            # Like the reference: a list of [1, samples] arrays until tensors are asked for.
            result = BatchFeature(input_values=list(values), padding_mask=mask)
        return _convert(result, return_tensors)

    @staticmethod
    def _as_mono(clip, index: int) -> np.ndarray:
        if isinstance(clip, torch.Tensor):
            clip = clip.detach().cpu().numpy()
        array = np.asarray(clip)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"clip {index}: expected numbers, got dtype {array.dtype}")
        if array.dtype.kind in "iu":
            raise TypeError(
                f"clip {index}: integer samples ({array.dtype}); scale PCM to floats in [-1, 1] first "
                "(e.g. int16: x / 32768)"
            )
        if array.ndim != 1:
            raise ValueError(
                f"clip {index}: expected mono audio of shape (samples,), got {array.shape}; average the channels first"
            )
        if array.size == 0:
            raise ValueError(f"clip {index} is empty")
        return array.astype(np.float32, copy=False)


def _as_batch(raw_audio) -> list:
    if isinstance(raw_audio, (list, tuple)):
        if not raw_audio:
            raise ValueError("raw_audio is an empty list")
        # A list of numbers is one clip; a list of arrays or lists is a batch.
        if isinstance(raw_audio[0], (np.ndarray, torch.Tensor, list, tuple)):
            return list(raw_audio)
        return [raw_audio]
    return [raw_audio]


def _convert(features: BatchFeature, return_tensors: str | None) -> BatchFeature:
    if return_tensors is None:
        return features
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    out = BatchFeature()
    for key, value in features.items():
        if isinstance(value, list):
            if len({v.shape for v in value}) != 1:
                raise ValueError("clips of different lengths cannot form one tensor without padding")
            value = np.stack(value)
        out[key] = torch.from_numpy(np.ascontiguousarray(value)) if return_tensors == "pt" else value
    return out
