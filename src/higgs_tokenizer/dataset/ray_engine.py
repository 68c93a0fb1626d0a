"""The Ray engine: the same job on Ray Data, for a cluster.

    read items → decode and resample (CPU actors) → encode (an actor pool, GPUs per actor
    when asked) → the driver commits each shard as its last item arrives

Items, reading, encoding and committing are the job's (`job`), so both engines
produce the same output, and a job started on one resumes on the other. The
driver writes the shards: `--output` must be a path the driver can write (on a
cluster, shared storage mounted on the head node, or any local disk of the
driver's machine).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

from .job import EncodedItem, FailedItem, Job, encode_shard, read_item
from .sources import AudioReader, Columns, Item

_ITEM_FIELDS = ("index", "id", "source", "path", "parquet_file", "parquet_row", "parquet_column")


def _item_row(index: int, item: Item) -> dict:
    file, row, column = item.parquet if item.parquet else ("", -1, "")
    return {"index": index, "id": item.id, "source": item.source, "path": item.path or "",
            "parquet_file": file, "parquet_row": row, "parquet_column": column}


def _item(row: dict) -> Item:
    parquet = (str(row["parquet_file"]), int(row["parquet_row"]), str(row["parquet_column"])) if row["parquet_file"] else None
    return Item(id=str(row["id"]), source=str(row["source"]), path=str(row["path"]) or None, parquet=parquet)


def _items(batch: dict) -> list[Item]:
    return [_item({k: batch[k][i] for k in _ITEM_FIELDS}) for i in range(len(batch["index"]))]


class DecodeAudio:
    """Ray Data stage: audio of each item as float32 bytes at the model's rate, or why it cannot be read."""

    def __init__(self, sample_rate: int):
        self.reader = AudioReader(sample_rate)

    def __call__(self, batch: dict) -> dict:
        audio, errors = [], []
        for item in _items(batch):
            decoded = read_item(self.reader, item)
            audio.append(b"" if isinstance(decoded, str) else decoded.astype(np.float32).tobytes())
            errors.append(decoded if isinstance(decoded, str) else "")
        return {**{k: batch[k] for k in _ITEM_FIELDS}, "audio": np.array(audio, dtype=object), "error": np.array(errors, dtype=object)}


class EncodeActor:
    """Ray Data actor stage: one model per actor; codes as int16 bytes with their frame count, or the error."""

    def __init__(self, model: str, device: str | None, precision: str | None, length_rule: str | None,
                 batch_size: int | None, batch_seconds: float | None, bandwidth: float | None, threads: int):
        import torch

        from ..tokenizer import HiggsAudioTokenizer

        torch.set_num_threads(threads)  # Ray starts workers with one thread each; the actor owns its CPUs
        self.tokenizer = HiggsAudioTokenizer.from_pretrained(model, device=device, precision=precision, length_rule=length_rule,
                                                             batch_size=batch_size, batch_seconds=batch_seconds)
        self.bandwidth = bandwidth

    def __call__(self, batch: dict) -> dict:
        items = _items(batch)
        decoded = [str(error) if error else np.frombuffer(audio, dtype=np.float32).copy()
                   for audio, error in zip(batch["audio"], batch["error"])]
        encoded, failed = encode_shard(self.tokenizer, items, decoded, self.bandwidth)
        codes = {e.item.id: e for e in encoded}
        reasons = {f.item.id: f.error for f in failed}
        got = [codes.get(item.id) for item in items]
        return {"index": batch["index"],
                "codes": np.array([e.codes.tobytes() if e else b"" for e in got], dtype=object),
                "frames": np.array([e.codes.shape[1] if e else 0 for e in got]),
                "num_samples": np.array([e.num_samples if e else 0 for e in got]),
                "error": np.array([reasons.get(item.id, "") for item in items], dtype=object)}


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
    precision: str | None = None,
    length_rule: str | None = None,
    batch_size: int | None = None,
    batch_seconds: float | None = None,
    shard_size: int = 256,
    bandwidth: float | None = None,
    overwrite: bool = False,
    columns: Columns = Columns(),
    progress: bool = True,
    decode_batch: int = 8,
) -> dict:
    """`local.tokenize_dataset` on Ray: `address` names a running cluster ("auto", "ray://head:10001");
    None starts a local instance. `num_actors` models encode in parallel, each with
    `gpus_per_actor` GPUs (then on "cuda" unless `device` says otherwise). `length_rule`
    is the model's (None: its checkpoint's). `progress=False` also keeps Ray itself quiet:
    what it prints is kept, and shown only if the job fails."""
    from ..tokenizer import HiggsAudioTokenizer

    # The driver loads the model too: for its identity (the plan) and config (the manifest).
    tokenizer = HiggsAudioTokenizer.from_pretrained(model, precision=precision, length_rule=length_rule)
    job = Job.open(source, output, tokenizer, shard_size=shard_size, bandwidth=bandwidth, overwrite=overwrite,
                   columns=columns, progress=progress)
    if job.pending:
        encoder = {"model": model, "device": "cuda" if device is None and gpus_per_actor > 0 else device,
                   "precision": precision,
                   "length_rule": length_rule, "batch_size": batch_size, "batch_seconds": batch_seconds,
                   "bandwidth": bandwidth,
                   "threads": max(1, int(cpus_per_actor))}
        with _ray_output_kept(quiet=not progress):
            _run(job, address, encoder, num_actors, gpus_per_actor, cpus_per_actor, decode_batch, quiet=not progress)
    return job.finish()


