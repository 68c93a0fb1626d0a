"""Checkpoint formats: transformers (plain, weight-normed, sharded), Boson AI's original,
the Hub cache, round trips, and clear errors for anything that does not fit."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FIXTURE_NAMES, SHARED, fixture_dir, load_cases, load_extra, load_model
from safetensors.torch import load_file, save_file

from higgs_tokenizer import (
    CheckpointError,
    HiggsAudioV2TokenizerConfig,
    HiggsAudioV2TokenizerFeatureExtractor,
    HiggsAudioV2TokenizerModel,
    convert_original_to_transformers,
    save_original,
)
from higgs_tokenizer.checkpoint import original_state_dict, transformers_state_dict

REFERENCE = SHARED / "reference"
ORIGINAL_FULL_CONFIG = {
    "n_filters": 32, "D": 256, "codebook_dim": 64, "target_bandwidths": [0.5, 1, 1.5, 2, 4],
    "ratios": [8, 5, 4, 2, 3], "sample_rate": 24000, "bins": 1024, "n_q": 8, "semantic_techer": "hubert_base_general",
}


def assert_same_weights(a: HiggsAudioV2TokenizerModel, b: HiggsAudioV2TokenizerModel, exact: bool = True):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert torch.allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6), key


def copy_checkpoint(name: str, directory: Path, weights: str = "model.safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_bytes((fixture_dir(name) / "config.json").read_bytes())
    (directory / "model.safetensors").write_bytes((fixture_dir(name) / weights).read_bytes())
    return directory


def listing(filename: str) -> dict:
    out = {}
    for line in (REFERENCE / filename).read_text().splitlines():
        key, rest = line.split(" ", 1)
        shape = rest[rest.index("(") + 1 : rest.index(")")]
        out[key] = tuple(int(x) for x in shape.split(",") if x.strip())
    return out


@pytest.fixture(scope="module")
def full_size_meta_model():
    config = HiggsAudioV2TokenizerConfig.from_json_file(REFERENCE / "transformers_full_config.json")
    with torch.device("meta"):
        return HiggsAudioV2TokenizerModel(config)


# ----------------------------------------------------------------- key layouts at full size
def test_transformers_layout_matches_the_full_size_listing(full_size_meta_model):
    ours = {k: tuple(v.shape) for k, v in transformers_state_dict(full_size_meta_model).items()}
    assert ours == listing("transformers_checkpoint_keys.txt")


def test_original_mapping_covers_every_key_of_the_full_size_listing(full_size_meta_model):
    ours = {k: tuple(v.shape) for k, v in original_state_dict(full_size_meta_model).items()}
    theirs = listing("original_checkpoint_keys.txt")
    # masked_spec_embed is HuBERT's training-time mask vector: ignored on load, as by the reference.
    assert set(theirs) - set(ours) == {"semantic_model.masked_spec_embed"}
    assert ours == {k: v for k, v in theirs.items() if k != "semantic_model.masked_spec_embed"}


def test_original_config_describes_the_released_model():
    full = HiggsAudioV2TokenizerConfig.from_json_file(REFERENCE / "transformers_full_config.json")
    converted = HiggsAudioV2TokenizerConfig.from_original_dict(ORIGINAL_FULL_CONFIG)
    assert converted.num_quantizers == full.num_quantizers == 8
    assert list(converted.target_bandwidths) == [0.5, 1, 1.5, 2]  # 4 kbps would need 16 quantizers
    for attr in ("hop_length", "frame_rate", "hidden_size", "codebook_dim", "codebook_size", "semantic_downsample_factor"):
        assert getattr(converted, attr) == getattr(full, attr), attr
    for key in ("encoder_hidden_size", "decoder_hidden_size", "hidden_size", "downsampling_ratios", "upsampling_ratios"):
        assert getattr(converted.acoustic_model_config, key) == getattr(full.acoustic_model_config, key), key
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim"):
        assert getattr(converted.semantic_model_config, key) == getattr(full.semantic_model_config, key), key


def test_released_model_writes_the_released_original_config():
    full = HiggsAudioV2TokenizerConfig.from_json_file(REFERENCE / "transformers_full_config.json")
    # No size extension block: HuBERT-base and the 64/1024 widths are what the original implies.
    assert full.to_original_dict() == {**ORIGINAL_FULL_CONFIG, "target_bandwidths": [0.5, 1, 1.5, 2]}


# ----------------------------------------------------------------- loading variants
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_weight_norm_variant_loads_to_the_same_model(name, tmp_path):
    wn = HiggsAudioV2TokenizerModel.from_pretrained(copy_checkpoint(name, tmp_path, "model-weight-norm.safetensors"))
    assert_same_weights(wn, load_model(name), exact=False)


def test_weight_g_weight_v_spelling(tmp_path):
    state = load_file(fixture_dir("tiny-24k") / "model-weight-norm.safetensors")
    renamed = {
        k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in state.items()
    }
    directory = copy_checkpoint("tiny-24k", tmp_path)
    save_file(renamed, directory / "model.safetensors")
    assert_same_weights(HiggsAudioV2TokenizerModel.from_pretrained(directory), load_model("tiny-24k"), exact=False)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_original_format_loads_to_its_transformers_twin(name, tmp_path):
    model = load_model(name)
    save_original(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.pth"]
    written = torch.load(tmp_path / "model.pth", weights_only=True)
    assert any(k.endswith(".weight_g") for k in written) and "fc_prior.weight" in written
    original = HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    assert_same_weights(original, model)
    cases = load_cases(name)
    x = cases["input_24000"] if "input_24000" in cases else cases["input_16000"]
    with torch.inference_mode():
        assert torch.equal(original.encode(x[None, None]).audio_codes, model.encode(x[None, None]).audio_codes)
    fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(tmp_path)  # derived: no preprocessor file
    assert (fe.sampling_rate, fe.hop_length) == (model.config.sample_rate, model.config.hop_length)


def test_original_checkpoint_with_masked_spec_embed_and_released_config(tmp_path):
    """The official layout: no size extension block, plus the unused masked_spec_embed."""
    model = load_model("tiny-24k")
    save_original(model, tmp_path)
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    state["semantic_model.masked_spec_embed"] = torch.zeros(model.config.semantic_hidden_size)
    torch.save(state, tmp_path / "model.pth")
    assert_same_weights(HiggsAudioV2TokenizerModel.from_pretrained(tmp_path), model)
    # Without the size block the config means the released widths, and the tiny weights no longer fit.
    config = json.loads((tmp_path / "config.json").read_text())
    del config["higgs_tokenizer_sizes"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)


def test_convert_original_to_transformers(tmp_path):
    model = load_model("tiny-16k")
    save_original(model, tmp_path / "orig")
    convert_original_to_transformers(tmp_path / "orig", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(tmp_path / "hf"))
    assert_same_weights(HiggsAudioV2TokenizerModel.from_pretrained(tmp_path / "hf"), model)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_save_pretrained_round_trips(name, tmp_path):
    model = load_model(name)
    model.save_pretrained(tmp_path)
    again = HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    assert_same_weights(again, model)
    assert again.config.to_dict() == model.config.to_dict()
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == load_file(fixture_dir(name) / "model.safetensors").keys()
    fe = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert fe == {**json.loads((fixture_dir(name) / "preprocessor_config.json").read_text()), "padding_value": 0.0}


def test_sharded_checkpoint(tmp_path):
    state = load_file(fixture_dir("tiny-24k") / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for filename, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, tmp_path / filename)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_bytes((fixture_dir("tiny-24k") / "config.json").read_bytes())
    assert_same_weights(HiggsAudioV2TokenizerModel.from_pretrained(tmp_path), load_model("tiny-24k"))
    index["weight_map"][keys[0]] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="invalid shard file name"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float64, "float64"])
def test_dtype_argument(dtype):
    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"), dtype=dtype)
    assert model.dtype == torch.float64 and all(p.dtype == torch.float64 for p in model.parameters())
    cases = load_cases("tiny-24k")
    with torch.inference_mode():
        # The reference in float64 agrees with the fixture on every code (fixtures README).
        codes = model.encode(cases["input_72000"][None, None].double()).audio_codes[0]
    assert torch.equal(codes, cases["codes_72000"])


# bfloat16 CPU kernels round differently on each instruction set (AVX-512 BF16, AVX2, ...),
# so bf16 codes made on one machine hold only on machines like it. The reference's bf16
# codes in tests/data were made with the kernels pinned to AVX2, which every x86-64 CI
# machine has; ours are computed under the same pin, in a child process (the pin is read
# when torch starts). Must equal scripts/make_extra_fixtures.py's PINNED_CPU_ENV.
PINNED_CPU_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

PINNED_BF16_ENCODE = """
import sys, torch
from safetensors.torch import load_file, save_file
from higgs_tokenizer import HiggsAudioV2TokenizerModel
torch.set_num_threads(1)
capability = torch.backends.cpu.get_cpu_capability()
assert capability == "AVX2", f"this CPU cannot run the AVX2-pinned kernels (capability {capability})"
directory, out, lengths = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]
model = HiggsAudioV2TokenizerModel.from_pretrained(directory, dtype=torch.bfloat16)
cases = load_file(f"{directory}/cases.safetensors")
with torch.inference_mode():
    save_file({str(n): model.encode(cases[f"input_{n}"][None, None].bfloat16()).audio_codes[0] for n in lengths}, out)
