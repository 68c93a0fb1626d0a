"""Where a checkpoint is and what its files hold: a local directory or the Hugging
Face Hub, the format its config declares, and its JSON and tensor files read
safely. Imports nothing of this package: configs, models and the feature
extractor are built above it.

Formats
- transformers: `config.json` + `model.safetensors` (or shards listed in
  `model.safetensors.index.json`), `preprocessor_config.json`.
- original (Boson AI): `config.json` of constructor arguments + `model.pth`, a
  pickled state dict, read with `torch.load(weights_only=True)` (tensors only).
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first tensors read: the CLI's parser and the config need none
    import torch

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
ORIGINAL_WEIGHTS_NAME = "model.pth"
PREPROCESSOR_NAME = "preprocessor_config.json"
MODEL_TYPE = "higgs_audio_v2_tokenizer"

# The options every `from_pretrained` passes on to huggingface_hub: the one list of them.
HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")
# Seconds to wait for the Hub's host to answer before treating the network as down.
HUB_PROBE_SECONDS = 4.0


class CheckpointError(ValueError):
    """A checkpoint that does not match the model its config describes."""


def split_hub_options(options: dict) -> tuple[dict, dict]:
    """(`HUB_OPTIONS` found in `options`, the rest)."""
    hub = {k: v for k, v in options.items() if k in HUB_OPTIONS}
    return hub, {k: v for k, v in options.items() if k not in HUB_OPTIONS}


# The checkpoint used when none is named.
DEFAULT_MODEL = "bosonai/higgs-audio-v2-tokenizer"
MODEL_ENV = "HIGGS_TOKENIZER_MODEL"


def default_model() -> str:
    """The checkpoint used when none is named: $HIGGS_TOKENIZER_MODEL, else the official one."""
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


# --------------------------------------------------------------------------- finding
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
    config = read_json(directory / CONFIG_NAME)
    fmt = config_format(config, directory / CONFIG_NAME)
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


def config_format(config: dict, where) -> str:
    if config.get("model_type") == MODEL_TYPE or "acoustic_model_config" in config:
        return "transformers"
    if "ratios" in config or "semantic_techer" in config or "n_q" in config:
        return "original"
    raise CheckpointError(
        f"{where}: not a Higgs Audio V2 tokenizer config (neither model_type "
        f"'{MODEL_TYPE}' nor the original format's 'ratios'/'n_q')"
    )


def _download(repo_id: str, weights: bool, hub: dict) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    unreachable = None if offline or hub.get("local_files_only") else _hub_unreachable()
    if unreachable:
        hub = {**hub, "local_files_only": True}  # a cached copy still serves

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, **hub))

    def fetch_optional(filename: str) -> None:
        try:
            fetch(filename)
        except EntryNotFoundError:
            pass

    try:
        config_path = fetch(CONFIG_NAME)
        fmt = config_format(read_json(config_path), f"{repo_id}/{CONFIG_NAME}")
        if fmt == "transformers":
            fetch_optional(PREPROCESSOR_NAME)
        if weights and fmt == "original":
            fetch(ORIGINAL_WEIGHTS_NAME)
        elif weights:
            try:
                fetch(SAFETENSORS_NAME)
            except EntryNotFoundError:
                index = read_json(fetch(SAFETENSORS_INDEX_NAME))
                for shard in sorted(set(_shard_names(index, repo_id))):
                    fetch(shard)
    except CheckpointError:
        raise
    except Exception as err:  # network, offline mode, missing repo, auth: all told the same way
        if unreachable:
            why = f"the Hugging Face Hub is unreachable ({unreachable}) and the files are not in the local cache"
        else:
            why = f"fetching it from the Hugging Face Hub failed ({type(err).__name__}: {err})"
            if offline:
                why += ". HF_HUB_OFFLINE is set and the files are not in the local cache"
        raise OSError(
            f"could not load {repo_id!r}: it is not a local directory, and {why}. To use a checkpoint on disk, "
            "pass its directory (holding config.json and model.safetensors, or config.json and model.pth), "
            "e.g. HiggsAudioV2TokenizerModel.from_pretrained('/path/to/checkpoint')."
        ) from err
    return config_path.parent, fmt


def _hub_unreachable() -> str | None:
    """Why the Hub's host cannot be reached now, or None when it answers.

    Without a network huggingface_hub retries for about 30 s before it gives up;
    one connection attempt with a deadline tells in seconds. Behind a proxy the
    host is not dialled directly, so there is nothing to probe."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parts = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        # In a thread: a name lookup has no deadline of its own.
        pool.submit(lambda: socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()).result(
            timeout=HUB_PROBE_SECONDS
        )
        return None
    except FutureTimeout:
        return f"{host}:{port} did not answer within {HUB_PROBE_SECONDS:.0f} s"
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"
    finally:
        pool.shutdown(wait=False)


def read_json(path: Path) -> dict:
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



# --------------------------------------------------------------------------- tensors
def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if (directory / SAFETENSORS_NAME).is_file():
        files = [directory / SAFETENSORS_NAME]
    else:
        files = [directory / name for name in sorted(set(_shard_names(read_json(directory / SAFETENSORS_INDEX_NAME), directory)))]
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


def read_original(directory: Path) -> dict[str, torch.Tensor]:
    import torch

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