def _run(job: Job, address: str | None, encoder: dict, num_actors: int, gpus_per_actor: float,
         cpus_per_actor: float, decode_batch: int, quiet: bool) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.ERROR if quiet else logging.INFO)
    plan = job.plan
    rows = [_item_row(i, job.items[i]) for k in job.pending for i in plan.shard_range(k)]
    dataset = (
        ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // decode_batch))
        .map_batches(DecodeAudio, fn_constructor_kwargs={"sample_rate": plan.sample_rate}, batch_size=decode_batch,
                     compute=ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1)))),
                     num_cpus=1)
        .map_batches(EncodeActor, fn_constructor_kwargs=encoder, batch_size=decode_batch,
                     compute=ActorPoolStrategy(size=num_actors), num_gpus=gpus_per_actor, num_cpus=cpus_per_actor)
    )
    arrived: dict[int, dict[int, dict]] = {k: {} for k in job.pending}  # shard → item index → result row
    for row in dataset.iter_rows():
        index = int(row["index"])
        shard = index // plan.shard_size
        arrived[shard][index] = row
        if len(arrived[shard]) == len(plan.shard_range(shard)):
            results = arrived.pop(shard)
            encoded, failed = [], []
            for i in plan.shard_range(shard):
                got, item = results[i], job.items[i]
                if got["error"]:
                    failed.append(FailedItem(item, str(got["error"])))
                else:
                    codes = np.frombuffer(got["codes"], dtype=np.int16).reshape(plan.num_quantizers, int(got["frames"]))
                    encoded.append(EncodedItem(item, codes, int(got["num_samples"])))
            job.commit(shard, encoded, failed)


@contextmanager
def _ray_output_kept(quiet: bool):
    """While a quiet job runs, Ray's loggers show errors only, Ray Data's progress bars are off,
    and what Ray's C++ core writes to file descriptor 2 itself (beyond any logging setting)
    goes to a temporary file, shown if the job fails."""
    if not quiet:
        yield
        return
    import ray

    context = ray.data.DataContext.get_current()
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    saved = context.enable_progress_bars, [logger.level for logger in loggers]
    context.enable_progress_bars = False
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    stderr = os.dup(2)
    try:
        with tempfile.TemporaryFile() as kept:
            os.dup2(kept.fileno(), 2)
            try:
                yield
            except BaseException:
                sys.stderr.flush()
                os.dup2(stderr, 2)
                kept.seek(0)
                sys.stderr.write(kept.read().decode(errors="replace"))
                raise
            finally:
                sys.stderr.flush()
                os.dup2(stderr, 2)
    finally:
        os.close(stderr)
        context.enable_progress_bars = saved[0]
        for logger, level in zip(loggers, saved[1]):
            logger.setLevel(level)