"""


def test_bfloat16_matches_the_reference_in_bfloat16(fixture_name, tmp_path):
    """With the same kernels, bf16 codes equal the reference's bit for bit: the weight norm is
    folded in the target dtype, as the reference computes it in bf16 (folding in float32,
    an earlier behaviour, changed about 3 % of them)."""
    extra = load_extra()
    prefix = f"{fixture_name}/bf16_codes_"
    lengths = sorted(int(k[len(prefix):]) for k in extra if k.startswith(prefix))
    assert len(lengths) == 3
    out = tmp_path / "codes.safetensors"
    env = {**os.environ, **PINNED_CPU_ENV}
    command = [sys.executable, "-c", PINNED_BF16_ENCODE, str(fixture_dir(fixture_name)), str(out), *map(str, lengths)]
    subprocess.run(command, env=env, check=True, timeout=300)
    codes = load_file(out)
    for n in lengths:
        assert torch.equal(codes[str(n)], extra[f"{prefix}{n}"]), n


def test_unknown_arguments_and_torch_dtype_alias():
    with pytest.raises(TypeError, match="unexpected argument.*'not_an_option'"):
        HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-16k"), not_an_option=1)
    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-16k"), torch_dtype="float64")
    assert model.dtype == torch.float64


def test_config_and_feature_extractor_need_no_weights(tmp_path):
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((fixture_dir("tiny-24k") / name).read_bytes())
    assert HiggsAudioV2TokenizerConfig.from_pretrained(tmp_path).hop_length == 960
    assert HiggsAudioV2TokenizerConfig.from_pretrained(tmp_path, length_rule="original").length_rule == "original"
    assert HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(tmp_path).hop_length == 960


def test_legacy_torch_save_format_is_read(tmp_path):
    model = load_model("tiny-16k")
    save_original(model, tmp_path)
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    torch.save(state, tmp_path / "model.pth", _use_new_zipfile_serialization=False)
    assert_same_weights(HiggsAudioV2TokenizerModel.from_pretrained(tmp_path), model)


def test_device_map_cpu():
    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-16k"), device_map="cpu")
    assert model.device == torch.device("cpu")
    with pytest.raises(ValueError, match="floating-point"):
        HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-16k"), dtype=torch.int32)


# ----------------------------------------------------------------- errors
def _edit_state(tmp_path, edit):
    directory = copy_checkpoint("tiny-24k", tmp_path)
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, directory / "model.safetensors")
    return directory


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    def edit(state):
        del state["fc.bias"]
        state["fc.extra"] = torch.zeros(3)
        state["fc2.weight"] = torch.zeros(2, 2)
        state["semantic_model.masked_spec_embed"] = torch.zeros(32)  # ignored, like the reference

    with pytest.raises(CheckpointError) as err:
        HiggsAudioV2TokenizerModel.from_pretrained(_edit_state(tmp_path, edit))
    message = str(err.value)
    assert "1 missing keys" in message and "fc.bias" in message
    assert "1 unexpected keys" in message and "fc.extra" in message
    assert "wrong shapes" in message and "fc2.weight: (2, 2)" in message
    assert "masked_spec_embed" not in message


@pytest.mark.parametrize("field, value, what", [("target_bandwidths", [1e9], "4000000000 quantizers"),
                                                 ("num_hidden_layers", 10**8, "100000000 HuBERT layers")])
def test_a_config_asking_for_more_parts_than_the_file_holds_is_refused_before_building(tmp_path, field, value, what):
    """Building a model is linear in its repeated parts: a config's counts are checked against
    the file's tensors first (this one would take hours and tens of GB to build)."""
    directory = copy_checkpoint("tiny-24k", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (config if field == "target_bandwidths" else config["semantic_model_config"])[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=f"asks for {what}; the checkpoint holds 367 tensors"):
        HiggsAudioV2TokenizerModel.from_pretrained(directory)
    assert time.monotonic() - started < 30


def test_half_a_weight_norm_pair_is_an_error(tmp_path):
    key = "semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    with pytest.raises(CheckpointError, match="only its v tensor"):
        HiggsAudioV2TokenizerModel.from_pretrained(_edit_state(tmp_path, lambda s: s.pop(key)))


def test_integer_tensor_is_an_error(tmp_path):
    def edit(state):
        state["fc.bias"] = state["fc.bias"].to(torch.int32)

    with pytest.raises(CheckpointError, match="non-float"):
        HiggsAudioV2TokenizerModel.from_pretrained(_edit_state(tmp_path, edit))


def test_pickle_payload_in_model_pth_is_refused(tmp_path):
    """weights_only loading: a model.pth that would run code when unpickled is rejected, not run."""
    save_original(load_model("tiny-16k"), tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"fc_prior.weight": Payload()}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="tensor-only"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    assert not marker.exists()


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "higgs_audio_v2_tokenizer"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a Higgs Audio V2 tokenizer config"):
        HiggsAudioV2TokenizerModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        HiggsAudioV2TokenizerModel.from_pretrained(str(tmp_path / "nope" / "deeper"))


# ----------------------------------------------------------------- the Hub
def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_hub_id_offline_with_empty_cache_says_what_to_do(tmp_path):
    code = (
        "from higgs_tokenizer import HiggsAudioV2TokenizerModel\n"
        "try:\n    HiggsAudioV2TokenizerModel.from_pretrained('bosonai/higgs-audio-v2-tokenizer')\n"
        "except OSError as e:\n    print('ERROR', e)\n"
    )
    out = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "ERROR could not load 'bosonai/higgs-audio-v2-tokenizer'" in out.stdout
    assert "HF_HUB_OFFLINE" in out.stdout and "pass its directory" in out.stdout


# A closed local port: the Hub's host refuses the connection at once, as without a network.
UNREACHABLE_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HTTPS_PROXY": "", "https_proxy": "",
                   "ALL_PROXY": "", "all_proxy": ""}


