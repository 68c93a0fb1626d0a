"""One tokenize-dataset job, whichever engine runs it.

An engine only schedules: it opens the job (`Job.open`: the source listed, the
plan recorded or checked, the shards still to do), reads each pending shard's
audio (`read_item`), encodes it (`encode_shard`), hands the results to
`Job.commit` and ends with `Job.finish`. What the output holds is decided here,
so both engines write the same output and a job started on one resumes on the other.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..version import __version__
from .columns import passthrough_arrays, passthrough_schema, schema_from_text, schema_to_text
from .shards import OutputDir, Plan
from .sources import AudioReader, Columns, Item, Listing, SourceError, list_items

OUTPUT_COLUMNS = ("id", "codes", "num_frames", "num_samples", "duration", "source")


@dataclass(frozen=True)
class EncodedItem:
    """An item that encoded: one row of its shard's data file."""

    item: Item
    codes: np.ndarray  # int16 [num_quantizers, num_frames]
    num_samples: int  # at the model's rate


@dataclass(frozen=True)
class FailedItem:
    """An item that did not: one row of its shard's errors file."""

    item: Item
    error: str


def failure_reason(err: Exception, item: Item) -> str:
    """`err` as the errors table words it: without the item's name, which its row holds."""
    text = str(err) or type(err).__name__
    for prefix in (f"{item.path}: ", f"{item.source}: "):
        text = text.removeprefix(prefix)
    return text


def read_item(reader: AudioReader, item: Item) -> np.ndarray | str:
    """The item's samples at the reader's rate, or why it cannot be used."""
    try:
        return reader.read(item)
    except Exception as err:  # any reason an item is unusable goes to the errors table
        return failure_reason(err, item)


def encode_shard(tokenizer, items: list[Item], decoded: list[np.ndarray | str], bandwidth: float | None):
    """(encoded items, failed items), each in item order, for `items` whose `read_item` results are `decoded`."""
    shortest = tokenizer.model.shortest_clip()
    outcomes: dict[int, EncodedItem | FailedItem] = {}
    usable = []
    for i, (item, audio) in enumerate(zip(items, decoded)):
        if isinstance(audio, str):
            outcomes[i] = FailedItem(item, audio)
        elif len(audio) < shortest:  # refused here, not by the encoder, so that it cannot break up its batch
            outcomes[i] = FailedItem(item, f"too short: {len(audio)} samples at {tokenizer.sample_rate} Hz (the shortest is {shortest})")
        else:
            usable.append(i)
    for i, result in zip(usable, tokenizer.try_encode_clips([decoded[i] for i in usable], bandwidth)):
        if isinstance(result, Exception):
            outcomes[i] = FailedItem(items[i], failure_reason(result, items[i]))
        else:
            outcomes[i] = EncodedItem(items[i], result.numpy().astype(np.int16), len(decoded[i]))
    ordered = [outcomes[i] for i in range(len(items))]
    return [o for o in ordered if isinstance(o, EncodedItem)], [o for o in ordered if isinstance(o, FailedItem)]


