"""The codes file: one recording's codes and everything needed to decode them.

A `.hac` file ("Higgs audio codes") is a safetensors file, so it loads without
unpickling anything and other tools can read it:

- one tensor, `codes`: int16 `[num_quantizers, frames]`;
- metadata (string → string, in the safetensors header):
  - `format`: "higgs-audio-codes", `format_version`: "1";
  - `header`: a JSON object with `model_name`, `model_config_sha256` (the model's
    architecture), `codebooks_sha256` (the codeword values: what the codes mean),
    `sample_rate`, `hop_length`, `frame_rate`, `num_quantizers`, `codebook_size`,
    `num_samples` (the recording's length at `sample_rate`: decoding restores it),
    `source` (where the audio came from), `length_rule` and `created_by`.

A reader refuses files of another format, of a newer format version, or made by a
model whose architecture or codebooks differ from the one decoding them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first codes read or written: the CLI's parser needs none
    import torch

from .atomic import write_atomic
from .version import __version__

FORMAT = "higgs-audio-codes"
FORMAT_VERSION = 1
SUFFIX = ".hac"


class CodesFileError(ValueError):
    """A codes file that is malformed, of an unknown version, or made by another model."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    config_sha256: str
    codebooks_sha256: str

    @classmethod
    def of(cls, model, name: str) -> "ModelIdentity":
        config = model.config
        # Architecture fields only: the same model read from either checkpoint format,
        # or saved by another tool, hashes the same.
        architecture = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in ("extra", "length_rule", "return_dict", "acoustic_model_config", "semantic_model_config")
        }
        architecture["acoustic_model_config"] = dataclasses.replace(config.acoustic_model_config, extra={})
        architecture["semantic_model_config"] = dataclasses.replace(config.semantic_model_config, extra={})
        config_hash = hashlib.sha256(json.dumps(architecture, sort_keys=True, default=repr).encode()).hexdigest()
        return cls(name=name, config_sha256=config_hash, codebooks_sha256=model.codebooks_sha256())


@dataclass
class EncodedAudio:
    """Codes `[num_quantizers, frames]` (int64) of one recording, with what decoding it needs."""

    codes: torch.Tensor
    num_samples: int
    sample_rate: int
    hop_length: int
    frame_rate: int
    codebook_size: int
    model: ModelIdentity
    source: str = ""
    length_rule: str = "transformers"

    @property
    def num_quantizers(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def header(self) -> dict:
        return {
            "model_name": self.model.name,
            "model_config_sha256": self.model.config_sha256,
            "codebooks_sha256": self.model.codebooks_sha256,
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "frame_rate": self.frame_rate,
            "num_quantizers": self.num_quantizers,
            "codebook_size": self.codebook_size,
            "num_samples": self.num_samples,
            "source": self.source,
            "length_rule": self.length_rule,
            "created_by": f"higgs-audio-tokenizer {__version__}",
        }

    def to_bytes(self) -> bytes:
        """The codes file's bytes (what `save` writes)."""
        import torch
        from safetensors.torch import save

        if self.codebook_size > 2**15:
            raise CodesFileError(f"codebook size {self.codebook_size} does not fit the int16 codes of format version 1")
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "header": json.dumps(self.header())}
        return save({"codes": self.codes.detach().to("cpu", torch.int16).contiguous()}, metadata=metadata)

    def save(self, path: str | os.PathLike) -> Path:
        data = self.to_bytes()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))

    def check_model(self, identity: ModelIdentity, config) -> None:
        """Refuse to decode with a model whose codes mean something else, or whose frame
        grid is not the one the header describes (`config`: the model's config)."""
        if identity.config_sha256 != self.model.config_sha256:
            raise CodesFileError(
                f"codes made by model {self.model.name!r} (config {self.model.config_sha256[:12]}), "
                f"but the loaded model {identity.name!r} has another architecture (config {identity.config_sha256[:12]}); "
                "decode with the model that made them"
            )
        if identity.codebooks_sha256 != self.model.codebooks_sha256:
            raise CodesFileError(
                f"codes made by model {self.model.name!r}, but the loaded model {identity.name!r} has other codebooks "
                f"({identity.codebooks_sha256[:12]} vs {self.model.codebooks_sha256[:12]}): the codes would decode to "
                "something else; decode with the model that made them"
            )
        expected = {
            "sample_rate": config.sample_rate,
            "hop_length": config.hop_length,
            "frame_rate": config.frame_rate,
            "codebook_size": config.codebook_size,
        }
        for name, value in expected.items():
            if getattr(self, name) != value:
                raise CodesFileError(
                    f"the codes file's header says {name}={getattr(self, name)}, but the loaded model has "
                    f"{name}={value}: the file was edited or made by another model"
                )
        if self.num_quantizers > config.num_quantizers:
            raise CodesFileError(
                f"the codes file has {self.num_quantizers} quantizers; the loaded model decodes at most "
                f"{config.num_quantizers}"
            )


