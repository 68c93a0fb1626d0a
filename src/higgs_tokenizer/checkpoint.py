"""Checkpoint I/O: find a checkpoint (local directory or Hugging Face Hub), read
either published format, validate it, and write the transformers format.

Formats
- transformers: `config.json` + `model.safetensors` (or shards listed in
  `model.safetensors.index.json`).
- original (Boson AI): `config.json` of constructor arguments + `model.pth`, a
  pickled state dict, read with `torch.load(weights_only=True)` (tensors only).

Weight norm, in any of its spellings (`weight_g`/`weight_v`,
`parametrizations.weight.original0/1`), is folded into a plain `weight` once,
at load. Every key and shape is checked against the model the config
describes; nothing in a file is trusted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import torch

from .atomic import write_atomic
from .config import HiggsAudioV2TokenizerConfig, HubertConfig
from .layers import fold_weight_norm, split_weight_norm
from .quantizer import codebooks_sha256

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
ORIGINAL_WEIGHTS_NAME = "model.pth"
PREPROCESSOR_NAME = "preprocessor_config.json"

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


class CheckpointError(ValueError):
    """A checkpoint that does not match the model its config describes."""


# --------------------------------------------------------------------------- finding
HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")


def resolve_checkpoint(name_or_path: str | os.PathLike, weights: bool = True, **hub) -> tuple[Path, str]:
    """The directory holding the checkpoint and its format ("transformers" or "original").

    A local directory is used as it is; anything else is taken as a Hub repo id
    and fetched into huggingface_hub's usual cache: only the files needed, and
    no weights when `weights` is False (reading a config). `hub`: `revision`,
    `cache_dir`, `token`, `local_files_only`, passed to huggingface_hub.
    """
    unknown = set(hub) - set(HUB_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; the Hub options are {list(HUB_OPTIONS)}")
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path, detect_format(path, weights)
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the directory that holds config.json and the weights")
    name = os.fspath(name_or_path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no checkpoint directory at {name!r} (and it is not a Hub repo id like 'org/name')")
    return _download(name, weights, hub)


def detect_format(directory: Path, weights: bool = True) -> str:
    config = _read_json(directory / CONFIG_NAME)
    fmt = _config_format(config, directory / CONFIG_NAME)
    if not weights:
        return fmt
    if fmt == "transformers":
        if not (directory / SAFETENSORS_NAME).is_file() and not (directory / SAFETENSORS_INDEX_NAME).is_file():
            raise FileNotFoundError(
                f"{directory}: transformers-format config but no {SAFETENSORS_NAME} or {SAFETENSORS_INDEX_NAME}"
            )
    elif not (directory / ORIGINAL_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory}: original-format config but no {ORIGINAL_WEIGHTS_NAME}")
    return fmt


def _config_format(config: dict, where) -> str:
    if config.get("model_type") == HiggsAudioV2TokenizerConfig.model_type or "acoustic_model_config" in config:
        return "transformers"
    if "ratios" in config or "semantic_techer" in config or "n_q" in config:
        return "original"
    raise CheckpointError(
        f"{where}: not a Higgs Audio V2 tokenizer config (neither model_type "
        f"'{HiggsAudioV2TokenizerConfig.model_type}' nor the original format's 'ratios'/'n_q')"
    )


def _download(repo_id: str, weights: bool, hub: dict) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, **hub))

    def fetch_optional(filename: str) -> None:
        try:
            fetch(filename)
        except EntryNotFoundError:
            pass

    try:
        config_path = fetch(CONFIG_NAME)
        fmt = _config_format(_read_json(config_path), f"{repo_id}/{CONFIG_NAME}")
        if fmt == "transformers":
            fetch_optional(PREPROCESSOR_NAME)
        if weights and fmt == "original":
            fetch(ORIGINAL_WEIGHTS_NAME)
        elif weights:
            try:
                fetch(SAFETENSORS_NAME)
            except EntryNotFoundError:
                index = _read_json(fetch(SAFETENSORS_INDEX_NAME))
                for shard in sorted(set(_shard_names(index, repo_id))):
                    fetch(shard)
    except CheckpointError:
        raise
    except Exception as err:  # network, offline mode, missing repo, auth: all told the same way
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise OSError(
            f"could not load {repo_id!r}: it is not a local directory, and fetching it from the Hugging Face Hub "
            f"failed ({type(err).__name__}: {err})."
            + (" HF_HUB_OFFLINE is set and the files are not in the local cache." if offline else "")
            + " To use a checkpoint on disk, pass its directory (holding config.json and model.safetensors, "
            "or config.json and model.pth), e.g. HiggsAudioV2TokenizerModel.from_pretrained('/path/to/checkpoint')."
        ) from err
    return config_path.parent, fmt


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: a checkpoint directory needs {CONFIG_NAME}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------- configs
def load_config(name_or_path, **hub) -> HiggsAudioV2TokenizerConfig:
    """A checkpoint's config (either format), without reading or downloading its weights."""
    directory, fmt = resolve_checkpoint(name_or_path, weights=False, **hub)
    return config_from_directory(directory, fmt)


