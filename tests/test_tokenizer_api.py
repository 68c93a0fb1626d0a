"""HiggsAudioTokenizer: paths, arrays and lists in; codes, audio and codes files out."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import fixture_dir, load_model
from safetensors import safe_open
from safetensors.torch import save_file

from higgs_tokenizer import HiggsAudioV2TokenizerFeatureExtractor
from higgs_tokenizer.audio import load_audio
from higgs_tokenizer.codes_file import CodesFileError, EncodedAudio, load_codes
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return HiggsAudioTokenizer(load_model("tiny-24k"), name="tiny-24k")


def test_from_pretrained_and_properties():
    tok = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-16k"), device="cpu", dtype=torch.float32)
    assert (tok.sample_rate, tok.hop_length, tok.frame_rate, tok.num_quantizers) == (16000, 320, 50, 8)
    assert tok.name == str(fixture_dir("tiny-16k"))


def test_encode_a_path_equals_the_feature_extractor_pipeline(tokenizer, short_recordings):
    path = short_recordings["belinda.wav"]  # 44.1 kHz
    codes = tokenizer.encode(path)
    samples, _ = load_audio(path, 24000)
    assert codes.shape == (8, math.ceil(len(samples) / 960)) and codes.dtype == torch.int64
    fe = HiggsAudioV2TokenizerFeatureExtractor(sampling_rate=24000, hop_length=960)
    inputs = fe(samples, sampling_rate=24000, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(codes, tokenizer.model.encode(inputs["input_values"]).audio_codes[0])


def test_arrays_tensors_and_pairs(tokenizer, short_recordings):
    path = short_recordings["old_man.wav"]  # stereo, 44.1 kHz
    pcm, rate = sf.read(path, dtype="int16", always_2d=True)
    from_path = tokenizer.encode(path)
    assert torch.equal(tokenizer.encode(pcm.T, sample_rate=rate), from_path)  # int16 [channels, samples]
    assert torch.equal(tokenizer.encode(torch.from_numpy(pcm.T.copy()), sample_rate=rate), from_path)
    assert torch.equal(tokenizer.encode((pcm.T.astype(np.float32) / 32768, rate)), from_path)
    with pytest.raises(ValueError, match="sample rate"):
        tokenizer.encode(pcm.T)
    with pytest.raises(ValueError, match="transpose"):
        tokenizer.encode(pcm, sample_rate=rate)  # [samples, channels]
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(np.full(2000, np.nan, dtype=np.float32), sample_rate=24000)
    floats = torch.from_numpy(pcm.T.astype(np.float32) / 32768)
    for dtype in (torch.float16, torch.bfloat16):  # types numpy lacks: taken as float32
        assert torch.equal(tokenizer.encode(floats.to(dtype), sample_rate=rate), tokenizer.encode(floats.to(dtype).float(), sample_rate=rate))
    with pytest.raises(ValueError, match="no channels"):
        tokenizer.encode(np.zeros((0, 2000), dtype=np.float32), sample_rate=24000)
    good = tokenizer.load((pcm.T, rate))
    codes, error = tokenizer.try_encode_clips([good, None])  # one bad item does not sink the rest
    assert torch.equal(codes, from_path) and isinstance(error, TypeError)


def test_a_list_is_a_batch_with_per_item_results(tokenizer, short_recordings):
    paths = [short_recordings[n] for n in ("en_man.wav", "mabel.wav", "en_man.wav")]
    clip = load_audio(paths[0], 24000)[0][:5000]
    batch = tokenizer.encode([paths[0], paths[1], (clip, 24000), paths[2]])
    assert isinstance(batch, list) and len(batch) == 4
    singles = [tokenizer.encode(paths[0]), tokenizer.encode(paths[1]), tokenizer.encode(clip, sample_rate=24000)]
    for got, expected in zip(batch, singles + singles[:1]):
        assert torch.equal(got, expected)
    assert batch[2].shape == (8, math.ceil(5000 / 960))  # cut to its own length, not the batch's
    assert tokenizer.encode([]) == []


def test_decode(tokenizer, short_recordings):
    codes = tokenizer.encode(short_recordings["en_man.wav"])
    audio = tokenizer.decode(codes)
    assert audio.shape == (codes.shape[1] * 960,) and audio.dtype == torch.float32
    two = tokenizer.decode([codes, codes[:2]])
    assert len(two) == 2 and torch.equal(two[0], audio) and two[1].shape == audio.shape
    with pytest.raises(ValueError, match="num_quantizers, frames"):
        tokenizer.decode(codes[None])


@pytest.mark.parametrize("name", ["en_man.wav", "belinda.wav", "mabel.wav", "old_man.wav"])
def test_file_round_trip_restores_the_length(tokenizer, short_recordings, tmp_path, name):
    source = short_recordings[name]
    info = sf.info(source)
    result = tokenizer.encode_file(source, tmp_path / "x.hac")
    expected_samples = round(info.frames * 24000 / info.samplerate)
    assert result.num_samples == expected_samples and result.source == str(source)
    loaded = load_codes(tmp_path / "x.hac")
    assert torch.equal(loaded.codes, result.codes) and loaded.num_samples == expected_samples
    assert (loaded.sample_rate, loaded.hop_length, loaded.frame_rate, loaded.num_quantizers) == (24000, 960, 25, 8)
    assert loaded.model == tokenizer.identity
    out = tokenizer.decode_to_file(tmp_path / "x.hac", tmp_path / "x.wav")
    assert sf.info(out).frames == expected_samples and sf.info(out).samplerate == 24000


def test_codes_file_layout(tokenizer, short_recordings, tmp_path):
    tokenizer.encode_file(short_recordings["en_man.wav"], tmp_path / "x.hac")
    with safe_open(str(tmp_path / "x.hac"), framework="pt") as f:
        metadata = f.metadata()
        assert list(f.keys()) == ["codes"] and f.get_tensor("codes").dtype == torch.int16
    assert metadata["format"] == "higgs-audio-codes" and metadata["format_version"] == "1"
    header = json.loads(metadata["header"])
    assert header["model_name"] == "tiny-24k" and len(header["model_config_sha256"]) == 64
    assert {"sample_rate", "hop_length", "frame_rate", "num_quantizers", "codebook_size", "num_samples", "source"} <= set(header)


def _rewrite(path, codes=None, **metadata_changes):
    with safe_open(str(path), framework="pt") as f:
        metadata, tensor = dict(f.metadata()), f.get_tensor("codes")
    header = json.loads(metadata["header"])
    for key, value in metadata_changes.items():
        if key in metadata:
            metadata[key] = value
        else:
            header[key] = value
    metadata["header"] = json.dumps(header)
    save_file({"codes": tensor if codes is None else codes}, str(path), metadata=metadata)


def test_codes_files_that_are_refused(tokenizer, short_recordings, tmp_path):
    tokenizer.encode_file(short_recordings["en_man.wav"], tmp_path / "x.hac")
    other = HiggsAudioTokenizer(load_model("tiny-16k"), name="tiny-16k")
    with pytest.raises(CodesFileError, match="another architecture"):
        other.decode(tmp_path / "x.hac")

    retrained = HiggsAudioTokenizer(HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k")).model, name="retrained")
    with torch.no_grad():
        retrained.model.quantizer.quantizers[3].codebook.embed.mul_(1.01)
    with pytest.raises(CodesFileError, match="other codebooks"):
        retrained.decode(tmp_path / "x.hac")

    cases = {
        "newer": dict(format_version="2"),
        "not a Higgs audio codes file": dict(format="something-else"),
        "cannot hold": dict(num_samples=10**7),
        "does not match the header \\(4 quantizers\\)": dict(num_quantizers=4),
    }
    for match, change in cases.items():
        path = tmp_path / f"{match[:5]}.hac"
        path.write_bytes((tmp_path / "x.hac").read_bytes())
        _rewrite(path, **change)
        with pytest.raises(CodesFileError, match=match):
            load_codes(path)
    path = tmp_path / "range.hac"
    path.write_bytes((tmp_path / "x.hac").read_bytes())
    _rewrite(path, codes=torch.full((8, 38), 2000, dtype=torch.int16))
    with pytest.raises(CodesFileError, match="outside"):
        load_codes(path)
    (tmp_path / "junk.hac").write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CodesFileError, match="not a codes file"):
        load_codes(tmp_path / "junk.hac")
    with pytest.raises(FileNotFoundError):
        load_codes(tmp_path / "missing.hac")


def test_header_fields_must_match_the_model(tokenizer, short_recordings, tmp_path):
    """Every header field decoding depends on is checked against the model: an edited
    hop_length used to decode half the audio."""
    frames = tokenizer.encode_file(short_recordings["en_man.wav"], tmp_path / "x.hac").num_frames
    for field, value in (("hop_length", 480), ("sample_rate", 16000), ("codebook_size", 2048), ("frame_rate", 50)):
        path = tmp_path / f"{field}.hac"
        path.write_bytes((tmp_path / "x.hac").read_bytes())
        # num_samples follows, so the file stays self-consistent and only the model can tell.
        _rewrite(path, **{field: value}, **({"num_samples": frames * 480} if field == "hop_length" else {}))
        with pytest.raises(CodesFileError, match=f"header says {field}={value}"):
            tokenizer.decode(path)


def test_codes_decode_with_the_checkpoint_in_another_dtype(short_recordings, tmp_path):
    """A model's identity is that of its checkpoint, whatever dtype it is loaded in."""
    bf16 = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"), dtype="bfloat16")
    float32 = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"))
    assert bf16.identity == float32.identity
    bf16.encode_file(short_recordings["en_man.wav"], tmp_path / "bf16.hac")
    float32.encode_file(short_recordings["en_man.wav"], tmp_path / "f32.hac")
    assert float32.decode(tmp_path / "bf16.hac").shape == bf16.decode(tmp_path / "f32.hac").shape


