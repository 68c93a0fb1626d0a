"""The semantic encoder's convs as matrix products (what a GPU runs instead of cuDNN's
convs, whose heuristics picked a 74 GB algorithm with other codes on an H200): the same
outputs as the convs, and the reference's codes, computed here on the CPU."""

import pytest
import torch
from helpers import assert_codes_match, case_lengths, load_cases, load_model
from test_batching import padded_batch

from higgs_tokenizer.layers import FrameRateConv1d


@pytest.mark.parametrize(
    "kernel, dilation, stride, padding, bias",
    [(1, 1, 1, 0, False), (3, 1, 1, 1, True), (3, 3, 1, 3, False), (3, 9, 1, 9, False), (7, 1, 1, 3, True),
     (4, 1, 2, 1, True), (3, 1, 2, 0, False)],
)
def test_product_is_the_conv(kernel, dilation, stride, padding, bias):
    torch.manual_seed(kernel * 100 + dilation * 10 + stride)
    conv = FrameRateConv1d(48, 40, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    for batch, frames in ((1, 25), (3, 19), (2, 2 * dilation * (kernel - 1) + 1)):
        x = torch.randn(batch, 48, frames)
        expected = torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, padding, dilation)
        got = conv.as_product(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_cpu_keeps_the_conv_and_other_devices_take_the_product(monkeypatch):
    conv = FrameRateConv1d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 10)
    assert torch.equal(conv(x), torch.nn.functional.conv1d(x, conv.weight, conv.bias, padding=1))
    products = []
    monkeypatch.setattr(FrameRateConv1d, "as_product", lambda self, x: products.append(x.device.type) or x)
    conv.to("meta")(x.to("meta"))  # a device that is not the CPU, as a GPU is
    assert products == ["meta"]


def test_an_empty_batch():
    conv = FrameRateConv1d(8, 6, 3, padding=1)
    assert conv.as_product(torch.zeros(0, 8, 10)).shape == (0, 6, 10)


@torch.inference_mode()
def test_products_give_the_reference_codes(fixture_name, monkeypatch):
    """A padded batch with its mask, every FrameRateConv1d computed as a product: each clip's
    codes are the reference's, wherever its decision is not a near tie."""
    monkeypatch.setattr(FrameRateConv1d, "forward", FrameRateConv1d.as_product)
    model, cases = load_model(fixture_name), load_cases(fixture_name)
    assert any(isinstance(m, FrameRateConv1d) for m in model.modules())
    lengths = case_lengths(fixture_name)
    x, mask = padded_batch([cases[f"input_{n}"] for n in lengths])
    out = model.encode(x, padding_mask=mask)
    for i, n in enumerate(lengths):
        reference = cases[f"fe_codes_{n}"]
        assert int(out.code_lengths[i]) == reference.shape[1]
        assert_codes_match(out.audio_codes[i, :, : reference.shape[1]], reference, cases[f"fe_margin_{n}"])
