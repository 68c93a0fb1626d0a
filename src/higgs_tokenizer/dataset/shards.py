"""The output of a corpus job: Parquet shards, an errors table, a plan and a manifest.

    OUTPUT/plan.json                 what the job is (source fingerprint, shard size, model)
    OUTPUT/data/part-00000.parquet   id, codes, num_frames, num_samples, duration, source, passed-through columns
    OUTPUT/errors/part-00000.parquet id, source, error (only for shards with failures)
    OUTPUT/dataset.json              model identity and config, counts, hours, shards, errors

Shard k holds items [k × shard_size, (k + 1) × shard_size) of the source's fixed
order. A shard is committed by renaming its finished data file into place
(after its errors file), so a shard is either whole or absent: a rerun redoes
exactly the shards whose data file is missing, and no item can appear twice.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_atomic

FORMAT = "higgs-tokenizer-dataset"
VERSION = 1
OUTPUT_COLUMNS = ("id", "codes", "num_frames", "num_samples", "duration", "source")
# A source column named like an output column is kept under this prefix.
RENAMED_PREFIX = "meta_"


class OutputError(ValueError):
    """An output directory that holds another job, or damaged shards."""


@dataclass
class Plan:
    """What a job is; fixed when it starts and checked when it resumes."""

    source: str
    kind: str
    num_items: int
    fingerprint: str
    shard_size: int
    model: dict  # ModelIdentity fields
    num_quantizers: int
    sample_rate: int
    frame_rate: int
    hop_length: int
    codebook_size: int
    length_rule: str
    extra_schema: str = ""  # base64 of the Arrow schema of the passed-through columns
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.shard_size)

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.num_items, (shard + 1) * self.shard_size))

    def same_job(self, other: "Plan") -> list[str]:
        """The fields that differ from `other`, apart from when each was made."""
        mine, theirs = asdict(self), asdict(other)
        return [k for k in mine if k != "created" and mine[k] != theirs[k]]


def extra_schema(extras: list[dict]):
    """One Arrow schema for the passed-through columns of every item (so all shards agree),
    colliding names prefixed."""
    import pyarrow as pa

    if not extras or not any(extras):
        return pa.schema([])
    schema = pa.Table.from_pylist([_renamed(e) for e in extras]).schema
    # A column that is null everywhere has no type to keep; store it as text.
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _renamed(extra: dict) -> dict:
    return {(RENAMED_PREFIX + k if k in OUTPUT_COLUMNS else k): v for k, v in extra.items()}


def encode_schema(schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str):
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))) if text else pa.schema([])


class OutputDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def data_path(self, shard: int) -> Path:
        return self.root / "data" / f"part-{shard:05d}.parquet"

    def errors_path(self, shard: int) -> Path:
        return self.root / "errors" / f"part-{shard:05d}.parquet"

    # ------------------------------------------------------------------ plan
    def start(self, plan: Plan) -> Plan:
        """Record `plan`, or check it against the one recorded; returns the plan in force."""
        path = self.root / "plan.json"
        if path.exists():
            recorded = Plan(**json.loads(path.read_text()))
            differing = recorded.same_job(plan)
            if differing:
                raise OutputError(
                    f"{self.root} holds another job (it differs in: {', '.join(differing)}); "
                    "use a new --output, or --overwrite to start again"
                )
            return recorded
        if self.root.exists() and any(self.root.iterdir()):
            raise OutputError(f"{self.root} exists and is not a tokenize-dataset output; use a new --output or --overwrite")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "errors").mkdir(exist_ok=True)
        write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(plan), indent=1)))
        return plan

    # ------------------------------------------------------------------ shards
    def committed(self, shard: int, ids: list[str]) -> bool:
        """Whether shard `shard` is on disk whole: its data file (and errors file) hold exactly `ids`."""
        import pyarrow.parquet as pq

        data = self.data_path(shard)
        if not data.exists():
            return False
        try:
            found = pq.read_table(data, columns=["id"]).column(0).to_pylist()
            errors = self.errors_path(shard)
            if errors.exists():
                found += pq.read_table(errors, columns=["id"]).column(0).to_pylist()
        except Exception:
            return False  # unreadable: redo it
        return sorted(found) == sorted(ids)

    def commit(self, shard: int, rows: list[dict], errors: list[dict], plan: Plan) -> None:
        """Write shard `shard`: its errors (if any), then its data file, which marks it done."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        errors_path = self.errors_path(shard)
        if errors:
            table = pa.Table.from_pylist(errors, schema=errors_schema())
            write_atomic(errors_path, lambda tmp: pq.write_table(table, tmp))
        elif errors_path.exists():
            errors_path.unlink()  # left by an earlier try whose data file never landed
        table = shard_table(rows, plan)
        write_atomic(self.data_path(shard), lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    # ------------------------------------------------------------------ manifest
    def finish(self, plan: Plan, config: dict, bandwidth: float | None, tool_version: str) -> dict:
        """Write dataset.json from what is committed; returns it."""
        import pyarrow.parquet as pq

        shards, encoded, seconds, error_rows = [], 0, 0.0, []
        for shard in range(plan.num_shards):
            data = pq.read_table(self.data_path(shard), columns=["duration"])
            rows = data.num_rows
            errors = self.errors_path(shard)
            failed = pq.read_table(errors).to_pylist() if errors.exists() else []
            error_rows += failed
            encoded += rows
            seconds += float(np.sum(data.column(0).to_numpy())) if rows else 0.0
            shards.append({"file": self.data_path(shard).relative_to(self.root).as_posix(), "rows": rows, "errors": len(failed)})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "tool": {"name": "higgs-audio-tokenizer", "version": tool_version},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {"path": plan.source, "kind": plan.kind, "fingerprint": plan.fingerprint},
            "model": {**plan.model, "config": config},
            "codes": {
                "column": "codes", "dtype": "int16", "layout": "[num_quantizers, num_frames]",
                "num_quantizers": plan.num_quantizers, "codebook_size": plan.codebook_size,
                "frame_rate": plan.frame_rate, "sample_rate": plan.sample_rate, "hop_length": plan.hop_length,
                "bandwidth_kbps": bandwidth, "length_rule": plan.length_rule,
            },
            "counts": {"items": plan.num_items, "encoded": encoded, "errors": len(error_rows)},
            "total_hours": seconds / 3600,
            "shard_size": plan.shard_size,
            "shards": shards,
            "errors": {"count": len(error_rows), "table": "errors/", "examples": error_rows[:20]},
        }
        write_atomic(self.root / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
        return manifest


def errors_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("error", pa.string())])


def shard_table(rows: list[dict], plan: Plan):
    """Rows (id, codes [n_q, frames] int array, num_samples, source, extra) → the shard's Arrow table."""
    import pyarrow as pa

    extras = decode_schema(plan.extra_schema)
    codes_type = pa.list_(pa.list_(pa.int16()))
    columns = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "codes": pa.array([np.asarray(r["codes"], dtype=np.int16).tolist() for r in rows], codes_type),
        "num_frames": pa.array([int(np.shape(r["codes"])[1]) for r in rows], pa.int32()),
        "num_samples": pa.array([int(r["num_samples"]) for r in rows], pa.int64()),
        "duration": pa.array([r["num_samples"] / plan.sample_rate for r in rows], pa.float64()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
    }
    renamed = [_renamed(r.get("extra", {})) for r in rows]
    for f in extras:
        columns[f.name] = pa.array([e.get(f.name) for e in renamed], f.type)
    return pa.table(columns)