def test_unreachable_hub_is_not_retried(tmp_path):
    """huggingface_hub would retry a dead network for about 30 s; one probe tells, and only
    the local cache is searched (measured: the CLI fails in about 2 s here)."""
    model_id = "bosonai/higgs-audio-v2-tokenizer"
    code = (
        "from higgs_tokenizer import HiggsAudioV2TokenizerModel\n"
        f"try:\n    HiggsAudioV2TokenizerModel.from_pretrained({model_id!r})\n"
        "except OSError as e:\n    print('ERROR', e)\n"
    )
    out = _run(code, {**UNREACHABLE_HUB, "HF_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert f"ERROR could not load {model_id!r}" in out.stdout
    # Only the cache was searched: the network was not retried.
    assert "the Hugging Face Hub is unreachable (127.0.0.1:9" in out.stdout and "pass its directory" in out.stdout


def test_hub_id_from_the_local_cache(tmp_path):
    """A repo already in huggingface_hub's cache loads offline, in either format."""
    cache = tmp_path / "hub"
    for repo, writer in (("org--tiny-hf", "hf"), ("org--tiny-orig", "orig")):
        snapshot = cache / f"models--{repo}" / "snapshots" / ("0" * 40)
        if writer == "hf":
            load_model("tiny-24k").save_pretrained(snapshot)
        else:
            save_original(load_model("tiny-24k"), snapshot)
        (cache / f"models--{repo}" / "refs").mkdir(parents=True)
        (cache / f"models--{repo}" / "refs" / "main").write_text("0" * 40)
    code = (
        "import torch\nfrom higgs_tokenizer import HiggsAudioV2TokenizerModel, HiggsAudioV2TokenizerFeatureExtractor\n"
        "a = HiggsAudioV2TokenizerModel.from_pretrained('org/tiny-hf')\n"
        "b = HiggsAudioV2TokenizerModel.from_pretrained('org/tiny-orig')\n"
        "fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained('org/tiny-hf')\n"
        "same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))\n"
        "print('OK', same, fe.hop_length)\n"
    )
    for env in ({"HF_HUB_OFFLINE": "1"}, UNREACHABLE_HUB):
        out = _run(code, {**env, "HF_HUB_CACHE": str(cache)})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "OK True 960"
