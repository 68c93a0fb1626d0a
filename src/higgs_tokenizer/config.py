"""Configuration of the Higgs Audio V2 tokenizer.

Field names, defaults and derived properties follow the transformers
`HiggsAudioV2TokenizerConfig` (and its `hubert` / `dac` sub-configs), so a
`config.json` written by either implementation reads the same here. Keys this
package does not use are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .checkpoint_files import CONFIG_NAME, MODEL_TYPE, CheckpointError, read_json, resolve_checkpoint, split_hub_options

LENGTH_RULES = ("transformers", "original")

# The numeric modes a model can run in, by name (`runtime.PRECISIONS` gives each its dtype and
# TF32 setting); here, without torch, for the command line's parser.
PRECISION_NAMES = ("float32", "tf32", "bfloat16", "float16")

# The original constructor hard-codes these widths; configs written by
# `save_original` for other sizes carry them in this extension block.
ORIGINAL_ENCODER_WIDTH = 64
ORIGINAL_DECODER_WIDTH = 1024
ORIGINAL_EXTENSION_KEY = "higgs_tokenizer_sizes"
_ORIGINAL_SUPPORTED = {
    "merge_mode": "concat",
    "downsample_mode": "step_down",
    "vq_scale": 1,
    "causal": False,
    "last_layer_semantic": True,
    "semantic_mode": "classic",
}
_ORIGINAL_TEACHERS = ("hubert_base", "hubert_base_general")




def _split_known(cls, data: dict) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


def _as_tuple(value, name: str, kind=int) -> tuple:
    if isinstance(value, (int, float)) or not hasattr(value, "__iter__"):
        raise ValueError(f"config field {name!r} must be a list, got {value!r}")
    return tuple(kind(v) for v in value)


class _DictConfig:
    """Shared dict round-trip for the config dataclasses."""

    model_type: str = ""

    @classmethod
    def from_dict(cls, data: dict | None):
        if isinstance(data, cls):
            return data
        data = dict(data or {})
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"expected a {cls.model_type!r} config, got model_type={model_type!r}")
        known, extra = _split_known(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))


@dataclass
class HubertConfig(_DictConfig):
    """The semantic teacher: HuBERT-base (group-norm feature encoder, post-norm layers)."""

    model_type = "hubert"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    conv_dim: tuple = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.conv_dim = _as_tuple(self.conv_dim, "conv_dim")
        self.conv_stride = _as_tuple(self.conv_stride, "conv_stride")
        self.conv_kernel = _as_tuple(self.conv_kernel, "conv_kernel")
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            raise ValueError("semantic_model_config: conv_dim, conv_stride and conv_kernel must have the same length")
        # Only the HuBERT-base topology is implemented (the one every Higgs checkpoint uses).
        unsupported = {
            "feat_extract_norm": (self.feat_extract_norm, "group"),
            "feat_extract_activation": (self.feat_extract_activation, "gelu"),
            "hidden_act": (self.hidden_act, "gelu"),
            "do_stable_layer_norm": (self.do_stable_layer_norm, False),
            "conv_pos_batch_norm": (self.conv_pos_batch_norm, False),
            "feat_proj_layer_norm": (self.feat_proj_layer_norm, True),
        }
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"semantic_model_config.{name}={value!r} is not supported (only {supported!r}, as in HuBERT-base)"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("semantic_model_config: hidden_size must be divisible by num_attention_heads")


@dataclass
class AcousticConfig(_DictConfig):
    """The DAC-style acoustic encoder and decoder (transformers' `dac` sub-config).

    Defaults are the ones transformers' Higgs config substitutes for DAC's own.
    """

    model_type = "dac"

    encoder_hidden_size: int = 64
    downsampling_ratios: tuple = (8, 5, 4, 2)
    decoder_hidden_size: int = 1024
    upsampling_ratios: tuple = (8, 5, 4, 2)
    hidden_size: int = 256
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.downsampling_ratios = _as_tuple(self.downsampling_ratios, "downsampling_ratios")
        self.upsampling_ratios = _as_tuple(self.upsampling_ratios, "upsampling_ratios")
        if any(r < 1 for r in self.downsampling_ratios + self.upsampling_ratios):
            raise ValueError("acoustic_model_config: ratios must be positive integers")
        if math.prod(self.downsampling_ratios) != math.prod(self.upsampling_ratios):
            raise ValueError("acoustic_model_config: downsampling and upsampling ratios must have the same product")
        if self.decoder_hidden_size % 2 ** len(self.upsampling_ratios):
            raise ValueError("acoustic_model_config: decoder_hidden_size must halve once per upsampling ratio")

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["hop_length"] = math.prod(self.downsampling_ratios)
        return out


@dataclass
class HiggsAudioV2TokenizerConfig(_DictConfig):
    """The tokenizer's configuration (transformers' `config.json` layout)."""

    model_type = MODEL_TYPE

    target_bandwidths: tuple = (0.5, 1, 1.5, 2, 4)
    sample_rate: int = 24000
    kernel_size: int = 3
    channel_ratios: tuple = (1, 1)
    strides: tuple = (1, 1)
    block_dilations: tuple = (1, 1)
    unit_kernel_size: int = 3
    codebook_size: int = 1024
    codebook_dim: int = 64
    semantic_sample_rate: int = 16000
    downsample_factor: int = 320
    acoustic_model_config: AcousticConfig = field(default_factory=AcousticConfig)
    semantic_model_config: HubertConfig = field(default_factory=HubertConfig)
    # How the acoustic branch is brought to the semantic branch's frame count:
    # "transformers" (default, transformers 5.23) or "original" (Boson AI's code).
    length_rule: str = "transformers"
    return_dict: bool = True
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.acoustic_model_config = AcousticConfig.from_dict(self.acoustic_model_config)
        self.semantic_model_config = HubertConfig.from_dict(self.semantic_model_config)
        self.target_bandwidths = _as_tuple(self.target_bandwidths, "target_bandwidths", kind=_number)
        self.channel_ratios = _as_tuple(self.channel_ratios, "channel_ratios", kind=_number)
        self.strides = _as_tuple(self.strides, "strides")
        self.block_dilations = _as_tuple(self.block_dilations, "block_dilations")
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if not self.target_bandwidths:
            raise ValueError("target_bandwidths must not be empty")
        if len(self.strides) != len(self.channel_ratios):
            raise ValueError("strides and channel_ratios must have the same length")
        if self.length_rule not in LENGTH_RULES:
            raise ValueError(f"length_rule must be one of {LENGTH_RULES}, got {self.length_rule!r}")
        for name in ("sample_rate", "semantic_sample_rate", "codebook_size", "codebook_dim", "downsample_factor"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_quantizers < 1:
            raise ValueError(f"target_bandwidths {list(self.target_bandwidths)} give no quantizer")
        if self.semantic_downsample_factor < 1:
            raise ValueError("the semantic branch would need upsampling: check hop, sample rates and downsample_factor")

    # Derived quantities, computed exactly as the reference does.
    @property
    def hop_length(self) -> int:
        return math.prod(self.acoustic_model_config.downsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def semantic_hidden_size(self) -> int:
        return self.semantic_model_config.hidden_size

    @property
    def hidden_size(self) -> int:
        return self.acoustic_model_config.hidden_size + self.semantic_model_config.hidden_size

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    @property
    def semantic_downsample_factor(self) -> int:
        return int(self.hop_length / (self.sample_rate / self.semantic_sample_rate) / self.downsample_factor)

    def num_quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        """Quantizers used at `bandwidth` kbps (the reference's rule); None means the highest."""
        if bandwidth is None:
            bandwidth = self.target_bandwidths[-1]
        elif bandwidth not in self.target_bandwidths:
            raise ValueError(
                f"This model doesn't support the bandwidth {bandwidth}. "
                f"Select one of {list(self.target_bandwidths)} (kbps)."
            )
        if bandwidth <= 0:
            return self.num_quantizers
        bits_per_quantizer = math.log2(self.codebook_size) * self.frame_rate / 1000
        return int(max(1, math.floor(bandwidth / bits_per_quantizer)))

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["acoustic_model_config"] = self.acoustic_model_config.to_dict()
        out["semantic_model_config"] = self.semantic_model_config.to_dict()
        out.pop("return_dict")
        if self.length_rule == LENGTH_RULES[0]:
            out.pop("length_rule")  # keep the file identical to what transformers writes
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` (transformers layout) into `directory`, atomically."""
        os.makedirs(directory, exist_ok=True)
        text = self.to_json_string()
        write_atomic(Path(directory) / CONFIG_NAME, lambda path: Path(path).write_text(text))

    @classmethod
    def from_original_dict(cls, data: dict) -> "HiggsAudioV2TokenizerConfig":
        """The config equivalent to an original-format (Boson AI) `config.json`."""
        for key, supported in _ORIGINAL_SUPPORTED.items():
            if key in data and data[key] != supported:
                raise ValueError(f"original config: {key}={data[key]!r} is not supported (only {supported!r})")
        teacher = data.get("semantic_techer", "hubert_base_general")  # sic: the original's spelling
        if teacher not in _ORIGINAL_TEACHERS:
            raise ValueError(f"original config: semantic teacher {teacher!r} is not supported (only {_ORIGINAL_TEACHERS})")
        bins = data.get("bins", 1024)
        if not isinstance(bins, int):
            raise ValueError("original config: only residual VQ (integer 'bins') is supported, not residual FSQ")
        if data.get("codebook_dim") is None:
            raise ValueError("original config: codebook_dim must be set (projected codebooks)")
        ratios = list(data.get("ratios", [8, 5, 4, 2]))
        sample_rate = int(data.get("sample_rate", 16000))
        n_q = int(data.get("n_q", 8))
        sizes = data.get(ORIGINAL_EXTENSION_KEY, {})
        acoustic = {
            "encoder_hidden_size": sizes.get("encoder_hidden_size", ORIGINAL_ENCODER_WIDTH),
            "decoder_hidden_size": sizes.get("decoder_hidden_size", ORIGINAL_DECODER_WIDTH),
            "hidden_size": int(data.get("D", 128)),
            "downsampling_ratios": ratios,
            "upsampling_ratios": ratios,
        }
        # The original lists bandwidths past what its n_q quantizers reach (4 kbps at
        # 24 kHz would need 16) and silently uses all n_q there; keep the reachable ones.
        frame_rate = math.ceil(sample_rate / math.prod(ratios))
        bits = math.ceil(math.log2(bins))
        bandwidths = [b for b in data.get("target_bandwidths", [1, 1.5, 2, 4, 6]) if 1000 * b // (frame_rate * bits) <= n_q]
        config = cls(
            target_bandwidths=bandwidths or [n_q * frame_rate * bits / 1000],
            sample_rate=sample_rate,
            codebook_size=bins,
            codebook_dim=int(data["codebook_dim"]),
            semantic_sample_rate=int(data.get("semantic_sample_rate") or 16000),
            acoustic_model_config=acoustic,
            semantic_model_config=HubertConfig.from_dict(sizes.get("semantic_model_config", {})),
        )
        if config.num_quantizers != n_q:
            raise ValueError(
                f"original config: n_q={n_q} but target_bandwidths {data.get('target_bandwidths')} "
                f"give {config.num_quantizers} quantizers"
            )
        return config

    def to_original_dict(self) -> dict:
        """The original-format `self.json` for this config (the inverse of `from_original_dict`)."""
        if tuple(self.strides) != (1, 1) or tuple(self.channel_ratios) != (1, 1) or self.downsample_factor != 320:
            raise ValueError("the original format only describes strides=(1, 1), channel_ratios=(1, 1), downsample_factor=320")
        acoustic = self.acoustic_model_config
        if tuple(acoustic.downsampling_ratios) != tuple(acoustic.upsampling_ratios):
            raise ValueError("the original format needs equal down- and upsampling ratios")
        data = {
            "n_filters": 32,
            "D": acoustic.hidden_size,
            "codebook_dim": self.codebook_dim,
            "target_bandwidths": list(self.target_bandwidths),
            "ratios": list(acoustic.downsampling_ratios),
            "sample_rate": self.sample_rate,
            "bins": self.codebook_size,
            "n_q": self.num_quantizers,
            "semantic_techer": "hubert_base_general",
        }
        if self.semantic_sample_rate != 16000:
            data["semantic_sample_rate"] = self.semantic_sample_rate
        sizes = {}
        if acoustic.encoder_hidden_size != ORIGINAL_ENCODER_WIDTH:
            sizes["encoder_hidden_size"] = acoustic.encoder_hidden_size
        if acoustic.decoder_hidden_size != ORIGINAL_DECODER_WIDTH:
            sizes["decoder_hidden_size"] = acoustic.decoder_hidden_size
        if dataclasses.replace(self.semantic_model_config, extra={}) != HubertConfig():  # HuBERT-base: implied
            sizes["semantic_model_config"] = self.semantic_model_config.to_dict()
        if sizes:
            data[ORIGINAL_EXTENSION_KEY] = sizes
        return data

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "HiggsAudioV2TokenizerConfig":
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        model_type = data.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(f"{path}: model_type is {model_type!r}, expected {cls.model_type!r}")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> "HiggsAudioV2TokenizerConfig":
        """The config of a checkpoint (directory or Hub id, either format); reads no weights.
        The Hub options (`checkpoint_files.HUB_OPTIONS`) are passed on; other keyword
        arguments replace config fields."""
        hub, overrides = split_hub_options(kwargs)
        directory, fmt = resolve_checkpoint(name_or_path, weights=False, **hub)
        config = cls.from_checkpoint_directory(directory, fmt)
        return dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def from_checkpoint_directory(cls, directory: Path, fmt: str) -> "HiggsAudioV2TokenizerConfig":
        """The config in a checkpoint directory of format `fmt` ("transformers" or "original")."""
        data = read_json(Path(directory) / CONFIG_NAME)
        try:
            return cls.from_dict(data) if fmt == "transformers" else cls.from_original_dict(data)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: {err}") from None


def _number(value: Any):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return value
