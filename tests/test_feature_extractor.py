"""The feature extractor behaves like the reference's DacFeatureExtractor."""

import warnings

import numpy as np
import pytest
import torch
from helpers import fixture_dir

from higgs_tokenizer import HiggsAudioV2TokenizerFeatureExtractor


@pytest.fixture(scope="module")
def fe():
    return HiggsAudioV2TokenizerFeatureExtractor.from_pretrained(fixture_dir("tiny-24k"))


def test_pads_right_to_a_multiple_of_the_hop(fe):
    out = fe(np.ones(961, dtype=np.float32), sampling_rate=24000, return_tensors="pt")
    assert out.input_values.shape == (1, 1, 1920) and out.input_values.dtype == torch.float32
    assert out.padding_mask.shape == (1, 1920)
    assert out.padding_mask.sum() == 961 and out.input_values[0, 0, 961:].abs().sum() == 0
    # Without return_tensors, like the reference: a list of [1, samples] arrays and a mask array.
    plain = fe(np.ones(960), sampling_rate=24000)
    assert isinstance(plain["input_values"], list) and plain["input_values"][0].shape == (1, 960)
    assert plain["padding_mask"].shape == (1, 960)
    assert fe(np.ones(960), sampling_rate=24000, return_tensors="np")["input_values"].shape == (1, 1, 960)


def test_list_is_a_batch_and_list_of_floats_is_one_clip(fe):
    batch = fe([np.ones(100), torch.ones(2000), [0.5] * 50], sampling_rate=24000, return_tensors="pt")
    assert batch["input_values"].shape == (3, 1, 2880)
    assert batch["padding_mask"].sum(1).tolist() == [100, 2000, 50]
    assert fe([0.1, 0.2, 0.3], sampling_rate=24000, return_tensors="pt")["input_values"].shape == (1, 1, 960)


def test_max_length_and_truncation(fe):
    # Truncation rounds max_length up to a whole hop, as the reference does.
    out = fe(np.ones(3000), sampling_rate=24000, truncation=True, padding=False, max_length=1000, return_tensors="pt")
    assert out["input_values"].shape == (1, 1, 1920) and "padding_mask" not in out
    # The default padding combines with truncation (only an explicit padding=True conflicts).
    out = fe([np.ones(3000), np.ones(500)], sampling_rate=24000, truncation=True, max_length=1000, return_tensors="pt")
    assert out["input_values"].shape == (2, 1, 1920) and out["padding_mask"].sum(1).tolist() == [1920, 500]
    out = fe(np.ones(100), sampling_rate=24000, padding="max_length", max_length=2000, return_tensors="pt")
    assert out["input_values"].shape == (1, 1, 2880)
    with pytest.raises(ValueError, match="Both padding and truncation"):
        fe(np.ones(10), sampling_rate=24000, padding=True, truncation=True, max_length=5)


def test_errors(fe):
    with pytest.raises(ValueError, match="expects audio at 24000 Hz, got 16000"):
        fe(np.ones(100), sampling_rate=16000)
    with pytest.raises(ValueError, match="mono"):
        fe(np.ones((100, 2)), sampling_rate=24000)
    with pytest.raises(TypeError, match="integer samples"):
        fe(np.ones(100, dtype=np.int16), sampling_rate=24000)
    with pytest.raises(ValueError, match="empty"):
        fe(np.ones(0), sampling_rate=24000)
    with pytest.raises(ValueError, match="different lengths"):
        fe([np.ones(10), np.ones(20)], sampling_rate=24000, padding=False, return_tensors="pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fe(np.ones(100))
    assert any("sampling_rate" in str(w.message) for w in caught)


def test_batch_feature_to(fe):
    out = fe(np.ones(100), sampling_rate=24000, return_tensors="pt").to(torch.float64)
    assert out.input_values.dtype == torch.float64 and out.padding_mask.dtype == torch.int32
