"""The local engine: one process runs the model, worker processes decode and resample.

Shard by shard: the workers decode shard k + 1 while the model encodes shard k
(the exact batched encoder, items sorted by length); each finished shard is
committed atomically (see `shards`). Killed at any moment, a rerun of the same
command redoes only the shards that were not committed.
"""

from __future__ import annotations

import multiprocessing
import os

from .job import Job, encode_shard, read_item
from .sources import AudioReader, Columns, Item

DEFAULT_SHARD_SIZE = 256

_reader: AudioReader | None = None  # each worker process's own


def _start_worker(sample_rate: int) -> None:
    global _reader
    _reader = AudioReader(sample_rate)


def _read(item: Item):
    return read_item(_reader, item)


def default_workers() -> int:
    """Decoding workers: half the cores (the model takes the other half), at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def tokenize_dataset(
    source: str | os.PathLike,
    output: str | os.PathLike,
    tokenizer,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    bandwidth: float | None = None,
    overwrite: bool = False,
    columns: Columns = Columns(),
    progress: bool = True,
) -> dict:
    """Tokenize every item of `source` into Parquet shards under `output`; returns the dataset manifest.

    Resumes where a previous run of the same job stopped; refuses an output that
    holds another job unless `overwrite`. `columns` names the source's path, id
    and audio columns. The job's length rule is the tokenizer's (`config.length_rule`).
    Raises `SourceError` for a source that cannot be listed or holds no items,
    before anything is written.
    """
    job = Job.open(source, output, tokenizer, shard_size=shard_size, bandwidth=bandwidth, overwrite=overwrite,
                   columns=columns, progress=progress)
    pending = job.pending
    if pending:
        context = multiprocessing.get_context("spawn")  # workers never inherit the model or its threads
        with context.Pool(workers or default_workers(), initializer=_start_worker, initargs=(job.plan.sample_rate,)) as pool:
            def decode(shard: int):
                return pool.imap(_read, job.shard_items(shard), chunksize=4)

            upcoming = decode(pending[0])
            for position, shard in enumerate(pending):
                decoded = list(upcoming)
                if position + 1 < len(pending):
                    upcoming = decode(pending[position + 1])  # decoded while this shard encodes
                encoded, failed = encode_shard(tokenizer, job.shard_items(shard), decoded, bandwidth)
                job.commit(shard, encoded, failed)
    return job.finish()
