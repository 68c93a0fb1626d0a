"""The output of a corpus job on disk: Parquet shards, an errors table, the plan and the manifest.

    OUTPUT/plan.json                 what the job is (source fingerprint, shard size, model, length rule)
    OUTPUT/data/part-00000.parquet   id, codes, num_frames, num_samples, duration, source, passed-through columns
    OUTPUT/errors/part-00000.parquet id, source, error (only shards with failures)
    OUTPUT/dataset.json              model identity and config, counts, hours, shards, errors

Shard k holds items [k × shard_size, (k + 1) × shard_size) of the source's fixed
order. A shard is committed when its files together hold exactly its ids. Each
file is written beside its final name and renamed into place, the errors file
first and the data file last, so a shard cut short holds fewer ids and is redone
whole, and no item can appear twice. A shard whose items all failed has no data
file: its errors file commits it (a 0-row Parquet file stops readers such as
`datasets`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..atomic import write_atomic

FORMAT = "higgs-tokenizer-dataset"
VERSION = 2  # 2: a shard with no encoded item has no data file ("file": null in the manifest)


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

    def differences(self, other: "Plan") -> list[str]:
        """The fields that differ from `other`, apart from when each was made."""
        mine, theirs = asdict(self), asdict(other)
        return [k for k in mine if k != "created" and mine[k] != theirs[k]]


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
            recorded = json.loads(path.read_text())
            names = {f.name for f in fields(Plan)}
            if set(recorded) - names or names - {"created"} - set(recorded):
                raise OutputError(f"{self.root} holds a job of another version of this tool; use a new --output or --overwrite")
            recorded = Plan(**recorded)
            differing = recorded.differences(plan)
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

    def clear(self) -> None:
        """Delete the job recorded here, refusing a directory that holds something else."""
        if self.root.exists():
            if any(self.root.iterdir()) and not (self.root / "plan.json").exists():
                raise OutputError(f"{self.root} is not a tokenize-dataset output; not deleting it")
            shutil.rmtree(self.root)

    def remove_leftovers(self) -> None:
        """Delete writes cut short by a kill; their shards are simply not committed."""
        for folder in (self.root / "data", self.root / "errors"):
            for leftover in folder.glob(".*.tmp") if folder.exists() else ():
                leftover.unlink()

    # ------------------------------------------------------------------ shards
    def committed_errors(self, shard: int, ids: list[str]) -> int | None:
        """How many of shard `shard`'s items failed, if it is committed (its files hold
        exactly `ids`); None if it is not."""
        import pyarrow.parquet as pq

        found, failed = [], 0
        try:
            if self.data_path(shard).exists():
                found += pq.read_table(self.data_path(shard), columns=["id"]).column(0).to_pylist()
            if self.errors_path(shard).exists():
                errors = pq.read_table(self.errors_path(shard), columns=["id"]).column(0).to_pylist()
                found, failed = found + errors, len(errors)
        except Exception:
            return None  # unreadable: redo it
        return failed if sorted(found) == sorted(ids) else None

    def commit(self, shard: int, data, errors) -> None:
        """Write shard `shard`: `errors` then `data` (Arrow tables, or None for none)."""
        import pyarrow.parquet as pq

        # Files of an earlier try go first, so that the shard's files cannot add up to its ids across two tries.
        self.data_path(shard).unlink(missing_ok=True)
        if errors is not None:
            write_atomic(self.errors_path(shard), lambda tmp: pq.write_table(errors, tmp))
        else:
            self.errors_path(shard).unlink(missing_ok=True)
        if data is not None:
            write_atomic(self.data_path(shard), lambda tmp: pq.write_table(data, tmp, compression="zstd"))

    # ------------------------------------------------------------------ manifest
    def finish(self, plan: Plan, config: dict, bandwidth: float | None, tool_version: str) -> dict:
        """Write dataset.json from what is committed; returns it."""
        import pyarrow.parquet as pq

        shards, encoded, seconds, error_rows = [], 0, 0.0, []
        for shard in range(plan.num_shards):
            data, errors = self.data_path(shard), self.errors_path(shard)
            durations = pq.read_table(data, columns=["duration"]).column(0).to_pylist() if data.exists() else []
            failed = pq.read_table(errors).to_pylist() if errors.exists() else []
            error_rows += failed
            encoded += len(durations)
            seconds += sum(durations)
            shards.append({"file": data.relative_to(self.root).as_posix() if data.exists() else None,
                           "rows": len(durations), "errors": len(failed)})
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
