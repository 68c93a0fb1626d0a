"""What a corpus is made of: the items of a directory, a manifest or Parquet files.

Every item gets a deterministic id (the manifest's id column, else its path
relative to the source, else `file.parquet#row`), so a rerun, a resume and
another engine all name the same item the same way. Items are listed in a
fixed order; shards are cut from that order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import AUDIO_EXTENSIONS, load_audio, load_audio_bytes

MANIFEST_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


class SourceError(ValueError):
    """A source that cannot be listed: unreadable manifest, missing column, duplicate ids."""


@dataclass(frozen=True)
class Item:
    id: str
    source: str  # what the errors table and the output name: a path, or "file.parquet#row"
    path: str | None = None  # an audio file to read
    parquet: tuple[str, int, str] | None = None  # (file, row, audio column) holding bytes or a path
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # passed through to the output


@dataclass(frozen=True)
class Columns:
    """Which source columns hold what: the audio path (manifests), the id, the audio (Parquet)."""

    path: str = "path"
    id: str = "id"
    audio: str = "audio"


@dataclass
class Listing:
    items: list[Item]
    kind: str  # "directory", "jsonl", "csv", "tsv" or "parquet"

    def fingerprint(self) -> str:
        """sha256 of the ids and sources in order: a resume must see the same list."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(f"{item.id}\0{item.source}\n".encode())
        return digest.hexdigest()


def list_items(source: str | os.PathLike, columns: Columns = Columns()) -> Listing:
    """The items of `source`: a directory tree of audio files, a JSONL/CSV/TSV manifest
    with a path column, or Parquet files (one file, or a directory of them) with an audio column."""
    source = Path(source)
    path_column, id_column, audio_column = columns.path, columns.id, columns.audio
    if not source.exists():
        raise SourceError(f"{source}: no such file or directory")
    if source.is_dir():
        audio = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        parquet = sorted(source.rglob("*.parquet"))
        if audio or not parquet:
            listing = Listing([Item(id=p.relative_to(source).as_posix(), source=p.relative_to(source).as_posix(), path=str(p)) for p in audio], "directory")
        else:
            listing = _list_parquet(parquet, source, id_column, audio_column)
    elif source.suffix.lower() == ".parquet":
        listing = _list_parquet([source], source.parent, id_column, audio_column)
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        listing = _list_manifest(source, MANIFEST_SUFFIXES[source.suffix.lower()], path_column, id_column)
    else:
        raise SourceError(f"{source}: not a directory, a manifest (.jsonl, .csv, .tsv) or a .parquet file")
    _check_unique(listing.items, source)
    return listing


def _list_manifest(path: Path, kind: str, path_column: str, id_column: str) -> Listing:
    rows = []  # (where, row)
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet tools write) is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            if kind == "jsonl":
                for number, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise SourceError(f"{path}:{number}: each line must be a JSON object")
                        rows.append((f"{path}: line {number}", row))
            else:
                reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
                for number, row in enumerate(reader, 1):
                    if None in row:
                        raise SourceError(f"{path}: row {number}: more fields than the header names")
                    rows.append((f"{path}: row {number}", row))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}: line {err.lineno}: not JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SourceError(f"{path}: cannot read the manifest ({err})") from None
    items = []
    for where, row in rows:
        value = row.get(path_column)
        if path_column not in row:
            raise SourceError(f"{where}: no {path_column!r} column (set --path-column); columns: {sorted(row)}")
        if not isinstance(value, str) or not value:
            raise SourceError(f"{where}: the {path_column!r} value is not a path: {value!r} ({type(value).__name__})")
        item_id = row.get(id_column)
        item_id = str(item_id) if item_id not in (None, "") else value
        extra = {k: v for k, v in row.items() if k not in (path_column, id_column)}
        audio_path = Path(value) if Path(value).is_absolute() else path.parent / value
        items.append(Item(id=item_id, source=value, path=str(audio_path), extra=extra))
    return Listing(items, kind)


def _list_parquet(files: list[Path], root: Path, id_column: str, audio_column: str) -> Listing:
    import pyarrow.parquet as pq

    items = []
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as err:
            raise SourceError(f"{file}: not a readable Parquet file ({err})") from None
        names = parquet.schema_arrow.names
        if audio_column not in names:
            raise SourceError(f"{file}: no {audio_column!r} column (set --audio-column); columns: {names}")
        others = [n for n in names if n != audio_column]
        # Everything but the audio: ids and columns to pass through, without reading the audio bytes.
        table = parquet.read(columns=others) if others else None
        rows = table.to_pylist() if table is not None else [{}] * parquet.metadata.num_rows
        name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
        for index, row in enumerate(rows):
            item_id = row.get(id_column)
            item_id = str(item_id) if item_id not in (None, "") else f"{name}#{index}"
            extra = {k: v for k, v in row.items() if k != id_column}
            items.append(Item(id=item_id, source=f"{name}#{index}", parquet=(str(file), index, audio_column), extra=extra))
    return Listing(items, "parquet")


def _check_unique(items: list[Item], source: Path) -> None:
    seen, duplicates = set(), []
    for item in items:
        if item.id in seen:
            duplicates.append(item.id)
        seen.add(item.id)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        raise SourceError(f"{source}: {len(duplicates)} duplicate id(s), e.g. {shown}: ids must be unique")


class AudioReader:
    """Reads items' audio as mono float32 at one rate; keeps the last Parquet row group it read,
    since a shard's items come in order."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self._group: tuple[tuple[str, int], list] | None = None
        self._files: dict = {}

    def read(self, item: Item) -> np.ndarray:
        if item.path is not None:
            return load_audio(item.path, self.sample_rate)[0]
        file, row, column = item.parquet
        value = self._parquet_value(file, row, column)
        if isinstance(value, dict):  # the `datasets` Audio feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return load_audio_bytes(bytes(value), self.sample_rate, item.source)[0]
        if isinstance(value, str) and value:
            path = Path(value) if Path(value).is_absolute() else Path(file).parent / value
            return load_audio(path, self.sample_rate)[0]
        raise ValueError(f"{item.source}: the {column!r} value is neither audio bytes nor a path ({type(value).__name__})")

    def _parquet_value(self, file: str, row: int, column: str):
        import pyarrow.parquet as pq

        if file not in self._files:
            self._files[file] = pq.ParquetFile(file)
        parquet = self._files[file]
        start = 0
        for group in range(parquet.metadata.num_row_groups):
            count = parquet.metadata.row_group(group).num_rows
            if row < start + count:
                key = (file, group)
                if self._group is None or self._group[0] != key:
                    self._group = (key, parquet.read_row_group(group, columns=[column]).column(0).to_pylist())
                return self._group[1][row - start]
            start += count
        raise IndexError(f"{file}: no row {row}")