def test_identity_is_the_same_for_both_checkpoint_formats(tokenizer, tmp_path):
    from higgs_tokenizer import save_original

    save_original(tokenizer.model, tmp_path)
    assert HiggsAudioTokenizer.from_pretrained(tmp_path).identity.config_sha256 == tokenizer.identity.config_sha256


def test_original_length_rule_does_not_pad(short_recordings, tmp_path):
    tok = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"), length_rule="original")
    samples = load_audio(short_recordings["en_man.wav"], 24000)[0][:2500]
    codes = tok.encode(samples, sample_rate=24000)
    with torch.inference_mode():
        assert torch.equal(codes, tok.model.encode(torch.from_numpy(samples)[None, None]).audio_codes[0])
    result = tok.encode_to_result(samples, sample_rate=24000, source="clip")
    assert isinstance(result, EncodedAudio) and result.length_rule == "original"
    result.save(tmp_path / "c.hac")
    assert tok.decode(tmp_path / "c.hac").shape == (2500,)


def test_loudness_option(tokenizer, short_recordings):
    quiet = load_audio(short_recordings["en_man.wav"], 24000)[0] * 0.1
    a = tokenizer.encode(quiet, sample_rate=24000, loudness=-23.0)
    b = tokenizer.encode(quiet * 3, sample_rate=24000, loudness=-23.0)
    assert (a == b).float().mean() > 0.95  # same loudness after normalisation: (nearly) the same codes


