"""The fast paths compute what the reference's slow ones do, and the benchmark runs."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, SHARED, fixture_dir, load_cases, load_model

from higgs_tokenizer import layers
from higgs_tokenizer.causal_layers import _CausalConv
from higgs_tokenizer.layers import Snake1d, UpsamplingConv1d, snake_inference, snake_reference


@pytest.mark.parametrize("shape", [(1, 64, 240_000), (3, 64, 4097), (2, 1024, 7), (1, 1, 5), (2, 5, 300_001)])
def test_snake_is_bit_exact(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    alpha = torch.rand(1, shape[1], 1) * 2
    alpha[0, 0] = 0  # α = 0 stays finite through the 1e-9
    assert torch.equal(snake_inference(x, alpha), snake_reference(x, alpha))
    strided = torch.randn(shape[0], shape[2], shape[1]).transpose(1, 2)  # not contiguous
    assert torch.equal(snake_inference(strided, alpha), snake_reference(strided, alpha))


def test_snake_keeps_gradients():
    snake = Snake1d(4)
    with torch.no_grad():
        snake.alpha.uniform_(0.5, 2)
    x = torch.randn(2, 4, 50, requires_grad=True)
    y = snake(x)
    y.sum().backward()
    assert x.grad is not None and snake.alpha.grad is not None
    with torch.no_grad():
        assert torch.equal(snake(x), y.detach())


@pytest.mark.parametrize("stride", [2, 3, 4, 5, 8])
def test_upsampling_conv_equals_transposed_conv(stride):
    torch.manual_seed(stride)
    conv = UpsamplingConv1d(12, 6, 2 * stride, stride=stride, padding=math.ceil(stride / 2), output_padding=stride % 2)
    for frames in (1, 2, 37):
        x = torch.randn(3, 12, frames)
        expected = F.conv_transpose1d(x, conv.weight, conv.bias, stride, conv.padding, conv.output_padding)
        with torch.inference_mode():
            got = conv(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The cached phase weight follows an in-place change of the weight.
    with torch.no_grad():
        conv.weight.mul_(2)
    x = torch.randn(1, 12, 9)
    torch.testing.assert_close(conv(x), F.conv_transpose1d(x, conv.weight, conv.bias, stride, conv.padding, conv.output_padding), rtol=0, atol=1e-5)
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def test_packed_weights_compute_the_plain_products():
    """A streamed step's convs, run as products (few columns) or convs (many), with weights
    packed once (in oneDNN's layouts on the CPU): the plain conv for any size and layout."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(24, 40, 7, dilation=3)  # made outside inference mode, as models are
    reach = 3 * 6
    with torch.inference_mode():
        layer = _CausalConv("conv", conv.weight, conv.bias, 3, keep=reach, eager=True)
        # 1 and 3 rows (plain weight), 8 and 128 (packed), then convs of 133 and 2 x 982 columns
        for batch, width in ((1, 1), (3, 1), (1, 8), (1, 128), (1, 133), (2, 982)):
            for time_major in (False, True):
                x = torch.randn(batch, width + reach, 24).transpose(1, 2) if time_major else torch.randn(batch, 24, width + reach)
                expected = F.conv1d(x.double(), conv.weight.double(), conv.bias.double(), dilation=3).float()
                torch.testing.assert_close(layer.unpadded(x), expected, rtol=0, atol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert layer._packed_matrix.is_mkldnn and layer._packed_weight.is_mkldnn


def test_packed_linear_op_computes_the_plain_product_and_follows_its_weight():
    """The op a compiled streaming step calls: F.linear for any number of rows, its packed
    weight made again when the weight changes in place, and forgotten when it is freed."""
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 168) / 13, torch.randn(40)  # outputs of about unit size
    with torch.inference_mode():
        for rows in (1, layers.PACKED_LINEAR_ROWS, 8, 200):
            x = torch.randn(rows, 168)
            expected = F.linear(x.double(), weight.double(), bias.double()).float()
            torch.testing.assert_close(layers.packed_linear(x, weight, bias), expected, rtol=0, atol=1e-5)
        weight.mul_(-2)  # a normal tensor: its version counts the change
        x = torch.randn(8, 168)
        torch.testing.assert_close(layers.packed_linear(x, weight, None), F.linear(x, weight), rtol=0, atol=1e-5)
    key = id(weight)
    del weight
    assert key not in layers._PACKED_WEIGHTS
    # Its gradients are F.linear's (none dropped).
    inputs = [torch.randn(8, 168, requires_grad=True), torch.randn(40, 168, requires_grad=True), torch.randn(40, requires_grad=True)]
    layers.packed_linear(*inputs).square().sum().backward()
    ours = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    F.linear(*inputs).square().sum().backward()
    for mine, expected in zip(ours, (t.grad for t in inputs)):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-4)


