"""The Ray engine on a local Ray instance with two CPUs: the local engine's ids and codes."""

import pyarrow as pa
import pytest
import ray
import soundfile as sf
from helpers import fixture_dir, load_model
from test_dataset import make_corpus, read_output
from test_dataset import speech as speech  # a fixture, used by name

from higgs_tokenizer.dataset import OutputError, tokenize_dataset
from higgs_tokenizer.dataset.ray_engine import tokenize_dataset_ray
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_matches_the_local_engine(tmp_path, local_ray, speech, capfd):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, speech, 7, seed=5)
    (corpus / "broken.wav").write_text("not audio")
    sf.write(corpus / "empty.wav", speech[:0], 24000)
    tokenizer = HiggsAudioTokenizer(load_model("tiny-24k"), name=str(fixture_dir("tiny-24k")))
    local = tokenize_dataset(corpus, tmp_path / "local", tokenizer, shard_size=3, workers=1, progress=False)
    capfd.readouterr()
    distributed = tokenize_dataset_ray(corpus, tmp_path / "ray", str(fixture_dir("tiny-24k")), shard_size=3, progress=False)
    assert capfd.readouterr().err == ""  # without progress, nothing from Ray either

    assert distributed["counts"] == local["counts"] == {"items": 9, "encoded": 7, "errors": 2}
    assert distributed["shards"] == local["shards"] and distributed["model"] == local["model"]
    local_table, local_errors = read_output(tmp_path / "local")
    ray_table, ray_errors = read_output(tmp_path / "ray")
    assert ray_table.equals(local_table)
    assert ray_errors == local_errors and sorted(e["id"] for e in ray_errors) == ["broken.wav", "empty.wav"]

    # A job started by one engine finishes on the other: Ray redoes only the missing shard.
    (tmp_path / "local" / "data" / "part-00001.parquet").unlink()
    stamp = (tmp_path / "local" / "data" / "part-00000.parquet").stat().st_mtime_ns
    resumed = tokenize_dataset_ray(corpus, tmp_path / "local", str(fixture_dir("tiny-24k")), shard_size=3, progress=False)
    assert resumed["counts"] == local["counts"]
    assert (tmp_path / "local" / "data" / "part-00000.parquet").stat().st_mtime_ns == stamp
    assert pa.concat_tables([read_output(tmp_path / "local")[0]]).equals(local_table)
    with pytest.raises(OutputError, match="differs in: length_rule"):
        tokenize_dataset_ray(corpus, tmp_path / "local", str(fixture_dir("tiny-24k")), shard_size=3, length_rule="original", progress=False)
