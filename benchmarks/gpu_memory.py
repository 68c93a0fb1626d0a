"""Where a GPU encode's memory goes, and whether its codes are the CPU's.

    python benchmarks/gpu_memory.py --device cuda

1. The corpus mix (as `throughput.py`) encoded in float32 in batches of `--batch-size`
   clips: each model call's peak above what was allocated before it (`CallMemory`). For
   the call with the largest, the largest allocations it made, each with the Python lines
   that asked for it (the CUDA caching allocator's history).
2. That call again under other cuDNN settings (benchmark, deterministic, cuDNN off): peak,
   time, and its codes against the CPU's for the same batch.
3. The whole mix's codes on the GPU (batches of `--batch-size` clips, of 32, of 320 s of
   audio, and one clip at a time) against the CPU's (in batches of 8, which tests hold
   equal to the reference).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from common import corpus_mix, prepare_model_and_inputs
from throughput import CallMemory, agreement

from higgs_tokenizer import HiggsAudioV2TokenizerModel
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


def largest_allocations(run, top: int) -> list[str]:
    """The `top` largest allocations that `run()` makes, with the Python frames behind each."""
    history = torch.cuda.memory._record_memory_history
    history(enabled="all", context="alloc", stacks="python", max_entries=200_000)
    try:
        run()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        history(enabled=None)
    allocs = [e for trace in snapshot["device_traces"] for e in trace if e.get("action") == "alloc"]
    lines = []
    for event in sorted(allocs, key=lambda e: -e["size"])[:top]:
        frames = [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in event.get("frames", [])
                  if "higgs_tokenizer" in f["filename"] or "functional" in f["filename"] or "conv" in f["filename"]]
        lines.append(f"- {event['size'] / 2**30:.2f} GiB: " + " <- ".join(frames[:6]))
    return lines


def cpu_codes(model_dir: Path, mix: list) -> list[torch.Tensor]:
    torch.set_num_threads(os.cpu_count() or 1)
    model = HiggsAudioV2TokenizerModel.from_pretrained(model_dir, device="cpu", precision="float32")
    with torch.inference_mode():
        return HiggsAudioTokenizer(model, batch_size=8).encode_clips(mix)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--longest", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    model_dir = args.model or prepare_model_and_inputs()[0]
    mix = corpus_mix(args.clips, 1.0, args.longest, 0)
    print(f"# GPU memory and codes: {len(mix)} clips, {torch.cuda.get_device_name(device)}, torch {torch.__version__}\n", flush=True)

    model = HiggsAudioV2TokenizerModel.from_pretrained(model_dir, device=device, precision="float32")
    tokenizer = HiggsAudioTokenizer(model, batch_size=args.batch_size)
    calls = CallMemory(model, device, keep_arguments=True)
    with torch.inference_mode():
        tokenizer.encode_clips(mix)
    peaks = sorted(((peak, i) for i, peak in enumerate(calls.peaks)), reverse=True)
    print(f"calls' peaks (GiB), largest first: {', '.join(f'{p / 2**30:.2f}' for p, _ in peaks)}\n")
    args_, kwargs = calls.arguments[peaks[0][1]]
    batch = args_[0]
    print(f"largest call: input {tuple(batch.shape)}, padding mask {kwargs.get('padding_mask') is not None}\n", flush=True)

    def again():
        with torch.inference_mode():
            return model.encode(*args_, **kwargs)

    torch.cuda.empty_cache()
    try:
        print("its largest allocations (a fresh allocator):")
        print("\n".join(largest_allocations(again, 6)) + "\n", flush=True)
    except Exception as error:  # the history API is private: say so and go on
        print(f"(no allocation history: {error!r})\n")

    cpu_model = HiggsAudioV2TokenizerModel.from_pretrained(model_dir, device="cpu", precision="float32")
    with torch.inference_mode():
        expected = cpu_model.encode(*(a.cpu() if torch.is_tensor(a) else a for a in args_),
                                    **{k: v.cpu() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    expected = expected.audio_codes if hasattr(expected, "audio_codes") else expected
    print("| cuDNN setting | peak (GiB) | reserved after (GiB) | ms | codes equal to the CPU's |\n| --- | --- | --- | --- | --- |")
    settings = {"default": {}, "benchmark": {"benchmark": True}, "deterministic": {"deterministic": True},
                "off": {"enabled": False}}
    for name, flags in settings.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.backends.cudnn.flags(**{"enabled": True, "benchmark": False, "deterministic": False,
                                           "allow_tf32": False, **flags}):
            again()  # kernels chosen
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = again()
            torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t)
        out = out.audio_codes if hasattr(out, "audio_codes") else out
        equal = (out.cpu() == expected).float().mean().item()
        print(f"| {name} | {(torch.cuda.max_memory_allocated(device) - before) / 2**30:.2f} | "
              f"{torch.cuda.memory_reserved(device) / 2**30:.2f} | {ms:.0f} | {100 * equal:.2f} % |", flush=True)

    started = time.perf_counter()
    reference = cpu_codes(model_dir, mix)
    print(f"\nCPU codes (float32, batches of 8) in {time.perf_counter() - started:.0f} s\n")
    print("| GPU batching | codes equal to the CPU's (all / first codebook) |\n| --- | --- |", flush=True)
    for batching in ({"batch_size": args.batch_size}, {"batch_size": 32}, {"batch_seconds": 320.0}, {"batch_size": 1}):
        torch.cuda.empty_cache()
        with torch.inference_mode():
            other = [c.cpu() for c in HiggsAudioTokenizer(model, **batching).encode_clips(mix)]
        print(f"| {batching} | {' / '.join(f'{100 * x:.3f} %' for x in agreement(other, reference))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