def load_codes_bytes(data: bytes, name: str = "<bytes>") -> EncodedAudio:
    """`load_codes` for a codes file held in memory (an upload); `name` labels errors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "codes.hac"
        path.write_bytes(data)
        return load_codes(path, name=name)


def load_codes(path: str | os.PathLike, name: str | None = None) -> EncodedAudio:
    """Read and validate a codes file (no unpickling; every size checked against the header);
    `name` labels errors (default: the path)."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such codes file")
    label = name if name is not None else str(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
            codes = f.get_tensor("codes") if names == ["codes"] else None
    except Exception as err:
        raise CodesFileError(f"{label}: not a codes file ({type(err).__name__}: {err})") from None
    if metadata.get("format") != FORMAT:
        raise CodesFileError(f"{label}: not a Higgs audio codes file (format {metadata.get('format')!r})")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise CodesFileError(f"{label}: bad format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CodesFileError(
            f"{label}: format version {version} is newer than this reader (version {FORMAT_VERSION}); "
            "upgrade higgs-audio-tokenizer"
        )
    if version < 1:
        raise CodesFileError(f"{label}: bad format_version {version}")
    if codes is None:
        raise CodesFileError(f"{label}: expected exactly one tensor named 'codes', found {names}")
    try:
        header = json.loads(metadata["header"])
        fields = {
            key: int(header[key])
            for key in ("sample_rate", "hop_length", "frame_rate", "num_quantizers", "codebook_size", "num_samples")
        }
        identity = ModelIdentity(
            str(header["model_name"]), str(header["model_config_sha256"]), str(header["codebooks_sha256"])
        )
    except (KeyError, TypeError, ValueError, OverflowError, json.JSONDecodeError) as err:
        raise CodesFileError(f"{label}: malformed header ({type(err).__name__}: {err})") from None
    if codes.dtype != torch.int16 or codes.dim() != 2:
        raise CodesFileError(f"{label}: codes must be int16 [num_quantizers, frames], got {codes.dtype} {tuple(codes.shape)}")
    n_q, frames = codes.shape
    if n_q != fields["num_quantizers"] or n_q < 1 or frames < 1:
        raise CodesFileError(
            f"{label}: codes shape {tuple(codes.shape)} does not match the header ({fields['num_quantizers']} quantizers)"
        )
    if min(fields.values()) < 1:
        raise CodesFileError(f"{label}: non-positive size in the header {fields}")
    if abs(frames * fields["hop_length"] - fields["num_samples"]) > 2 * fields["hop_length"]:
        raise CodesFileError(
            f"{label}: {frames} frames of {fields['hop_length']} samples cannot hold {fields['num_samples']} samples"
        )
    codes = codes.long()
    if int(codes.min()) < 0 or int(codes.max()) >= fields["codebook_size"]:
        raise CodesFileError(f"{label}: codes outside [0, {fields['codebook_size']})")
    return EncodedAudio(
        codes=codes,
        num_samples=fields["num_samples"],
        sample_rate=fields["sample_rate"],
        hop_length=fields["hop_length"],
        frame_rate=fields["frame_rate"],
        codebook_size=fields["codebook_size"],
        model=identity,
        source=str(header.get("source", "")),
        length_rule=str(header.get("length_rule", "transformers")),
    )
