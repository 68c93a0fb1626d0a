"""The Higgs Audio V2 tokenizer: audio → codes → audio.

    encode: waveform ─┬─ resample to 16 kHz → HuBERT → mean of hidden states → every k-th frame → SemanticEncoder ─┐
                      └─ AcousticEncoder ──────────────────────────────────────────────────────────────────────┴─ concat → fc → RVQ → codes
    decode: codes → RVQ sum → fc2 → AcousticDecoder → waveform

The API and every numeric detail follow transformers' `HiggsAudioV2TokenizerModel`
(5.23), which the fixtures pin down; where Boson AI's original differs (the
length rule) both behaviours are offered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .acoustic import AcousticDecoder, AcousticEncoder
from .config import LENGTH_RULES, HiggsAudioV2TokenizerConfig
from .hubert import HubertModel
from .layers import conv_stack_output_length
from .quantizer import ResidualVectorQuantizer
from .resample import resample
from .semantic import SemanticDecoder, SemanticEncoder

# HuBERT sees 160 zeros (10 ms at 16 kHz) on each side, centring its 20 ms frames.
SEMANTIC_PADDING = 160


class ModelOutput:
    """Dataclass outputs that also index like tuples (`out[0]`) and dicts (`out["audio_codes"]`)."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


@dataclass
class HiggsAudioV2TokenizerEncoderOutput(ModelOutput):
    audio_codes: torch.Tensor | None = None


@dataclass
class HiggsAudioV2TokenizerDecoderOutput(ModelOutput):
    audio_values: torch.Tensor | None = None


@dataclass
class HiggsAudioV2TokenizerOutput(ModelOutput):
    audio_codes: torch.Tensor | None = None
    audio_values: torch.Tensor | None = None


