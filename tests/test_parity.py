"""Every tensor of the reference fixtures reproduced, from both weight files of each fixture."""

import pytest
import torch
from helpers import (
    assert_audio_close,
    assert_codes_match,
    case_lengths,
    fixture_dir,
    load_cases,
    load_model,
)

from higgs_tokenizer import HiggsAudioV2TokenizerFeatureExtractor, resample


@pytest.fixture(params=["model.safetensors", "model-weight-norm.safetensors"])
def model_and_cases(fixture_name, request, tmp_path_factory):
    if request.param == "model.safetensors":
        return load_model(fixture_name), load_cases(fixture_name)
    # The weight-norm variant as its own checkpoint directory.
    src = fixture_dir(fixture_name)
    directory = tmp_path_factory.mktemp(f"{fixture_name}-wn")
    (directory / "config.json").write_bytes((src / "config.json").read_bytes())
    (directory / "model.safetensors").symlink_to(src / request.param)
    from higgs_tokenizer import HiggsAudioV2TokenizerModel

    return HiggsAudioV2TokenizerModel.from_pretrained(directory), load_cases(fixture_name)


@torch.inference_mode()
def test_codes_every_length_and_bandwidth(model_and_cases):
    model, cases = model_and_cases
    for n in cases["batch_lengths"].tolist():
        x = cases[f"input_{n}"][None, None]
        margins = cases[f"margin_{n}"]
        assert_codes_match(model.encode(x).audio_codes[0], cases[f"codes_{n}"], margins)
        for bw in model.config.target_bandwidths:
            codes = model.encode(x, bandwidth=bw).audio_codes[0]
            assert codes.dtype == torch.int64
            assert_codes_match(codes, cases[f"codes_{n}_bw{bw}"], margins)


@torch.inference_mode()
def test_decode_and_forward(model_and_cases):
    model, cases = model_and_cases
    for n in cases["batch_lengths"].tolist():
        x = cases[f"input_{n}"][None, None]
        decoded = model.decode(cases[f"codes_{n}"][None]).audio_values
        assert decoded.shape == (1, 1, cases[f"codes_{n}"].shape[1] * model.config.hop_length)
        assert_audio_close(decoded[0, 0], cases[f"decoded_{n}"])
        assert_audio_close(model(x).audio_values[0, 0], cases[f"forward_{n}"])
    decoded = model.decode(cases["random_codes"]).audio_values[:, 0]
    assert_audio_close(decoded, cases["random_codes_decoded"])


@torch.inference_mode()
def test_semantic_branch(fixture_name):
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    config = model.config
    for n in case_lengths(fixture_name):
        x = cases[f"input_{n}"]
        resampled = resample(x, config.sample_rate, config.semantic_sample_rate)
        assert resampled.shape == cases[f"semantic_input_{n}"].shape
        assert (resampled - cases[f"semantic_input_{n}"]).abs().max() <= 1e-6
        features = model.semantic_features(x[None, None])[0]
        reference = cases[f"semantic_features_{n}"]
        assert features.shape == reference.shape
        assert (features - reference).abs().max() <= 1e-4 * reference.abs().max()


@torch.inference_mode()
def test_feature_extractor_and_its_codes(fixture_name):
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    fe = HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(fixture_dir(fixture_name))
    assert fe.sampling_rate == model.config.sample_rate and fe.hop_length == model.config.hop_length
    for n in case_lengths(fixture_name):
        inputs = fe(raw_audio=cases[f"input_{n}"].numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt")
        assert torch.equal(inputs["input_values"][0, 0], cases[f"fe_input_values_{n}"])
        assert torch.equal(inputs["padding_mask"][0].long(), cases[f"fe_padding_mask_{n}"])
        codes = model.encode(inputs["input_values"]).audio_codes[0]
        assert_codes_match(codes, cases[f"fe_codes_{n}"], cases[f"fe_margin_{n}"])
    clips = [cases[f"input_{n}"].numpy() for n in case_lengths(fixture_name)]
    batch = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
    assert torch.equal(batch["input_values"], cases["batch_fe_input_values"])
    assert torch.equal(batch["padding_mask"].long(), cases["batch_fe_padding_mask"])


@torch.inference_mode()
def test_padded_batch_matches_reference_batch(fixture_name):
    """Without masking, a zero-padded batch is encoded as the reference does (padding seen as audio)."""
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    codes = model.encode(cases["batch_fe_input_values"]).audio_codes
    reference = cases["batch_reference_codes"]
    assert codes.shape == reference.shape
    assert (codes == reference).float().mean() >= 0.99
