"""Encoding throughput over a corpus mix: precision modes, batching, memory per model call,
code agreement and decoded quality; ours beside the reference.

    python benchmarks/throughput.py --device cuda                      # the GPU table
    python benchmarks/throughput.py --device cuda --batch-sizes 8 32 --batch-seconds 160 320
    python benchmarks/throughput.py --device cpu --clips 8 --longest 4 # a quick check anywhere

The mix: `--clips` clips of speech (../shared/audio, looped) with durations drawn
log-uniformly from `--shortest` to `--longest` seconds (seeded): by default 128 clips of
1-20 s, about 800 s of audio, most of them short, as in a corpus. Ours encodes it
through `HiggsAudioTokenizer.encode_clips` (length-sorted exact batches) for every
precision and batching asked for; the reference (transformers, when importable) in
padded batches of `--reference-batch`, as its users call it, in full float32 and with
PyTorch's default on a GPU (TF32 convs).

Reported per row: audio seconds per second (one timed pass after a warm-up pass), the
largest memory any one model call took above what was allocated before it, and what the
allocator keeps reserved after the pass, the model included (GPU only); codes equal to ours in float32 (all
codebooks, and the first); and with `--quality`, the mel distance of each clip decoded in
that precision to its original (mean; measured with each precision's first batching). The reference's codes for a padded batch are wrong
for its shorter clips (it has no padding mask), so its agreement is measured on clips
encoded alone, untimed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import SAMPLE_RATE, corpus_mix, device_sync, prepare_model_and_inputs
from speed import Implementation

from higgs_tokenizer import HiggsAudioV2TokenizerModel
from higgs_tokenizer.evaluation.metrics import mel_distance
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


class CallMemory:
    """Each call of `model.encode`: on a GPU, the most memory it took above what was allocated
    before it (the caching allocator's own count: no synchronisation needed); with
    `keep_arguments`, also what it was called with (`arguments`: (args, kwargs) a call),
    which keeps them alive."""

    def __init__(self, model, device: torch.device, keep_arguments: bool = False):
        self.peaks: list[int | None] = []
        self.arguments: list[tuple[tuple, dict]] = []
        cuda, encode = device.type == "cuda", model.encode

        def measured(*args, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            out = encode(*args, **kwargs)
            self.peaks.append(torch.cuda.max_memory_allocated(device) - before if cuda else None)
            if keep_arguments:
                self.arguments.append((args, kwargs))
            return out

        model.encode = measured  # this instance only


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call of `fn`, the device's work included."""
    sync = device_sync(device)
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - started, out


def agreement(codes: list[torch.Tensor], baseline: list[torch.Tensor]) -> tuple[float, float]:
    """Fractions of codes equal to the baseline's: all codebooks, and the first."""
    equal = sum(int((a == b).sum()) for a, b in zip(codes, baseline))
    first = sum(int((a[0] == b[0]).sum()) for a, b in zip(codes, baseline))
    return equal / sum(b.numel() for b in baseline), first / sum(b.shape[-1] for b in baseline)


def reserved_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_reserved(device) / 2**30 if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """The last run's model is gone: give its cached blocks back, so the next run starts bare."""
    gc.collect()  # a model held by a reference cycle would otherwise stay
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def run_ours(model_dir: Path, device: torch.device, precision: str, batching: dict, mix: list, quality: bool) -> dict:
    model = HiggsAudioV2TokenizerModel.from_pretrained(model_dir, device=device, precision=precision)
    tokenizer = HiggsAudioTokenizer(model, **batching)
    memory = CallMemory(model, device)
    tokenizer.encode_clips(mix)  # warm-up: kernels chosen, allocator grown
    memory.peaks.clear()
    seconds, codes = timed(lambda: tokenizer.encode_clips(mix), device)
    peaks = [p for p in memory.peaks if p is not None]
    row = {"seconds": seconds, "codes": codes, "peak": max(peaks, default=None), "calls": len(memory.peaks),
           "reserved": reserved_gib(device)}
    if quality:
        distances = []
        for clip, clip_codes in zip(mix, codes):
            decoded = tokenizer.decode(clip_codes).float().cpu().numpy()[: len(clip)]
            distances.append(mel_distance(clip, decoded, SAMPLE_RATE))
        row["mel"] = float(np.mean(distances))
    return row


@torch.inference_mode()
def run_reference(model_dir: Path, device: torch.device, tf32: bool, batch: int, mix: list, check: bool) -> dict:
    """The reference in padded batches of `batch` (speed.py's `Implementation`: as its users call
    it, without a padding mask), in full float32 or with PyTorch's default on a GPU (TF32
    convs, float32 matrix products)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if tf32:  # PyTorch's defaults, which `Implementation` leaves as they are when told tf32
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    try:
        return _reference_row(model_dir, device, tf32, batch, mix, check)
    finally:  # as they were: the rows after it must not run under the reference's settings
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _reference_row(model_dir: Path, device: torch.device, tf32: bool, batch: int, mix: list, check: bool) -> dict:
    reference = Implementation("reference", model_dir, str(device), torch.float32, compile=False, tf32=tf32)
    clips = sorted((torch.from_numpy(clip) for clip in mix), key=lambda clip: -len(clip))

    def encode_padded():
        for start in range(0, len(clips), batch):
            reference.encode(clips[start : start + batch])

    encode_padded()  # warm-up
    seconds, _ = timed(encode_padded, device)
    row = {"seconds": seconds, "reserved": reserved_gib(device)}
    if check:  # each clip alone: the codes its users would get without padding
        row["codes"] = [reference.encode([torch.from_numpy(clip)])[0][0].cpu() for clip in mix]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: full size, random weights)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--shortest", type=float, default=1.0)
    ap.add_argument("--longest", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", nargs="+", default=["float32", "tf32", "bfloat16"],
                    choices=["float32", "tf32", "bfloat16", "float16"])
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 32], help="clips per model call")
    ap.add_argument("--batch-seconds", type=float, nargs="*", default=[160, 320, 640],
                    help="padded audio seconds per model call")
    ap.add_argument("--reference", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--reference-batch", type=int, default=16)
    ap.add_argument("--quality", action="store_true", help="decode every clip and measure its mel distance")
    ap.add_argument("--output", type=Path, default=None, help="also write the report here (markdown)")
    args = ap.parse_args(argv)
    if not args.precisions or args.precisions[0] != "float32":
        ap.error("--precisions must start with float32: the others are compared with it")
    device = torch.device(args.device)
    model_dir = args.model or prepare_model_and_inputs()[0]
    mix = corpus_mix(args.clips, args.shortest, args.longest, args.seed)
    audio_seconds = sum(map(len, mix)) / SAMPLE_RATE
    lines = [f"# Encoding throughput: {args.clips} clips of {args.shortest:g}-{args.longest:g} s "
             f"({audio_seconds:.0f} s of audio), {device}", "",
             f"torch {torch.__version__}; model: {model_dir}" + (f"; {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""), "",
             "| implementation | precision | batching | audio s/s | largest call (GiB) | calls | reserved after (GiB) "
             "| codes equal to ours float32 (all / first codebook) | mel distance to the original |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)

    def report(name, precision, batching, row, baseline):
        equal = agreement(row["codes"], baseline) if "codes" in row and baseline is not None else None
        cells = [name, precision, batching, f"{audio_seconds / row['seconds']:.0f}",
                 "-" if row.get("peak") is None else f"{row['peak'] / 2**30:.2f}", str(row.get("calls", "-")),
                 "-" if row["reserved"] is None else f"{row['reserved']:.2f}",
                 "-" if equal is None else f"{100 * equal[0]:.2f} % / {100 * equal[1]:.2f} %",
                 f"{row['mel']:.3f}" if "mel" in row else "-"]
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    batchings = [({"batch_size": b}, f"{b} clips") for b in args.batch_sizes]
    batchings += [({"batch_seconds": s}, f"{s:g} s of audio") for s in args.batch_seconds]
    if not batchings:
        ap.error("give at least one of --batch-sizes and --batch-seconds")
    reference = args.reference == "yes"
    if args.reference == "auto":
        try:
            from transformers import HiggsAudioV2TokenizerModel  # noqa: F401

            reference = True
        except ImportError:
            print("(no transformers with HiggsAudioV2TokenizerModel here: the reference is left out)")
    baseline = None
    for precision in args.precisions:
        for n, (batching, label) in enumerate(batchings):
            row = run_ours(model_dir, device, precision, batching, mix, args.quality and n == 0)
            release(device)
            baseline = baseline if baseline is not None else row["codes"]
            report("ours", precision, label, row, baseline)
            if reference:  # right after the baseline, so that a run cut short still compares the two
                reference = False
                for tf32 in (False, True):
                    try:
                        ref_row = run_reference(model_dir, device, tf32, args.reference_batch, mix, check=not tf32)
                    except Exception as error:  # another transformers than the one we know: ours still stand
                        print(f"(the reference failed: {error!r})", flush=True)
                        break
                    finally:
                        release(device)
                    report("reference", "tf32" if tf32 else "float32", f"{args.reference_batch} clips, padded", ref_row, baseline)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
