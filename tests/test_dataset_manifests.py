"""tokenize-dataset: what a manifest's columns become, manifests that cannot be used, progress."""

import json

import pyarrow as pa
import pytest
import soundfile as sf
from helpers import load_model
from test_dataset import read_output
from test_dataset import speech as speech  # a fixture, used by name

from higgs_tokenizer.dataset import SourceError, list_items, tokenize_dataset
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return HiggsAudioTokenizer(load_model("tiny-24k"), name="tiny-24k")


def write_manifest(folder, speech, rows):
    """A JSONL manifest of `rows`, each naming the one short clip `clip.wav`."""
    folder.mkdir(exist_ok=True)
    sf.write(folder / "clip.wav", speech[:2400], 24000)
    (folder / "m.jsonl").write_text("".join(json.dumps({"path": "clip.wav", **row}) + "\n" for row in rows))
    return folder / "m.jsonl"


def test_every_manifest_column_reaches_the_output(tmp_path, tokenizer, speech):
    manifest = write_manifest(tmp_path / "c", speech, [
        {"id": "a", "duration": 1.5},
        {"id": "b", "speaker": 3, "tags": ["x", "y"], "info": {"age": 30}, "meta_duration": "long", "source": "web"},
    ])
    tokenize_dataset(manifest, tmp_path / "out", tokenizer, workers=1, progress=False)
    table, _ = read_output(tmp_path / "out")
    rows = {r["id"]: r for r in table.to_pylist()}
    # Columns missing from the first row (lists and structs too) are null where missing.
    assert table.schema.field("speaker").type == pa.int64()
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert rows["a"]["speaker"] is None and rows["a"]["tags"] is None and rows["a"]["info"] is None
    assert rows["b"]["speaker"] == 3 and rows["b"]["tags"] == ["x", "y"] and rows["b"]["info"] == {"age": 30}
    # A column named like an output column is renamed to a name no other column has.
    assert rows["a"]["meta_meta_duration"] == 1.5 and rows["b"]["meta_duration"] == "long"
    assert rows["b"]["meta_source"] == "web" and rows["b"]["source"] == "clip.wav"


def test_a_column_of_mixed_types_is_kept_as_text(tmp_path, tokenizer, speech):
    manifest = write_manifest(tmp_path / "c", speech, [{"id": "a", "score": 1}, {"id": "b", "score": "high"},
                                                       {"id": "c", "score": [1, 2]}, {"id": "d"}])
    with pytest.warns(UserWarning, match=r"column 'score' .*int \(first in item 'a'\), str \(first in item 'b'\), list"):
        tokenize_dataset(manifest, tmp_path / "out", tokenizer, workers=1, progress=False)
    table, _ = read_output(tmp_path / "out")
    assert table.schema.field("score").type == pa.string()
    assert table.column("score").to_pylist() == ["1", "high", "[1, 2]", None]


def test_manifests_with_a_byte_order_mark(tmp_path):
    (tmp_path / "m.csv").write_bytes("path,text\na.wav,hello\n".encode("utf-8-sig"))
    (tmp_path / "m.jsonl").write_bytes('{"path": "a.wav", "text": "hello"}\n'.encode("utf-8-sig"))
    for name in ("m.csv", "m.jsonl"):
        items = list_items(tmp_path / name).items
        assert [(i.id, i.extra) for i in items] == [("a.wav", {"text": "hello"})], name


def test_a_path_that_is_not_a_string_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n\n{"path": 5}\n')
    with pytest.raises(SourceError, match=r"line 3: the 'path' value is not a path: 5 \(int\)"):
        list_items(tmp_path / "m.jsonl")
    (tmp_path / "n.jsonl").write_text('{"wav": "a.wav"}\n')
    with pytest.raises(SourceError, match="line 1: no 'path' column"):
        list_items(tmp_path / "n.jsonl")


def test_an_empty_corpus_is_refused_before_anything_is_written(tmp_path, tokenizer):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    (tmp_path / "empty.jsonl").write_text("\n")
    for source, found in ((tmp_path / "empty", "no audio files"), (tmp_path / "empty.jsonl", "no rows")):
        with pytest.raises(SourceError, match=f"nothing to tokenize \\({found}"):
            tokenize_dataset(source, tmp_path / "out", tokenizer, workers=1, progress=False)
        assert not (tmp_path / "out").exists()


def test_progress_shows_the_errors_of_every_shard(capsys):
    from higgs_tokenizer.dataset.job import FailedItem, Progress
    from higgs_tokenizer.dataset.shards import Plan
    from higgs_tokenizer.dataset.sources import Item

    plan = Plan(source="corpus", kind="directory", num_items=6, fingerprint="", shard_size=2, model={}, num_quantizers=8,
                sample_rate=24000, frame_rate=25, hop_length=960, codebook_size=1024, length_rule="transformers")
    bar = Progress(plan, pending=[1, 2], errors=1, enabled=True)  # shard 0, committed before, had one
    bar.shard_committed(1, [], [FailedItem(Item("a", "a"), "bad"), FailedItem(Item("b", "b"), "bad")])
    bar.shard_committed(2, [], [])
    bar.close()
    assert "3 errors" in capsys.readouterr().err.splitlines()[-1].split("\r")[-1]
