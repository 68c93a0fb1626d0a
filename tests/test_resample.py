"""Our windowed-sinc resampler against torchaudio.functional.resample (outputs stored by
scripts/make_extra_fixtures.py in the reference environment)."""

import pytest
import torch
from helpers import load_extra

from higgs_tokenizer import resample

CASES = load_extra()
PAIRS = sorted({tuple(int(p) for p in k.split("_")[1:3]) for k in CASES if k.startswith("resample_")})


def test_many_rate_pairs_are_covered():
    assert len(PAIRS) >= 12


@pytest.mark.parametrize("orig,new", PAIRS)
def test_matches_torchaudio(orig, new):
    x = CASES[f"resample_{orig}_{new}_in"]
    expected = CASES[f"resample_{orig}_{new}_out"]
    out = resample(x, orig, new)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-6


def test_batch_axes_are_kept_and_independent():
    x = torch.randn(2, 3, 1000, dtype=torch.float64)
    out = resample(x, 24000, 16000)
    assert out.shape == (2, 3, 667) and out.dtype == torch.float64
    assert torch.allclose(out[1, 2], resample(x[1, 2], 24000, 16000))


def test_same_rate_is_identity_and_bad_rates_fail():
    x = torch.randn(10)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="positive integer"):
        resample(x, 44100.5, 16000)
    with pytest.raises(ValueError, match="positive integer"):
        resample(x, 0, 16000)
    with pytest.raises(TypeError, match="floating-point"):
        resample(torch.ones(10, dtype=torch.int16), 24000, 16000)