def test_precision_modes(short_recordings):
    """One name per numeric mode: dtype and TF32 together. On the CPU, tf32 computes exactly
    what float32 does (TF32 exists on NVIDIA GPUs only)."""
    from higgs_tokenizer import HiggsAudioV2TokenizerModel

    path = short_recordings["en_man.wav"]
    float32 = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"), precision="float32")
    tf32 = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"), precision="tf32")
    bf16 = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"), precision="bfloat16")
    assert (float32.model.precision, tf32.model.precision, bf16.model.precision) == ("float32", "tf32", "bfloat16")
    assert (tf32.model.dtype, tf32.model.allow_tf32, bf16.model.dtype) == (torch.float32, True, torch.bfloat16)
    assert torch.equal(tf32.encode(path), float32.encode(path))
    assert bf16.model.dtype == torch.bfloat16 and bf16.encode(path).shape == float32.encode(path).shape
    # A loaded model changes mode in place; a dtype alone names its mode too.
    model = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k")).with_precision("tf32")
    assert model.precision == "tf32" and model.with_precision("float16").precision == "float16"
    assert HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"), dtype="bfloat16").precision == "bfloat16"
    with pytest.raises(ValueError, match="precision or dtype, not both"):
        HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"), precision="tf32", dtype="float32")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir("tiny-24k"), precision="fp8")
    # The command line offers the modes by name without importing torch: the same names.
    from higgs_tokenizer.config import PRECISION_NAMES
    from higgs_tokenizer.runtime import PRECISIONS

    assert tuple(PRECISIONS) == PRECISION_NAMES
