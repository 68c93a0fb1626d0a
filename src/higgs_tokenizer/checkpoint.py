"""Checkpoint contents: the tensors of either published format under this model's
names, weight norm folded, validated against the model the config describes;
building a model from a checkpoint, and writing both formats.

Finding a checkpoint and reading its files is `checkpoint_files`' job. Weight
norm, in any of its spellings (`weight_g`/`weight_v`,
`parametrizations.weight.original0/1`), is folded into a plain `weight` once, at
load. Every key and shape is checked; nothing in a file is trusted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from .atomic import write_atomic
from .checkpoint_files import (
    CONFIG_NAME,
    HUB_OPTIONS,
    ORIGINAL_WEIGHTS_NAME,
    SAFETENSORS_NAME,
    CheckpointError,
    read_original,
    read_safetensors,
    resolve_checkpoint,
    split_hub_options,
)
from .config import HiggsAudioV2TokenizerConfig
from .feature_extraction import HiggsAudioV2TokenizerFeatureExtractor
from .layers import fold_weight_norm, split_weight_norm
from .quantizer import codebooks_sha256

# Keys present in published checkpoints that inference does not use (the reference ignores them too).
IGNORED_KEYS = frozenset({"semantic_model.masked_spec_embed"})
# Stored with weight norm over the kernel axis (dim=2) in both formats.
POS_CONV_WEIGHT = "semantic_model.encoder.pos_conv_embed.conv.weight"
_WEIGHT_NORM_SUFFIXES = {
    ".weight_g": ("g", ".weight"),
    ".weight_v": ("v", ".weight"),
    ".parametrizations.weight.original0": ("g", ".weight"),
    ".parametrizations.weight.original1": ("v", ".weight"),
}


# --------------------------------------------------------------------------- key names
def original_key(key: str, config: HiggsAudioV2TokenizerConfig) -> str:
    """The original format's name for one of this model's state-dict keys."""
    n_enc = len(config.acoustic_model_config.downsampling_ratios)
    n_dec = len(config.acoustic_model_config.upsampling_ratios)
    # Inside a residual unit the original is a Sequential: snake, conv, snake, conv.
    unit = {"snake1.alpha": "block.0.alpha", "snake2.alpha": "block.2.alpha", "conv1.": "block.1.", "conv2.": "block.3."}

    def residual(rest: str) -> str:
        for ours, theirs in unit.items():
            if rest.startswith(ours):
                return theirs + rest[len(ours):]
        raise KeyError(key)

    rules = [
        (r"acoustic_encoder\.conv1\.(.*)", lambda m: f"encoder.block.0.{m[1]}"),
        (
            r"acoustic_encoder\.block\.(\d+)\.res_unit([123])\.(.*)",
            lambda m: f"encoder.block.{int(m[1]) + 1}.block.{int(m[2]) - 1}.{residual(m[3])}",
        ),
        (r"acoustic_encoder\.block\.(\d+)\.snake1\.alpha", lambda m: f"encoder.block.{int(m[1]) + 1}.block.3.alpha"),
        (r"acoustic_encoder\.block\.(\d+)\.conv1\.(.*)", lambda m: f"encoder.block.{int(m[1]) + 1}.block.4.{m[2]}"),
        (r"acoustic_encoder\.snake1\.alpha", lambda m: f"encoder.block.{n_enc + 1}.alpha"),
        (r"acoustic_encoder\.conv2\.(.*)", lambda m: f"encoder.block.{n_enc + 2}.{m[1]}"),
        (r"acoustic_decoder\.conv1\.(.*)", lambda m: f"decoder_2.model.0.{m[1]}"),
        (r"acoustic_decoder\.block\.(\d+)\.snake1\.alpha", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.0.alpha"),
        (r"acoustic_decoder\.block\.(\d+)\.conv_t1\.(.*)", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.1.{m[2]}"),
        (
            r"acoustic_decoder\.block\.(\d+)\.res_unit([123])\.(.*)",
            lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.{int(m[2]) + 1}.{residual(m[3])}",
        ),
        (r"acoustic_decoder\.snake1\.alpha", lambda m: f"decoder_2.model.{n_dec + 1}.alpha"),
        (r"acoustic_decoder\.conv2\.(.*)", lambda m: f"decoder_2.model.{n_dec + 2}.{m[1]}"),
        # The original wraps each semantic conv (but the 1×1 ones) in a module named `conv`.
        (r"((?:en|de)coder_semantic(?:\..+)?\.(?:conv|conv1))\.(weight|bias)", lambda m: f"{m[1]}.conv.{m[2]}"),
        (r"(decoder_semantic\.conv2)\.(weight|bias)", lambda m: f"{m[1]}.conv.{m[2]}"),
        (r"fc\.(.*)", lambda m: f"fc_prior.{m[1]}"),
        (r"fc1\.(.*)", lambda m: f"fc_post1.{m[1]}"),
        (r"fc2\.(.*)", lambda m: f"fc_post2.{m[1]}"),
        (r"quantizer\.quantizers\.(\d+)\.codebook\.(.*)", lambda m: f"quantizer.vq.layers.{m[1]}._codebook.{m[2]}"),
        (r"quantizer\.quantizers\.(\d+)\.(project_in|project_out)\.(.*)", lambda m: f"quantizer.vq.layers.{m[1]}.{m[2]}.{m[3]}"),
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    return key  # semantic_model.*, the semantic 1×1 convs: same names


# --------------------------------------------------------------------------- reading
def fold_weight_norms(state: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Replace every weight-norm (g, v) pair by the plain weight it stands for, computed in `dtype`
    (as the reference computes it when its parameters are in that dtype)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for suffix, (part, plain) in _WEIGHT_NORM_SUFFIXES.items():
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)] + plain, {})[part] = tensor
                break
        else:
            out[key] = tensor
    for key, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            raise CheckpointError(f"{where}: weight norm of {key!r} has only its {'g' if 'g' in pair else 'v'} tensor")
        if key in out:
            raise CheckpointError(f"{where}: {key!r} is stored both plain and weight-normed")
        try:
            out[key] = fold_weight_norm(pair["g"].to(dtype), pair["v"].to(dtype))
        except ValueError as err:
            raise CheckpointError(f"{where}: {key}: {err}") from None
    return out


def read_state_dict(directory: Path, fmt: str, stored: dict[str, torch.Tensor], model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (`stored`, as read from `directory`) under `model`'s key
    names, weight norm folded in `dtype` (unvalidated)."""
    state = fold_weight_norms(stored, str(directory), dtype)
    if fmt == "transformers":
        return state
    ours = {original_key(name, model.config): name for name in model.state_dict()}
    return {ours.get(key, key): tensor for key, tensor in state.items()}