class Job:
    """A job's items, plan, output directory and progress; see `open`."""

    def __init__(self, items: list[Item], plan: Plan, out: OutputDir, pending: list[int], progress: "Progress",
                 config: dict, bandwidth: float | None):
        self.items, self.plan, self.out, self.pending, self.progress = items, plan, out, pending, progress
        self.config, self.bandwidth = config, bandwidth
        self.extra_schema = schema_from_text(plan.extra_schema)

    @classmethod
    def open(cls, source: str | os.PathLike, output: str | os.PathLike, tokenizer, *, shard_size: int,
             bandwidth: float | None, overwrite: bool, columns: Columns, progress: bool) -> "Job":
        """List `source`, record the plan in `output` (or check it against the one there) and
        find the shards still to do. Nothing is written before the source is known to hold items."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        source, output = Path(source), Path(output)
        listing = list_items(source, columns)
        if not listing.items:
            found = "no audio files below it" if listing.kind == "directory" else "no rows"
            raise SourceError(f"{source}: nothing to tokenize ({found})")
        plan = _plan(listing, source, tokenizer, shard_size, bandwidth)
        out = OutputDir(output)
        if overwrite:
            out.clear()
        out.remove_leftovers()
        plan = out.start(plan)
        pending, errors = [], 0
        for shard in range(plan.num_shards):
            failed = out.committed_errors(shard, [listing.items[i].id for i in plan.shard_range(shard)])
            if failed is None:
                pending.append(shard)
            else:
                errors += failed
        bar = Progress(plan, pending, errors, progress)
        return cls(listing.items, plan, out, pending, bar, tokenizer.config.to_dict(), bandwidth)

    def shard_items(self, shard: int) -> list[Item]:
        return [self.items[i] for i in self.plan.shard_range(shard)]

    def commit(self, shard: int, encoded: list[EncodedItem], failed: list[FailedItem]) -> None:
        """Write shard `shard`, which holds exactly `encoded` and `failed`."""
        import pyarrow as pa

        if sorted([e.item.id for e in encoded] + [f.item.id for f in failed]) != sorted(i.id for i in self.shard_items(shard)):
            raise RuntimeError(f"shard {shard}: the results given are not those of its items")  # an engine's bug
        errors = None
        if failed:
            errors = pa.table({"id": pa.array([f.item.id for f in failed], pa.string()),
                               "source": pa.array([f.item.source for f in failed], pa.string()),
                               "error": pa.array([f.error for f in failed], pa.string())})
        self.out.commit(shard, self._data_table(encoded) if encoded else None, errors)
        self.progress.shard_committed(shard, encoded, failed)

    def finish(self) -> dict:
        """Write the dataset manifest (dataset.json); returns it."""
        self.progress.close()
        return self.out.finish(self.plan, self.config, self.bandwidth, __version__)

    def _data_table(self, encoded: list[EncodedItem]):
        import pyarrow as pa

        columns = {
            "id": pa.array([e.item.id for e in encoded], pa.string()),
            "codes": pa.array([e.codes.tolist() for e in encoded], pa.list_(pa.list_(pa.int16()))),
            "num_frames": pa.array([e.codes.shape[1] for e in encoded], pa.int32()),
            "num_samples": pa.array([e.num_samples for e in encoded], pa.int64()),
            "duration": pa.array([e.num_samples / self.plan.sample_rate for e in encoded], pa.float64()),
            "source": pa.array([e.item.source for e in encoded], pa.string()),
        }
        columns.update(passthrough_arrays(self.extra_schema, [e.item.extra for e in encoded]))
        return pa.table(columns)


def _plan(listing: Listing, source: Path, tokenizer, shard_size: int, bandwidth: float | None) -> Plan:
    config = tokenizer.config
    extras = passthrough_schema([item.extra for item in listing.items], [item.id for item in listing.items], OUTPUT_COLUMNS)
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
        length_rule=config.length_rule,  # encoding under another rule gives other codes: part of the job
        extra_schema=schema_to_text(extras),
    )


class Progress:
    """The job's progress bar (items/s and ETA from tqdm; audio hours per hour and the errors
    so far beside them), starting from what is already committed; silent when disabled."""

    def __init__(self, plan: Plan, pending: list[int], errors: int, enabled: bool):
        self.plan, self.errors, self.started, self.audio_seconds = plan, errors, time.perf_counter(), 0.0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            done = plan.num_items - sum(len(plan.shard_range(k)) for k in pending)
            self.bar = tqdm(total=plan.num_items, initial=done, unit="item", desc="tokenize", dynamic_ncols=True)
            self._show()

    def shard_committed(self, shard: int, encoded: list[EncodedItem], failed: list[FailedItem]) -> None:
        self.audio_seconds += sum(e.num_samples for e in encoded) / self.plan.sample_rate
        self.errors += len(failed)
        if self.bar is not None:
            self._show()
            self.bar.update(len(self.plan.shard_range(shard)))

    def _show(self) -> None:
        hours_per_hour = self.audio_seconds / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{hours_per_hour:.1f} h audio/h, {self.errors} errors", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
