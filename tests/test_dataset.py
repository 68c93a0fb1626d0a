"""tokenize-dataset: sources, shards, errors, resuming, and kill -9 at random moments."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import audio_file, fixture_dir, load_model

from higgs_tokenizer.dataset import Columns, OutputError, SourceError, list_items, tokenize_dataset
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer

RATE = 24000


@pytest.fixture(scope="module")
def tokenizer():
    return HiggsAudioTokenizer(load_model("tiny-24k"), name="tiny-24k")


@pytest.fixture(scope="module")
def speech():
    data, rate = sf.read(audio_file("en_man.wav"), dtype="float32", always_2d=True)
    assert rate == RATE
    return data.mean(axis=1)


def make_corpus(root, speech, count, seed=0):
    """`count` clips of 0.2-1.2 s in nested folders, WAV and FLAC; returns their relative paths."""
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        n = int(rng.uniform(0.2, 1.2) * RATE)
        start = rng.randrange(0, len(speech) - n)
        rel = f"spk{i % 3}/clip{i:03d}.{'flac' if i % 4 == 0 else 'wav'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, speech[start : start + n], RATE)
        paths.append(rel)
    return paths


def read_output(output):
    """(the data files' rows as one table, or None where there is none; the errors' rows)."""
    data = [pq.read_table(p) for p in sorted((output / "data").glob("*.parquet"))]
    errors = [pq.read_table(p) for p in sorted((output / "errors").glob("*.parquet"))]
    return (pa.concat_tables(data) if data else None), (pa.concat_tables(errors).to_pylist() if errors else [])


def test_directory_corpus_with_bad_files(tmp_path, tokenizer, speech):
    corpus = tmp_path / "corpus"
    good = make_corpus(corpus, speech, 7)
    (corpus / "spk0" / "broken.wav").write_text("not audio")
    sf.write(corpus / "tiny.wav", speech[:50], RATE)  # padded to a hop, as `encode` pads it: one frame
    sf.write(corpus / "empty.wav", speech[:0], RATE)
    manifest = tokenize_dataset(corpus, tmp_path / "out", tokenizer, shard_size=3, workers=1, progress=False)

    assert manifest["counts"] == {"items": 10, "encoded": 8, "errors": 2}, manifest["errors"]
    assert len(manifest["shards"]) == 4 and manifest["model"]["config_sha256"] == tokenizer.identity.config_sha256
    table, errors = read_output(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(good + ["tiny.wav"])
    assert table.schema.field("codes").type == pa.list_(pa.list_(pa.int16()))
    assert {e["id"]: e["error"] for e in errors} == {
        "spk0/broken.wav": "not a readable audio file (Format not recognised.)",
        "empty.wav": "contains no audio samples",
    }
    for row in table.to_pylist():
        codes = np.array(row["codes"])
        expected = tokenizer.encode(str(corpus / row["id"]))
        assert np.array_equal(codes, expected.numpy()), row["id"]
        assert codes.shape == (8, row["num_frames"])
        assert row["duration"] == pytest.approx(row["num_samples"] / RATE)
        assert row["num_samples"] == sf.info(str(corpus / row["id"])).frames
    assert abs(manifest["total_hours"] * 3600 - sum(table.column("duration").to_pylist())) < 1e-6


def test_resume_redoes_only_missing_shards(tmp_path, tokenizer, speech):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, speech, 6)
    out = tmp_path / "out"
    first = tokenize_dataset(corpus, out, tokenizer, shard_size=2, workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
    (out / "data" / "part-00001.parquet").unlink()
    (out / "data" / ".part-00001.parquet.abc.tmp").write_bytes(b"half a file")  # a write cut short
    again = tokenize_dataset(corpus, out, tokenizer, shard_size=2, workers=1, progress=False)
    assert again["counts"] == first["counts"] and again["shards"] == first["shards"]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
    assert after["part-00000.parquet"] == stamps["part-00000.parquet"]
    assert after["part-00002.parquet"] == stamps["part-00002.parquet"]
    assert not list((out / "data").glob(".*.tmp"))
    # Another job in the same place is refused, unless asked to start again.
    with pytest.raises(OutputError, match="differs in: .*shard_size"):
        tokenize_dataset(corpus, out, tokenizer, shard_size=3, workers=1, progress=False)
    # The length rule is the tokenizer's; other codes, so another job.
    original = HiggsAudioTokenizer(load_model("tiny-24k", length_rule="original"), name="tiny-24k")
    with pytest.raises(OutputError, match="differs in: length_rule"):
        tokenize_dataset(corpus, out, original, shard_size=2, workers=1, progress=False)
    assert json.loads((out / "dataset.json").read_text())["codes"]["length_rule"] == "transformers"
    assert tokenize_dataset(corpus, out, tokenizer, shard_size=3, workers=1, overwrite=True, progress=False)["shard_size"] == 3


def test_manifests_pass_columns_through(tmp_path, tokenizer, speech):
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus, speech, 4)
    rows = [{"id": f"utt{i}", "path": p, "text": f"words {i}", "speaker": i % 2, "duration": 1.5} for i, p in enumerate(paths)]
    rows.append({"id": "gone", "path": "missing.wav", "text": "", "speaker": 0, "duration": 0.0})
    (corpus / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = tokenize_dataset(corpus / "train.jsonl", tmp_path / "out", tokenizer, shard_size=10, workers=1, progress=False)
    table, errors = read_output(tmp_path / "out")
    assert manifest["counts"]["errors"] == 1 and errors[0]["id"] == "gone" and "no such file" in errors[0]["error"]
    assert table.column_names == ["id", "codes", "num_frames", "num_samples", "duration", "source", "text", "speaker", "meta_duration"]
    assert table.schema.field("speaker").type == pa.int64()
    got = {r["id"]: r for r in table.to_pylist()}
    assert got["utt2"]["text"] == "words 2" and got["utt2"]["source"] == paths[2] and got["utt2"]["meta_duration"] == 1.5

    with open(corpus / "train.csv", "w") as f:
        f.write("file,transcript\n" + "".join(f"{p},line {i}\n" for i, p in enumerate(paths)))
    tokenize_dataset(corpus / "train.csv", tmp_path / "csv", tokenizer, workers=1, columns=Columns(path="file"), progress=False)
    table, _ = read_output(tmp_path / "csv")
    assert table.column("id").to_pylist() == paths and table.column("transcript").to_pylist()[1] == "line 1"

    (corpus / "dup.jsonl").write_text('{"id": "a", "path": "x.wav"}\n{"id": "a", "path": "y.wav"}\n')
    with pytest.raises(SourceError, match="1 duplicate id"):
        list_items(corpus / "dup.jsonl")
    with pytest.raises(SourceError, match="no 'wav' column"):
        list_items(corpus / "train.jsonl", Columns(path="wav"))


def test_parquet_sources(tmp_path, tokenizer, speech):
    corpus = tmp_path / "corpus"
    paths = make_corpus(corpus, speech, 4)
    audio = [(corpus / p).read_bytes() for p in paths]
    pq.write_table(pa.table({"audio": audio[:2], "text": ["a", "b"]}), corpus / "bytes.parquet", row_group_size=1)
    # The `datasets` Audio feature's layout, and plain paths.
    struct = pa.array([{"bytes": audio[2], "path": None}, {"bytes": None, "path": paths[3]}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"audio": struct, "text": ["c", "d"]}), corpus / "structs.parquet")
    pq.write_table(pa.table({"audio": [b"garbage"], "text": ["e"]}), corpus / "z-bad.parquet")
    parquet_dir = tmp_path / "pq"
    parquet_dir.mkdir()
    for name in ("bytes.parquet", "structs.parquet", "z-bad.parquet"):
        (corpus / name).rename(parquet_dir / name)
    (parquet_dir / paths[3]).parent.mkdir(parents=True, exist_ok=True)
    (parquet_dir / paths[3]).write_bytes(audio[3])
    # A directory holding audio files is an audio corpus; list the Parquet files by name.
    listing = list_items(parquet_dir / "structs.parquet")
    assert [i.id for i in listing.items] == ["structs.parquet#0", "structs.parquet#1"]
    for name in ("bytes", "structs"):
        tokenize_dataset(parquet_dir / f"{name}.parquet", tmp_path / name, tokenizer, workers=1, progress=False)
    table = pa.concat_tables([read_output(tmp_path / name)[0] for name in ("bytes", "structs")])
    assert table.column("text").to_pylist() == ["a", "b", "c", "d"]
    for row, path in zip(table.to_pylist(), paths):
        assert np.array_equal(np.array(row["codes"]), tokenizer.encode(str(corpus / path)).numpy())
    manifest = tokenize_dataset(parquet_dir / "z-bad.parquet", tmp_path / "bad", tokenizer, workers=1, progress=False)
    assert manifest["counts"] == {"items": 1, "encoded": 0, "errors": 1}
    assert manifest["shards"] == [{"file": None, "rows": 0, "errors": 1}]
    data, errors = read_output(tmp_path / "bad")
    assert data is None and "not a readable audio file" in errors[0]["error"]


def test_output_reads_with_datasets(tmp_path, tokenizer, speech):
    """A shard whose items all failed has no data file (a 0-row one stops `datasets`),
    and counts as done on a rerun: its errors file commits it."""
    import datasets

    corpus = tmp_path / "corpus"
    make_corpus(corpus, speech, 2)
    (corpus / "zz-junk.wav").write_text("not audio")
    out = tmp_path / "out"
    first = tokenize_dataset(corpus, out, tokenizer, shard_size=1, workers=1, progress=False)
    assert first["shards"][2] == {"file": None, "rows": 0, "errors": 1}
    assert sorted(p.name for p in (out / "data").glob("*")) == ["part-00000.parquet", "part-00001.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert len(ds) == 2 and np.array(ds[0]["codes"]).shape == (8, ds[0]["num_frames"])

    files = sorted((out / "data").glob("*")) + sorted((out / "errors").glob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert tokenize_dataset(corpus, out, tokenizer, shard_size=1, workers=1, progress=False)["shards"] == first["shards"]
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing redone
    (out / "errors" / "part-00002.parquet").unlink()
    assert tokenize_dataset(corpus, out, tokenizer, shard_size=1, workers=1, progress=False)["shards"] == first["shards"]
    assert {p: p.stat().st_mtime_ns for p in files[:2]} == {p: stamps[p] for p in files[:2]}


def run_cli(corpus, output, *extra):
    cmd = [sys.executable, "-m", "higgs_tokenizer.cli", "tokenize-dataset", str(corpus), "--output", str(output),
           "--model", str(fixture_dir("tiny-24k")), "--shard-size", "2", "--workers", "1", "-q", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def test_kill_minus_nine_at_random_moments(tmp_path, speech):
    """Killed several times mid-run, the job still ends with every item exactly once, as an uninterrupted run."""
    corpus = tmp_path / "corpus"
    make_corpus(corpus, speech, 30, seed=3)
    (corpus / "bad.wav").write_text("not audio")
    reference = run_cli(corpus, tmp_path / "whole")
    assert reference.wait(300) == 0, reference.stderr.read().decode()

    def committed():
        return len(list((tmp_path / "killed" / "data").glob("*.parquet")))

    rng = random.Random(1234)
    kills = []
    for attempt in range(4):
        proc = run_cli(corpus, tmp_path / "killed")
        if attempt == 0:
            time.sleep(rng.uniform(0.2, 1.5))  # while it starts: nothing committed yet
        else:
            # Once this run has committed a shard, at a random moment after: mid-shard, mid-write.
            before, deadline = committed(), time.time() + 120
            while proc.poll() is None and committed() <= before and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: its decoding workers too
            kills.append(committed())
        proc.wait(60)
    # Every run was really cut short, at least three of them before the last of the 16 shards.
    assert len(kills) == 4 and sum(k < 16 for k in kills) >= 3, kills
    final = run_cli(corpus, tmp_path / "killed")
    assert final.wait(300) == 0, final.stderr.read().decode()

    whole, whole_errors = read_output(tmp_path / "whole")
    resumed, resumed_errors = read_output(tmp_path / "killed")
    ids = resumed.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 30
    by_id = {r["id"]: r for r in whole.to_pylist()}
    for row in resumed.to_pylist():
        assert row == by_id[row["id"]], row["id"]
    assert resumed_errors == whole_errors and [e["id"] for e in resumed_errors] == ["bad.wav"]
    manifest = json.loads((tmp_path / "killed" / "dataset.json").read_text())
    assert manifest["counts"] == {"items": 31, "encoded": 30, "errors": 1}