def check_structure_fits(config: HiggsAudioV2TokenizerConfig, tensors: int, where: str) -> None:
    """Refuse a config that asks for more repeated parts than the checkpoint holds tensors
    (each part has at least one), before the model is built: building one is linear in
    them, and a config's sizes are not trusted (`target_bandwidths` of 1e9 asks for about
    4e9 quantizers)."""
    hubert, acoustic = config.semantic_model_config, config.acoustic_model_config
    parts = {
        "quantizers": config.num_quantizers,
        "HuBERT layers": hubert.num_hidden_layers,
        "HuBERT feature convs": len(hubert.conv_dim),
        "acoustic encoder blocks": len(acoustic.downsampling_ratios),
        "acoustic decoder blocks": len(acoustic.upsampling_ratios),
        "semantic encoder blocks": len(config.channel_ratios),
    }
    for name, count in parts.items():
        if count > tensors:
            raise CheckpointError(f"{where}: its config asks for {count} {name}; the checkpoint holds {tensors} tensors in all")


def validate_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> dict:
    """`state` without ignored keys, after checking names, shapes and dtypes against `expected`."""
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    wrong_dtype = [f"{k}: {v.dtype}" for k, v in sorted(state.items()) if k in expected and not v.is_floating_point()]
    problems = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", wrong_shape),
        ("non-float tensors", wrong_dtype),
    ):
        if items:
            shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"  {len(items)} {title}:\n    {shown}")
    if problems:
        raise CheckpointError(f"{where} does not match its config:\n" + "\n".join(problems))
    return state