def config_from_directory(directory: Path, fmt: str) -> HiggsAudioV2TokenizerConfig:
    data = _read_json(directory / CONFIG_NAME)
    try:
        return HiggsAudioV2TokenizerConfig.from_dict(data) if fmt == "transformers" else config_from_original(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {err}") from None


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


def config_from_original(data: dict) -> HiggsAudioV2TokenizerConfig:
    """The transformers-layout config equivalent to an original-format `config.json`."""
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
    config = HiggsAudioV2TokenizerConfig(
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


def config_to_original(config: HiggsAudioV2TokenizerConfig) -> dict:
    """The original-format `config.json` for `config` (the inverse of `config_from_original`)."""
    if tuple(config.strides) != (1, 1) or tuple(config.channel_ratios) != (1, 1) or config.downsample_factor != 320:
        raise ValueError("the original format only describes strides=(1, 1), channel_ratios=(1, 1), downsample_factor=320")
    acoustic = config.acoustic_model_config
    if tuple(acoustic.downsampling_ratios) != tuple(acoustic.upsampling_ratios):
        raise ValueError("the original format needs equal down- and upsampling ratios")
    data = {
        "n_filters": 32,
        "D": acoustic.hidden_size,
        "codebook_dim": config.codebook_dim,
        "target_bandwidths": list(config.target_bandwidths),
        "ratios": list(acoustic.downsampling_ratios),
        "sample_rate": config.sample_rate,
        "bins": config.codebook_size,
        "n_q": config.num_quantizers,
        "semantic_techer": "hubert_base_general",
    }
    if config.semantic_sample_rate != 16000:
        data["semantic_sample_rate"] = config.semantic_sample_rate
    sizes = {}
    if acoustic.encoder_hidden_size != ORIGINAL_ENCODER_WIDTH:
        sizes["encoder_hidden_size"] = acoustic.encoder_hidden_size
    if acoustic.decoder_hidden_size != ORIGINAL_DECODER_WIDTH:
        sizes["decoder_hidden_size"] = acoustic.decoder_hidden_size
    if dataclasses.replace(config.semantic_model_config, extra={}) != HubertConfig():  # HuBERT-base: implied
        sizes["semantic_model_config"] = config.semantic_model_config.to_dict()
    if sizes:
        data[ORIGINAL_EXTENSION_KEY] = sizes
    return data


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
def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if (directory / SAFETENSORS_NAME).is_file():
        files = [directory / SAFETENSORS_NAME]
    else:
        files = [directory / name for name in sorted(set(_shard_names(_read_json(directory / SAFETENSORS_INDEX_NAME), directory)))]
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {SAFETENSORS_INDEX_NAME} but missing")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key in state:
                        raise CheckpointError(f"{path}: key {key!r} appears in more than one shard")
                    state[key] = f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return state


def _shard_names(index: dict, where) -> list[str]:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{where}: {SAFETENSORS_INDEX_NAME} has no weight_map")
    names = list(weight_map.values())
    for name in names:
        # Shards must sit beside the index: no paths, no escaping the directory.
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+\.safetensors", name) or name.startswith("."):
            raise CheckpointError(f"{where}: invalid shard file name {name!r} in {SAFETENSORS_INDEX_NAME}")
    return names


def _read_original(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / ORIGINAL_WEIGHTS_NAME
    try:
        # weights_only: tensors and plain containers only, never arbitrary objects.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Files from torch.save(_use_new_zipfile_serialization=False) cannot be memory-mapped.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a loadable tensor-only checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a state dict mapping names to tensors")
    return state


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


def read_state_dict(directory: Path, fmt: str, model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `model`'s key names, weight norm folded in `dtype` (unvalidated)."""
    if fmt == "transformers":
        return fold_weight_norms(_read_safetensors(directory), str(directory), dtype)
    state = fold_weight_norms(_read_original(directory), str(directory), dtype)
    ours = {original_key(name, model.config): name for name in model.state_dict()}
    return {ours.get(key, key): tensor for key, tensor in state.items()}


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


def load_pretrained(model_cls, name_or_path, *, device=None, dtype=None, config_overrides=None, **hub):
    """Build `model_cls` from a checkpoint; `config_overrides` replace config fields (e.g. length_rule)."""
    overrides = {k: v for k, v in (config_overrides or {}).items() if v is not None}
    fields = {f.name for f in dataclasses.fields(HiggsAudioV2TokenizerConfig)} - {"extra"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"from_pretrained got unexpected argument(s) {unknown}: it takes device_map/device, dtype, length_rule, "
            f"the Hub options {list(HUB_OPTIONS)}, and config fields"
        )
    directory, fmt = resolve_checkpoint(name_or_path, **hub)
    config = config_from_directory(directory, fmt)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    dtype = _resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = model_cls(config)
    state = read_state_dict(directory, fmt, model, dtype)
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
    """Write the transformers format: config.json, model.safetensors, preprocessor_config.json."""
    from safetensors.torch import save_file

    from .feature_extraction import HiggsAudioV2TokenizerFeatureExtractor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = transformers_state_dict(model)
    extractor = HiggsAudioV2TokenizerFeatureExtractor.from_model_config(model.config)
    write_atomic(directory / SAFETENSORS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    write_atomic(directory / PREPROCESSOR_NAME, lambda p: Path(p).write_text(extractor.to_json_string()))
    write_atomic(directory / CONFIG_NAME, lambda p: Path(p).write_text(model.config.to_json_string()))


def save_original(model, directory: str | os.PathLike) -> None:
    """Write Boson AI's original format: config.json of constructor arguments and model.pth."""
    original_config = config_to_original(model.config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = original_state_dict(model)
    write_atomic(directory / ORIGINAL_WEIGHTS_NAME, lambda p: torch.save(state, p))
    write_atomic(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(original_config, indent=2) + "\n"))


def convert_original_to_transformers(source, destination) -> None:
    """Read an original-format checkpoint (directory or Hub id) and write it in the transformers format."""
    from .model import HiggsAudioV2TokenizerModel

    model = HiggsAudioV2TokenizerModel.from_pretrained(source)
    save_pretrained(model, destination)
