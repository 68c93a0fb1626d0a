"""The local engine: one process runs the model, worker processes decode and resample.

Shard by shard: the workers decode shard k + 1 while the model encodes shard k
(the exact batched encoder, items sorted by length); each finished shard is
committed atomically (see `shards`). Killed at any moment, a rerun of the same
command redoes only the shards that were not committed.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .shards import OutputDir, OutputError, Plan, encode_schema, extra_schema
from .sources import AudioReader, Columns, Item, Listing, list_items

DEFAULT_SHARD_SIZE = 256

_reader: AudioReader | None = None


def _start_worker(sample_rate: int) -> None:
    global _reader
    _reader = AudioReader(sample_rate)


def _read(item: Item):
    """(samples, None) or (None, reason), in a worker process."""
    try:
        return _reader.read(item), None
    except Exception as err:  # any reason an item is unusable goes to the errors table
        return None, _reason(err, item)


def _reason(err: Exception, item: Item) -> str:
    text = str(err) or type(err).__name__
    for prefix in (f"{item.path}: ", f"{item.source}: "):
        text = text.removeprefix(prefix)
    return text


def default_workers() -> int:
    """Decoding workers: half the cores (the model takes the other half), at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def make_plan(listing: Listing, source: Path, tokenizer, shard_size: int, bandwidth: float | None) -> Plan:
    config = tokenizer.config
    return Plan(
        source=str(source.resolve()),
        kind=listing.kind,
        num_items=len(listing.items),
        fingerprint=listing.fingerprint(),
        shard_size=shard_size,
        model=asdict(tokenizer.identity),
        num_quantizers=config.num_quantizers_for_bandwidth(bandwidth),
        sample_rate=config.sample_rate,
        frame_rate=config.frame_rate,
        hop_length=config.hop_length,
        codebook_size=config.codebook_size,
        length_rule=config.length_rule,
        extra_schema=encode_schema(extra_schema([item.extra for item in listing.items])),
    )


def prepare_output(output: Path, overwrite: bool) -> OutputDir:
    out = OutputDir(output)
    if overwrite and output.exists():
        if any(output.iterdir()) and not (output / "plan.json").exists():
            raise OutputError(f"{output} is not a tokenize-dataset output; not deleting it")
        shutil.rmtree(output)
    for folder in (output / "data", output / "errors"):
        for leftover in folder.glob(".*.tmp") if folder.exists() else ():
            leftover.unlink()  # a write cut short by a kill; its shard is simply not committed
    return out


def encode_shard(tokenizer, items: list[Item], decoded: list, bandwidth: float | None) -> tuple[list[dict], list[dict]]:
    """Rows for the items that encode and error records for those that do not, in item order."""
    shortest = tokenizer.model.shortest_clip()
    codes: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    good = []
    for i, (samples, reason) in enumerate(decoded):
        if reason is not None:
            errors[i] = reason
        elif len(samples) < shortest:
            errors[i] = f"too short: {len(samples)} samples at {tokenizer.sample_rate} Hz (the shortest is {shortest})"
        else:
            good.append(i)
    try:
        for i, c in zip(good, tokenizer.encode_clips([decoded[i][0] for i in good], bandwidth)):
            codes[i] = c.numpy()
    except Exception:
        # One bad clip must not sink its batch: find it by encoding one at a time.
        for i in good:
            try:
                codes[i] = tokenizer.encode_clips([decoded[i][0]], bandwidth)[0].numpy()
            except Exception as err:
                errors[i] = _reason(err, items[i])
    rows = [
        {"id": item.id, "codes": codes[i], "num_samples": len(decoded[i][0]), "source": item.source, "extra": item.extra}
        for i, item in enumerate(items)
        if i in codes
    ]
    failed = [{"id": items[i].id, "source": items[i].source, "error": errors[i]} for i in sorted(errors)]
    return rows, failed


def open_job(source: Path, output: Path, tokenizer, shard_size: int, bandwidth, overwrite: bool, columns: Columns):
    """List the source, record or check the plan, and find the shards still to do:
    (items, output, plan, pending shards). Shared by both engines."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    listing = list_items(source, columns)
    out = prepare_output(output, overwrite)
    plan = out.start(make_plan(listing, source, tokenizer, shard_size, bandwidth))
    items = listing.items
    pending = [k for k in range(plan.num_shards) if not out.committed(k, [items[i].id for i in plan.shard_range(k)])]
    return items, out, plan, pending


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
    and audio columns.
    """
    from .. import __version__

    source, output = Path(source), Path(output)
    items, out, plan, pending = open_job(source, output, tokenizer, shard_size, bandwidth, overwrite, columns)
    bar = Progress(plan, pending, progress)
    context = multiprocessing.get_context("spawn")  # workers never inherit the model or its threads
    with context.Pool(workers or default_workers(), initializer=_start_worker, initargs=(plan.sample_rate,)) as pool:
        def submit(shard: int):
            return pool.imap(_read, [items[i] for i in plan.shard_range(shard)], chunksize=4)

        upcoming = submit(pending[0]) if pending else None
        for position, shard in enumerate(pending):
            decoded = list(upcoming)
            if position + 1 < len(pending):
                upcoming = submit(pending[position + 1])  # decoded while this shard encodes
            shard_items = [items[i] for i in plan.shard_range(shard)]
            rows, failed = encode_shard(tokenizer, shard_items, decoded, bandwidth)
            out.commit(shard, rows, failed, plan)
            bar.shard_committed(shard, rows, failed)
    bar.close()
    return out.finish(plan, tokenizer.config.to_dict(), bandwidth, __version__)


class Progress:
    """The job's progress bar (items/s and ETA from tqdm, audio hours per hour beside them),
    starting from the items already committed; silent when disabled."""

    def __init__(self, plan: Plan, pending: list[int], enabled: bool):
        self.plan, self.started, self.audio_seconds = plan, time.perf_counter(), 0.0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            done = plan.num_items - sum(len(plan.shard_range(k)) for k in pending)
            self.bar = tqdm(total=plan.num_items, initial=done, unit="item", desc="tokenize", dynamic_ncols=True)

    def shard_committed(self, shard: int, rows: list[dict], failed: list[dict]) -> None:
        self.audio_seconds += sum(r["num_samples"] for r in rows) / self.plan.sample_rate
        if self.bar is not None:
            hours_per_hour = self.audio_seconds / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{hours_per_hour:.1f} h audio/h, {len(failed)} errors in shard {shard}", refresh=False)
            self.bar.update(len(self.plan.shard_range(shard)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