def test_upsampling_conv_falls_back_outside_its_pattern():
    conv = UpsamplingConv1d(4, 2, 5, stride=2, padding=1)  # kernel is not 2 × stride
    x = torch.randn(1, 4, 10)
    assert torch.equal(conv(x), F.conv_transpose1d(x, conv.weight, conv.bias, 2, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_running_mean_of_hidden_states_is_bit_exact(fixture_name, dtype):
    hubert = load_model(fixture_name).semantic_model
    hubert = hubert if dtype == torch.float32 else load_model(fixture_name, dtype=dtype).semantic_model
    waveform = load_cases(fixture_name)["input_24000" if fixture_name == "tiny-24k" else "input_16000"][None].to(dtype)
    lengths = torch.tensor([waveform.shape[-1] - 900])
    with torch.inference_mode():
        states, _ = hubert(waveform)
        mean, _ = hubert.mean_hidden_state(waveform, frame_step=2)
        assert torch.equal(mean, torch.stack(states, 1).mean(1)[:, ::2])
        states, _ = hubert(waveform, lengths)
        mean, _ = hubert.mean_hidden_state(waveform, lengths)
        assert torch.equal(mean, torch.stack(states, 1).mean(1))


def test_allocator_tuning_applies_once_and_can_be_refused():
    code = "from higgs_tokenizer.runtime import tune_cpu_allocator as t; print(t(), t())"
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert tuned == [expected, expected]
    env = {"HIGGS_TOKENIZER_KEEP_MALLOC": "1", "PATH": ""}
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert refused == ["False", "False"]
    lowered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"HIGGS_TOKENIZER_MMAP_MB": "256"})
    assert lowered.stdout.split() == [expected, expected]
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"HIGGS_TOKENIZER_MMAP_MB": "lots"})
    assert bad.returncode != 0 and "must be a number of MiB" in bad.stderr


def test_compiled_kernels_match_eager():
    model = load_model("tiny-24k")
    x = load_cases("tiny-24k")["input_72000"][None, None]
    with torch.inference_mode():
        eager = model.encode(x).audio_codes
        audio = model.decode(eager).audio_values
    compiled = type(model).from_pretrained(fixture_dir("tiny-24k")).compile_kernels()
    with torch.inference_mode():
        codes = compiled.encode(x).audio_codes
        compiled_audio = compiled.decode(eager).audio_values
    # One unit in the last place of sin can flip a near tie, nothing more.
    assert (codes == eager).float().mean() >= 0.99
    assert (compiled_audio - audio).abs().max() <= 1e-4 * audio.abs().max()


@pytest.mark.slow
def test_benchmark_runs_end_to_end(tmp_path, monkeypatch):
    """The benchmark command on the tiny model: every table, codes, memory, start-up."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the benchmarks live beside the package
    import speed

    output = tmp_path / "results.md"
    speed.main([
        "--config", str(fixture_dir("tiny-24k") / "config.json"), "--audio-dir", str(SHARED / "audio"),
        "--work-dir", str(tmp_path / "work"), "--cases", "1s", "batch16", "--runs", "2", "--threads", "1",
        "--reference", "no", "--import-runs", "1", "--output", str(output),
    ])
    text = output.read_text()
    for heading in ("## Threads: 1", "## Throughput", "## Arithmetic", "## Memory", "## Start-up"):
        assert heading in text
    assert "| batch16 |" in text and "| 1s | 1.0 | encode |" in text
    raw = json.loads(output.with_suffix(".json").read_text())
    rows = raw["variants"][0]["rows"]
    assert [r["case"] for r in rows] == ["1s", "batch16"]
    assert all(len(r["encode"]) == 2 and min(r["encode"]) > 0 for r in rows)
    assert rows[0]["encode_gflop"] > 0 and set(raw["memory"]) == {f"ours {c} {op}" for c in ("1s", "batch16") for op in ("encode", "decode")}
    from safetensors.torch import load_file

    saved = load_file(raw["variants"][0]["codes"])
    audio = saved.pop("audio")  # its own first codes decoded, for comparing dtypes
    assert audio.dim() == 1 and audio.abs().max() > 0
    assert len(saved) == 17 and all(c.shape[0] == 8 for c in saved.values())


def test_throughput_benchmark_runs_end_to_end(tmp_path, monkeypatch):
    """The corpus-mix benchmark on the tiny model: a row per precision and batching, every
    batching's float32 codes those of the first (exact batches), whole-frame clips."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import common
    import throughput

    mix = common.corpus_mix(5, 1, 3, seed=1)
    assert all(len(clip) % common.HOP == 0 and 1 * 24000 - 480 <= len(clip) <= 3 * 24000 + 480 for clip in mix)
    output = tmp_path / "throughput.md"
    throughput.main([
        "--model", str(fixture_dir("tiny-24k")), "--device", "cpu", "--clips", "5", "--longest", "3",
        "--batch-sizes", "1", "3", "--batch-seconds", "4", "--precisions", "float32", "bfloat16",
        "--reference", "no", "--quality", "--output", str(output),
    ])
    rows = [line.split(" | ") for line in output.read_text().splitlines() if line.startswith("| ours")]
    assert [(r[1], r[2]) for r in rows] == [(p, b) for p in ("float32", "bfloat16") for b in ("1 clips", "3 clips", "4 s of audio")]
    assert all(r[7] == "100.00 % / 100.00 %" for r in rows[:3])
    assert [r[5] for r in rows[:3]] == ["5", "2", "4"]  # model calls: one a clip, 3 + 2, and by the 4 s budget
    assert float(rows[0][8].rstrip(" |")) > 0 and rows[1][8].rstrip(" |") == "-"  # quality with the first batching