class HiggsAudioV2TokenizerModel(nn.Module):
    def __init__(self, config: HiggsAudioV2TokenizerConfig):
        super().__init__()
        self.config = config
        self.acoustic_encoder = AcousticEncoder(config.acoustic_model_config)
        self.acoustic_decoder = AcousticDecoder(config.acoustic_model_config)
        self.semantic_model = HubertModel(config.semantic_model_config)
        self.encoder_semantic = SemanticEncoder(config)
        self.decoder_semantic = SemanticDecoder(config)
        self.fc = nn.Linear(config.hidden_size, config.hidden_size)
        self.fc1 = nn.Linear(config.hidden_size, config.semantic_hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, config.acoustic_model_config.hidden_size)
        self.quantizer = ResidualVectorQuantizer(
            config.num_quantizers, config.hidden_size, config.codebook_size, config.codebook_dim
        )
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device_map=None,
        device=None,
        dtype=None,
        length_rule: str | None = None,
        torch_dtype=None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **config_overrides,
    ) -> "HiggsAudioV2TokenizerModel":
        """Load a checkpoint: a local directory or a Hub id, in transformers or original format.

        `device_map`/`device`: where the weights go ("cpu", "cuda", "cuda:1", a
        torch.device, or "auto" for the first GPU when there is one). `dtype`
        (or its older name `torch_dtype`): a torch dtype or its name, or "auto"
        for the checkpoint's; the default is float32 (transformers defaults to
        "auto", which is float32 for every published checkpoint). `length_rule`:
        "transformers" (default) or "original" (see `encode`). Other keyword
        arguments replace config fields.
        """
        from .checkpoint import load_pretrained

        return load_pretrained(
            cls,
            name_or_path,
            device=_resolve_device(device_map if device is None else device),
            dtype=dtype if dtype is not None else torch_dtype,
            config_overrides={**config_overrides, "length_rule": length_rule},
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write a transformers-format checkpoint (config, safetensors, preprocessor config)."""
        from .checkpoint import save_pretrained

        save_pretrained(self, directory)

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    # --------------------------------------------------------------- encoding
    def semantic_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Averaged HuBERT hidden states at the code frame rate, `[B, frames, semantic_hidden]`."""
        config = self.config
        waveform = resample(input_values[:, 0, :], config.sample_rate, config.semantic_sample_rate)
        waveform = F.pad(waveform, (SEMANTIC_PADDING, SEMANTIC_PADDING))
        with torch.no_grad():
            hidden_states = self.semantic_model(waveform)
        features = torch.stack(hidden_states, dim=1).mean(dim=1)
        return features[:, :: config.semantic_downsample_factor, :]

    def _acoustic_padding(self, num_samples: int, semantic_frames: int, length_rule: str) -> int:
        """Zeros added on each side of the waveform before the acoustic encoder.

        Both references pad only when the acoustic branch would not give the
        semantic branch's frame count: transformers by hop/2 (480 at 24 kHz),
        the original by 160 × semantic_downsample_factor (320), trimming later.
        """
        if conv_stack_output_length(self.acoustic_encoder, num_samples) == semantic_frames:
            return 0
        if length_rule == "transformers":
            return self.config.hop_length // 2
        return SEMANTIC_PADDING * self.config.semantic_downsample_factor

    def embed(self, input_values: torch.Tensor, length_rule: str | None = None) -> torch.Tensor:
        """Pre-quantization embeddings `[B, frames, hidden]` (after `fc`)."""
        length_rule = self._length_rule(length_rule)
        e_semantic = self.encoder_semantic(self.semantic_features(input_values).transpose(1, 2))
        frames = e_semantic.shape[2]
        pad = self._acoustic_padding(input_values.shape[-1], frames, length_rule)
        e_acoustic = self.acoustic_encoder(F.pad(input_values, (pad, pad)) if pad else input_values)
        if e_acoustic.shape[2] != frames:
            if length_rule == "transformers":
                # The reference fails here (torch.cat of unequal lengths).
                raise ValueError(
                    f"an input of {input_values.shape[-1]} samples gives {frames} semantic and "
                    f"{e_acoustic.shape[2]} acoustic frames, which the transformers length rule cannot reconcile; "
                    "pad the audio to a multiple of the hop length (the feature extractor does) "
                    "or use length_rule='original'"
                )
            frames = min(frames, e_acoustic.shape[2])
            e_acoustic, e_semantic = e_acoustic[..., :frames], e_semantic[..., :frames]
        embeddings = torch.cat([e_acoustic, e_semantic], dim=1)
        return self.fc(embeddings.transpose(1, 2))

    def encode(
        self,
        input_values: torch.Tensor,
        bandwidth: float | None = None,
        return_dict: bool | None = None,
        length_rule: str | None = None,
    ):
        """Waveform `[batch, 1, samples]` at `config.sample_rate` → codes `[batch, n_q, frames]` (int64).

        `bandwidth` (kbps) must be one of `config.target_bandwidths`; default the highest.
        `length_rule` overrides `config.length_rule` for this call.
        """
        num_quantizers = self.config.num_quantizers_for_bandwidth(bandwidth)
        input_values = self._check_waveform(input_values, length_rule)
        codes = self.quantizer.encode(self.embed(input_values, length_rule), num_quantizers)
        return self._wrap(HiggsAudioV2TokenizerEncoderOutput(codes), return_dict)

    # --------------------------------------------------------------- decoding
    def decode(self, audio_codes: torch.Tensor, return_dict: bool | None = None):
        """Codes `[batch, n_q, frames]` (1 ≤ n_q ≤ num_quantizers) → waveform `[batch, 1, frames * hop]`."""
        audio_codes = self._check_codes(audio_codes)
        quantized = self.quantizer.decode(audio_codes)
        audio_values = self.acoustic_decoder(self.fc2(quantized).transpose(1, 2))
        return self._wrap(HiggsAudioV2TokenizerDecoderOutput(audio_values), return_dict)

    def forward(
        self,
        input_values: torch.Tensor,
        audio_codes: torch.Tensor | None = None,
        bandwidth: float | None = None,
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        length_rule: str | None = None,
    ):
        """Encode (unless `audio_codes` is given) and decode; audio is cut to the input length.

        `padding_mask` (`[batch, samples]`, from the feature extractor) is accepted and
        checked, and, like the reference, not used: a zero-padded batch is encoded as
        if the padding were audio.
        """
        if padding_mask is not None and tuple(padding_mask.shape) != (input_values.shape[0], input_values.shape[-1]):
            raise ValueError(
                f"padding_mask has shape {tuple(padding_mask.shape)}, expected "
                f"{(input_values.shape[0], input_values.shape[-1])} (batch, samples)"
            )
        length = input_values.shape[-1]
        if audio_codes is None:
            audio_codes = self.encode(input_values, bandwidth, return_dict=False, length_rule=length_rule)
        audio_values = self.decode(audio_codes, return_dict=False)[..., :length]
        return self._wrap(HiggsAudioV2TokenizerOutput(audio_codes, audio_values), return_dict)

    # ----------------------------------------------------------- validation
    def min_input_length(self, length_rule: str | None = None) -> int:
        """The shortest waveform (in samples at `config.sample_rate`) that `encode` accepts."""
        length_rule = self._length_rule(length_rule)
        cache = self.__dict__.setdefault("_min_input_length", {})
        if length_rule not in cache:
            n = 1
            while self.code_frames(n, length_rule) < 1:
                n += 1
            cache[length_rule] = n
        return cache[length_rule]

    def code_frames(self, num_samples: int, length_rule: str | None = None) -> int:
        """Code frames `encode` produces for `num_samples`; 0 where the input is too short."""
        length_rule = self._length_rule(length_rule)
        config = self.config
        num_16k = -(-num_samples * config.semantic_sample_rate // config.sample_rate)
        hubert_frames = conv_stack_output_length(self.semantic_model.feature_extractor, num_16k + 2 * SEMANTIC_PADDING)
        if hubert_frames < 1:
            return 0
        semantic = -(-hubert_frames // config.semantic_downsample_factor)
        semantic = conv_stack_output_length(self.encoder_semantic, semantic)
        pad = self._acoustic_padding(num_samples, semantic, length_rule)
        acoustic = conv_stack_output_length(self.acoustic_encoder, num_samples + 2 * pad)
        if length_rule == "transformers" and acoustic != semantic:
            return 0
        return max(0, min(acoustic, semantic))

    def _length_rule(self, length_rule: str | None) -> str:
        length_rule = self.config.length_rule if length_rule is None else length_rule
        if length_rule not in LENGTH_RULES:
            raise ValueError(f"length_rule must be one of {LENGTH_RULES}, got {length_rule!r}")
        return length_rule

    def _check_waveform(self, input_values, length_rule: str | None = None) -> torch.Tensor:
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(f"input_values must be a torch.Tensor [batch, 1, samples], got {type(input_values).__name__}")
        if input_values.dim() != 3:
            raise ValueError(
                f"input_values must have shape [batch, channels=1, samples], got {tuple(input_values.shape)}"
                + (" (add the batch and channel axes: x[None, None])" if input_values.dim() == 1 else "")
            )
        if input_values.shape[1] != 1:
            raise ValueError(f"Audio must be mono, but got {input_values.shape[1]} channels (average them first)")
        if not input_values.is_floating_point():
            raise TypeError(
                f"input_values must be floating point in [-1, 1], got {input_values.dtype}; "
                "scale integer PCM first (e.g. int16: x.float() / 32768)"
            )
        num_samples = input_values.shape[-1]
        if input_values.shape[0] == 0 or num_samples == 0:
            raise ValueError(f"input_values is empty: shape {tuple(input_values.shape)}")
        if not torch.isfinite(input_values).all():
            raise ValueError("input_values contains NaN or infinite samples")
        shortest = self.min_input_length(length_rule)
        if num_samples < shortest:
            raise ValueError(
                f"input of {num_samples} samples is too short: the shortest this model encodes is "
                f"{shortest} samples ({shortest / self.config.sample_rate * 1000:.1f} ms)"
            )
        return input_values.to(device=self.device, dtype=self.dtype)

    def _check_codes(self, audio_codes) -> torch.Tensor:
        if not isinstance(audio_codes, torch.Tensor):
            raise TypeError(f"audio_codes must be a torch.Tensor [batch, n_q, frames], got {type(audio_codes).__name__}")
        if audio_codes.dim() != 3:
            raise ValueError(f"audio_codes must have shape [batch, num_quantizers, frames], got {tuple(audio_codes.shape)}")
        if audio_codes.is_floating_point() or audio_codes.is_complex() or audio_codes.dtype == torch.bool:
            raise TypeError(f"audio_codes must be an integer tensor, got {audio_codes.dtype}")
        n_q, frames = audio_codes.shape[1], audio_codes.shape[2]
        if not 1 <= n_q <= self.config.num_quantizers:
            raise ValueError(f"audio_codes has {n_q} quantizers; this model decodes 1 to {self.config.num_quantizers}")
        if audio_codes.shape[0] == 0 or frames == 0:
            raise ValueError(f"audio_codes is empty: shape {tuple(audio_codes.shape)}")
        low, high = int(audio_codes.min()), int(audio_codes.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(
                f"audio_codes must lie in [0, {self.config.codebook_size}); found values from {low} to {high}"
            )
        return audio_codes.to(device=self.device, dtype=torch.long)

    def _wrap(self, output: ModelOutput, return_dict: bool | None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if return_dict:
            return output
        values = output.to_tuple()
        return values[0] if len(values) == 1 else values


def _resolve_device(device) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, dict):
        raise ValueError("device_map as a dict is not supported: the whole model goes on one device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)