def load_pretrained(model_cls, name_or_path, *, device=None, dtype=None, **options):
    """Build `model_cls` from a checkpoint. `options`: the Hub options (`HUB_OPTIONS`) and
    config fields to replace (e.g. `length_rule`; None leaves a field as it is)."""
    hub, overrides = split_hub_options(options)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(HiggsAudioV2TokenizerConfig)} - {"extra"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"from_pretrained got unexpected argument(s) {unknown}: it takes device_map/device, dtype, length_rule, "
            f"the Hub options {list(HUB_OPTIONS)}, and config fields"
        )
    directory, fmt = resolve_checkpoint(name_or_path, **hub)
    config = HiggsAudioV2TokenizerConfig.from_checkpoint_directory(directory, fmt)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    dtype = _resolve_dtype(dtype, config)
    stored = read_safetensors(directory) if fmt == "transformers" else read_original(directory)
    check_structure_fits(config, len(stored), str(directory))
    with torch.device("meta"):
        model = model_cls(config)
    state = read_state_dict(directory, fmt, stored, model, dtype)
    state = validate_state_dict(state, model.state_dict(), str(directory))
    # assign=True adopts the loaded tensors instead of copying them into fresh ones.
    model.load_state_dict(state, strict=True, assign=True)
    stored_codebooks = codebooks_sha256(q.codebook.embed for q in model.quantizer.quantizers)
    model.to(device=device, dtype=dtype)
    model.record_loaded_codebooks(stored_codebooks)
    return model.eval()


def _resolve_dtype(dtype, config: HiggsAudioV2TokenizerConfig) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = config.extra.get("dtype") or config.extra.get("torch_dtype") or "float32"
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = resolved
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    return dtype


# --------------------------------------------------------------------------- writing
def transformers_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors as the transformers format stores them (CPU, contiguous)."""
    state = {k: _portable(v) for k, v in model.state_dict().items()}
    # transformers' HuBERT always holds its positional conv weight-normed.
    state.update(_pos_conv_parametrization(state.pop(POS_CONV_WEIGHT), POS_CONV_WEIGHT))
    return state


def _pos_conv_parametrization(weight: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """HuBERT's positional conv weight as both formats store it: weight norm over the kernel axis."""
    g, v = split_weight_norm(weight, dim=2)
    base = name[: -len(".weight")]
    return {f"{base}.parametrizations.weight.original0": g, f"{base}.parametrizations.weight.original1": v}


def original_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors as Boson AI's original format stores them.

    As in the published checkpoint, acoustic convs are weight-normed
    (`weight_g`/`weight_v`) and HuBERT's positional conv is a parametrization.
    """
    config = model.config
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = _portable(tensor)
        name = original_key(key, config)
        acoustic_conv = key.startswith(("acoustic_encoder.", "acoustic_decoder.")) and key.endswith(".weight")
        if key == POS_CONV_WEIGHT:
            state.update(_pos_conv_parametrization(tensor, name))
        elif acoustic_conv:
            g, v = split_weight_norm(tensor, dim=0)
            base = name[: -len(".weight")]
            state[f"{base}.weight_g"], state[f"{base}.weight_v"] = g, v
        else:
            state[name] = tensor
    return state


def _portable(tensor: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous, on the CPU (meta tensors stay meta: key listings use them)."""
    tensor = tensor.detach()
    return (tensor if tensor.is_meta else tensor.cpu()).contiguous()


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write the transformers format: model.safetensors, preprocessor_config.json, config.json
    (each file atomically; the config last, as it marks a directory as a checkpoint)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = transformers_state_dict(model)
    write_atomic(directory / SAFETENSORS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    HiggsAudioV2TokenizerFeatureExtractor.from_model_config(model.config).save_pretrained(directory)
    model.config.save_pretrained(directory)


def save_original(model, directory: str | os.PathLike) -> None:
    """Write Boson AI's original format: config.json of constructor arguments and model.pth."""
    original_config = model.config.to_original_dict()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = original_state_dict(model)
    write_atomic(directory / ORIGINAL_WEIGHTS_NAME, lambda p: torch.save(state, p))
    write_atomic(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(original_config, indent=2) + "\n"))
