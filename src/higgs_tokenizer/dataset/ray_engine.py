"""The Ray engine: the same job on Ray Data, for a cluster.

    read items → decode and resample (CPU tasks) → encode (an actor pool, GPUs per actor
    when asked) → the driver commits each shard as its last item arrives

Items, ids, shards, errors and the commit protocol are the local engine's
(`sources`, `shards`, `local.encode_shard`), so both engines produce the same
output, and a job started on one resumes on the other. The driver writes the
shards: `--output` must be a path the driver can write (on a cluster, shared
storage mounted on the head node, or any local disk of the driver's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .local import Progress, _reason, encode_shard, open_job
from .sources import AudioReader, Columns, Item

_ITEM_FIELDS = ("index", "id", "source", "path", "parquet_file", "parquet_row", "parquet_column")


def _item_row(index: int, item: Item) -> dict:
    file, row, column = item.parquet if item.parquet else ("", -1, "")
    return {"index": index, "id": item.id, "source": item.source, "path": item.path or "",
            "parquet_file": file, "parquet_row": row, "parquet_column": column}


def _item(row: dict) -> Item:
    parquet = (str(row["parquet_file"]), int(row["parquet_row"]), str(row["parquet_column"])) if row["parquet_file"] else None
    return Item(id=str(row["id"]), source=str(row["source"]), path=str(row["path"]) or None, parquet=parquet)


def _rows(batch: dict) -> list[dict]:
    return [{k: batch[k][i] for k in _ITEM_FIELDS} for i in range(len(batch["index"]))]


class DecodeAudio:
    """Ray Data stage: audio of each item as float32 bytes at the model's rate, or its error."""

    def __init__(self, sample_rate: int):
        self.reader = AudioReader(sample_rate)

    def __call__(self, batch: dict) -> dict:
        audio, errors = [], []
        for row in _rows(batch):
            item = _item(row)
            try:
                audio.append(self.reader.read(item).astype(np.float32).tobytes())
                errors.append("")
            except Exception as err:  # recorded in the errors table, as the local engine does
                audio.append(b"")
                errors.append(_reason(err, item))
        return {**{k: batch[k] for k in _ITEM_FIELDS}, "audio": np.array(audio, dtype=object), "error": np.array(errors, dtype=object)}


class EncodeActor:
    """Ray Data actor stage: one model per actor; codes as int16 bytes with their frame count."""

    def __init__(self, model: str, device: str | None, dtype: str | None, batch_size: int | None,
                 bandwidth: float | None, threads: int):
        import torch

        from ..tokenizer import HiggsAudioTokenizer

        torch.set_num_threads(threads)  # Ray starts workers with one thread each; the actor owns its CPUs

        self.tokenizer = HiggsAudioTokenizer.from_pretrained(model, device=device, dtype=dtype, batch_size=batch_size)
        self.bandwidth = bandwidth

    def __call__(self, batch: dict) -> dict:
        rows = _rows(batch)
        items = [_item(row) for row in rows]
        decoded = [
            (None, str(error)) if error else (np.frombuffer(audio, dtype=np.float32).copy(), None)
            for audio, error in zip(batch["audio"], batch["error"])
        ]
        encoded, failed = encode_shard(self.tokenizer, items, decoded, self.bandwidth)
        by_id = {r["id"]: r for r in encoded}
        reasons = {e["id"]: e["error"] for e in failed}
        codes, frames, samples, errors = [], [], [], []
        for item in items:
            result = by_id.get(item.id)
            codes.append(np.asarray(result["codes"], dtype=np.int16).tobytes() if result else b"")
            frames.append(int(np.shape(result["codes"])[1]) if result else 0)
            samples.append(int(result["num_samples"]) if result else 0)
            errors.append(reasons.get(item.id, ""))
        return {"index": batch["index"], "codes": np.array(codes, dtype=object), "frames": np.array(frames),
                "num_samples": np.array(samples), "error": np.array(errors, dtype=object)}


def tokenize_dataset_ray(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: str,
    *,
    address: str | None = None,
    num_actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    shard_size: int = 256,
    bandwidth: float | None = None,
    overwrite: bool = False,
    columns: Columns = Columns(),
    progress: bool = True,
    decode_batch: int = 8,
) -> dict:
    """`local.tokenize_dataset` on Ray: `address` names a running cluster ("auto", "ray://head:10001");
    None starts a local instance. `num_actors` models encode in parallel, each with
    `gpus_per_actor` GPUs (then on "cuda" unless `device` says otherwise)."""
    import ray
    from ray.data import ActorPoolStrategy

    from .. import __version__
    from ..tokenizer import HiggsAudioTokenizer

    source, output = Path(source), Path(output)
    # The driver loads the model once too: for its identity (the plan) and config (the manifest).
    tokenizer = HiggsAudioTokenizer.from_pretrained(model, dtype=dtype)
    items, out, plan, pending = open_job(source, output, tokenizer, shard_size, bandwidth, overwrite, columns)
    remaining = {k: len(plan.shard_range(k)) for k in pending}
    bar = Progress(plan, pending, progress)
    if pending:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        if device is None and gpus_per_actor > 0:
            device = "cuda"
        rows = [_item_row(i, items[i]) for k in pending for i in plan.shard_range(k)]
        dataset = (
            ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // decode_batch))
            .map_batches(DecodeAudio, fn_constructor_kwargs={"sample_rate": plan.sample_rate}, batch_size=decode_batch,
                         compute=ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1)))),
                         num_cpus=1)
            .map_batches(EncodeActor, fn_constructor_kwargs={"model": model, "device": device, "dtype": dtype,
                                                             "batch_size": batch_size, "bandwidth": bandwidth,
                                                             "threads": max(1, int(cpus_per_actor))},
                         batch_size=decode_batch, compute=ActorPoolStrategy(size=num_actors),
                         num_gpus=gpus_per_actor, num_cpus=cpus_per_actor)
        )
        results: dict[int, dict] = {k: {} for k in pending}
        for row in dataset.iter_rows():
            index = int(row["index"])
            shard = index // plan.shard_size
            results[shard][index] = row
            if len(results[shard]) == remaining[shard]:
                shard_rows, failed = [], []
                for i in plan.shard_range(shard):
                    got, item = results[shard][i], items[i]
                    if got["error"]:
                        failed.append({"id": item.id, "source": item.source, "error": str(got["error"])})
                    else:
                        codes = np.frombuffer(got["codes"], dtype=np.int16).reshape(plan.num_quantizers, int(got["frames"]))
                        shard_rows.append({"id": item.id, "codes": codes, "num_samples": int(got["num_samples"]),
                                           "source": item.source, "extra": item.extra})
                out.commit(shard, shard_rows, failed, plan)
                bar.shard_committed(shard, shard_rows, failed)
                del results[shard]
    bar.close()
    return out.finish(plan, tokenizer.config.to_dict(), bandwidth, __version__)
