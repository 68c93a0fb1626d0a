"""Bad input gets a clear error, never a silent wrong answer."""

import numpy as np
import pytest
import torch
from helpers import load_model

from higgs_tokenizer import HiggsAudioV2TokenizerConfig


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-24k")


def test_shortest_input(model):
    # 119 samples at 24 kHz resample to 80 at 16 kHz; with HuBERT's 2 x 160 padding that is
    # its 400-sample receptive field: one frame. Anything shorter has no frame at all.
    assert model.min_input_length() == 119
    assert model.min_input_length("original") == 119
    assert load_model("tiny-16k").min_input_length() == 80
    with torch.inference_mode():
        assert model.encode(torch.zeros(1, 1, 119)).audio_codes.shape == (1, 8, 1)
        with pytest.raises(ValueError, match="too short.*119 samples"):
            model.encode(torch.zeros(1, 1, 118))


@pytest.mark.parametrize(
    "x,error,match",
    [
        (torch.zeros(960), ValueError, r"\[batch, channels=1, samples\].*x\[None, None\]"),
        (torch.zeros(1, 960), ValueError, "batch, channels=1, samples"),
        (torch.zeros(1, 1, 1, 960), ValueError, "batch, channels=1, samples"),
        (torch.zeros(1, 2, 960), ValueError, "mono.*2 channels"),
        (torch.zeros(1, 1, 0), ValueError, "empty"),
        (torch.zeros(0, 1, 960), ValueError, "empty"),
        (torch.zeros(1, 1, 960, dtype=torch.int16), TypeError, "floating point.*int16"),
        (np.zeros((1, 1, 960), dtype=np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_waveforms(model, x, error, match):
    with pytest.raises(error, match=match):
        model.encode(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples(model, bad):
    x = torch.zeros(1, 1, 960)
    x[0, 0, 500] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.encode(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(x)


def test_unknown_bandwidth_lists_the_allowed_ones(model):
    with pytest.raises(ValueError, match=r"bandwidth 3.*\[0.5, 1, 1.5, 2\]"):
        model.encode(torch.zeros(1, 1, 960), bandwidth=3)


@pytest.mark.parametrize(
    "codes,error,match",
    [
        (torch.zeros(8, 10, dtype=torch.long), ValueError, "batch, num_quantizers, frames"),
        (torch.zeros(1, 9, 10, dtype=torch.long), ValueError, "9 quantizers; this model decodes 1 to 8"),
        (torch.zeros(1, 0, 10, dtype=torch.long), ValueError, "0 quantizers"),
        (torch.zeros(1, 8, 0, dtype=torch.long), ValueError, "empty"),
        (torch.full((1, 8, 10), 1024), ValueError, r"\[0, 1024\).*1024"),
        (torch.full((1, 8, 10), -1), ValueError, r"\[0, 1024\).*-1"),
        (torch.zeros(1, 8, 10), TypeError, "integer"),
        (torch.full((1, 8, 10), 5000, dtype=torch.uint16), ValueError, r"\[0, 1024\).*5000"),  # no min/max in PyTorch
        (np.zeros((1, 8, 10), dtype=np.int64), TypeError, "torch.Tensor"),
    ],
)
def test_bad_codes(model, codes, error, match):
    with pytest.raises(error, match=match):
        model.decode(codes)


def test_fewer_quantizers_decode(model):
    with torch.inference_mode():
        for n_q in (1, 4, 8):
            codes = torch.randint(0, 1024, (2, n_q, 5), dtype=torch.int32)
            audio = model.decode(codes).audio_values
            assert audio.shape == (2, 1, 5 * 960) and torch.isfinite(audio).all()
            assert torch.equal(model.decode(codes.to(torch.uint16)).audio_values, audio)


def test_padding_mask_shape_is_checked(model):
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.zeros(1, 1, 960), padding_mask=torch.ones(1, 100))


def test_config_errors():
    with pytest.raises(ValueError, match="model_type"):
        HiggsAudioV2TokenizerConfig.from_dict({"semantic_model_config": {"model_type": "wavlm"}})
    with pytest.raises(ValueError, match="do_stable_layer_norm"):
        HiggsAudioV2TokenizerConfig.from_dict({"semantic_model_config": {"do_stable_layer_norm": True}})
    with pytest.raises(ValueError, match="target_bandwidths"):
        HiggsAudioV2TokenizerConfig(target_bandwidths=[])
    with pytest.raises(ValueError, match="length_rule"):
        HiggsAudioV2TokenizerConfig(length_rule="nearest")


def test_config_properties_match_the_reference():
    config = HiggsAudioV2TokenizerConfig.from_dict(
        {"target_bandwidths": [0.5, 1, 1.5, 2], "acoustic_model_config": {"downsampling_ratios": [8, 5, 4, 2, 3],
                                                                         "upsampling_ratios": [8, 5, 4, 2, 3]}}
    )
    assert (config.hop_length, config.frame_rate, config.num_quantizers, config.semantic_downsample_factor) == (960, 25, 8, 2)
    assert config.hidden_size == 256 + 768 and config.codebook_nbits == 10
    assert [config.num_quantizers_for_bandwidth(b) for b in (0.5, 1, 1.5, 2, None)] == [2, 4, 6, 8, 8]
    # The transformers default bandwidths end at 4 kbps: 16 quantizers at 25 frames/s (NOTES.md).
    ratios = [8, 5, 4, 2, 3]
    default_bandwidths = HiggsAudioV2TokenizerConfig(
        acoustic_model_config={"downsampling_ratios": ratios, "upsampling_ratios": ratios}
    )
    assert list(default_bandwidths.target_bandwidths) == [0.5, 1, 1.5, 2, 4]
    assert default_bandwidths.num_quantizers == 16


def test_a_numpy_padding_mask_is_accepted():
    model = load_model("tiny-24k")
    x = torch.zeros(2, 1, 1920)
    mask = np.ones((2, 1920), dtype=np.int32)
    mask[1, 960:] = 0
    with torch.inference_mode():
        out = model.encode(x, padding_mask=mask)
    assert out.code_lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"padding_mask has shape \(2, 100\)"):
        model.encode(x, padding_mask=np.ones((2, 100)))


def test_tokenizer_settings_and_short_clips_are_checked():
    from higgs_tokenizer import HiggsAudioTokenizer

    model = load_model("tiny-24k", length_rule="original")
    for bad in (dict(window_seconds=0), dict(context_seconds=-1), dict(memory_budget_gb=0)):
        with pytest.raises(ValueError, match="must be positive"):
            HiggsAudioTokenizer(model, **bad)
    clips = [(np.ones(24000, dtype=np.float32) * 0.1, 24000), (np.ones(50, dtype=np.float32), 24000)]
    # Named by its place in the caller's list, not in a length-sorted batch.
    with pytest.raises(ValueError, match="clip 1 of 2 has 50 samples: too short"):
        HiggsAudioTokenizer(model, batch_size=2).encode(clips)
