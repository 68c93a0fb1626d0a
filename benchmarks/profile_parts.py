"""Where encode and decode time goes, part by part, against each part's own ceiling.

    python benchmarks/profile_parts.py [--seconds 10] [--model DIR]
    python benchmarks/profile_parts.py --device cuda [--precision bfloat16]

Times every conv, linear, attention and Snake call of one encode and one
decode (after a warm-up) with forward hooks, groups them by part, and prints
per part: time, GFLOP (or MB moved for the elementwise Snake), the rate
achieved and its fraction of the yardstick: a 2048² float32 matrix product
for arithmetic, a large tensor copy for memory traffic. The model is the
benchmarks' (common.py; made on first use), or `--model DIR`. On a GPU each call is
timed by CUDA events, so that nothing waits inside the model, and the yardsticks run on
the GPU: the product in the model's dtype (with TF32 off, as PyTorch leaves it: against
`--precision tf32` a part can pass 100 %), the copy in float32.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from common import matmul_peak, prepare_model_and_inputs

from higgs_tokenizer import HiggsAudioV2TokenizerModel
from higgs_tokenizer.hubert import SelfAttention
from higgs_tokenizer.layers import Snake1d


def part_of(name: str, module: torch.nn.Module) -> str:
    top = name.split(".")[0]
    if isinstance(module, Snake1d):
        return f"{top}: Snake"
    if isinstance(module, SelfAttention):
        return "semantic_model: attention (projections + SDPA)"
    if isinstance(module, torch.nn.ConvTranspose1d):
        return f"{top}: transposed convs"
    if top == "semantic_model":
        if "feature_extractor" in name:
            return "semantic_model: feature-encoder convs"
        if "pos_conv" in name:
            return "semantic_model: positional conv"
        return "semantic_model: transformer linears"
    return f"{top}: {'convs' if isinstance(module, torch.nn.Conv1d) else 'linears'}"


def work(module: torch.nn.Module, inputs, output) -> tuple[float, float]:
    """(FLOP, bytes moved) of one call."""
    if isinstance(module, Snake1d):
        return 0.0, 2.0 * output.numel() * output.element_size()
    if isinstance(module, SelfAttention):
        b, t, d = output.shape
        return 8.0 * b * t * d * d + 4.0 * b * t * t * d, 0.0  # four projections, QKᵀ and PV
    if isinstance(module, torch.nn.ConvTranspose1d):
        return 2.0 * inputs[0].numel() * module.out_channels * module.kernel_size[0], 0.0
    if isinstance(module, torch.nn.Conv1d):
        return 2.0 * output.numel() * module.in_channels // module.groups * module.kernel_size[0], 0.0
    return 2.0 * output.numel() * module.in_features, 0.0


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a 256 MB copy, bytes read and written."""
    src = torch.randn(64 * 2**20, device=device)
    dst = torch.empty_like(src)
    clock, best = Clock(device), float("inf")
    for _ in range(5):
        start = clock.mark()
        dst.copy_(src)
        best = min(best, clock.seconds(start, clock.mark()))
    return 2 * src.numel() * 4 / best / 1e9


class Clock:
    """Marks in time: the CPU's clock, or on a GPU CUDA events (read once the work is done)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the benchmarks' model)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="float32 (default), tf32, bfloat16 or float16")
    args = ap.parse_args()

    device = torch.device(args.device)
    model = HiggsAudioV2TokenizerModel.from_pretrained(args.model or prepare_model_and_inputs()[0], device=device,
                                                       precision=args.precision)
    dtype, clock = next(model.parameters()).dtype, Clock(device)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    calls: list[tuple[str, object, object]] = []  # (part, start, end): read when the op is done
    started: dict[int, object] = {}
    leaves = (Snake1d, SelfAttention, torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)
    for name, module in model.named_modules():
        if not isinstance(module, leaves) or (isinstance(module, torch.nn.Linear) and ".attention." in name):
            continue  # the attention's projections are timed with it
        part = part_of(name, module)

        def pre(mod, inputs, key=id(module)):
            started[key] = clock.mark()

        def post(mod, inputs, output, key=id(module), part=part):
            calls.append((part, started[key], clock.mark()))
            entry = totals[part]
            flop, moved = work(mod, inputs, output)
            entry[1] += flop
            entry[2] += moved

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    x = (torch.randn(1, 1, int(args.seconds * model.config.sample_rate), generator=torch.Generator().manual_seed(0)) * 0.1)
    x = x.to(device, dtype)
    with torch.inference_mode():
        codes = model.encode(x).audio_codes
        model.decode(codes)
        results = {}
        for op, fn in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(codes))):
            totals.clear()
            calls.clear()
            begun = clock.mark()
            fn()
            total = clock.seconds(begun, clock.mark())
            for part, start, end in calls:
                totals[part][0] += clock.seconds(start, end)
            results[op] = (total, {k: list(v) for k, v in totals.items()})
    peak, bandwidth = matmul_peak(device, dtype), copy_bandwidth(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"yardsticks: matmul {peak:.0f} GFLOP/s ({dtype}), copy {bandwidth:.1f} GB/s; {where}; {args.seconds:g} s of audio\n")
    for op, (total, parts) in results.items():
        print(f"{op}: {total:.3f} s")
        print("| part | ms | share | GFLOP | GFLOP/s | of matmul | GB moved | GB/s | of copy |")
        print("|---|---|---|---|---|---|---|---|---|")
        for part, (seconds, flop, moved) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
            rate = flop / seconds / 1e9 if flop else 0
            gbps = moved / seconds / 1e9 if moved else 0
            print(
                f"| {part} | {1e3 * seconds:.0f} | {100 * seconds / total:.0f} % | {flop / 1e9:.1f} | "
                + (f"{rate:.0f} | {100 * rate / peak:.0f} % | " if flop else "- | - | ")
                + (f"{moved / 1e9:.2f} | {gbps:.1f} | {100 * gbps / bandwidth:.0f} % |" if moved else "- | - | - |")
            )
        rest = total - sum(v[0] for v in parts.values())
        print(f"| everything else (norms, GELU, masks, resampling, quantizer, Python) | {1e3 * rest:.0f} | {100 * rest / total:.0f} % | | | | | | |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
