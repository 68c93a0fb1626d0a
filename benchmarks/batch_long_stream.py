"""Benchmarks for exact batching and long recordings (streamed decoding: benchmarks/streaming.py).

    python benchmarks/batch_long_stream.py batch            # padded batch vs one by one
    python benchmarks/batch_long_stream.py exactness --batch-sizes 1 2 3 4 5 6 7 8
    python benchmarks/batch_long_stream.py memory --minutes 1 10 60
    python benchmarks/batch_long_stream.py memory-estimate --lengths 10 30 60 90 120
    python benchmarks/batch_long_stream.py agreement --seconds 120 --contexts 1 2 5 10

The model is the benchmarks' full-size one with seeded random weights (common.py;
made on first use), or `--model DIR` for a checkpoint. Speech comes from
../shared/audio. Each section prints a small table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import prepare_model_and_inputs, recordings

from higgs_tokenizer import HiggsAudioV2TokenizerModel
from higgs_tokenizer.long_audio import SampleSource, encode_long
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


def bench_batch(args, model):
    audio = recordings()
    rng = np.random.default_rng(0)
    clips = []
    for _ in range(args.clips):
        n = int(rng.uniform(1, 15) * 24000)
        start = int(rng.integers(0, len(audio) - n))
        clips.append(audio[start : start + n])
    seconds = sum(len(c) for c in clips) / 24000
    print(f"{len(clips)} clips, {seconds:.1f} s of speech (1-15 s each), {torch.get_num_threads()} threads")
    print("| batch size | seconds | audio s per s |\n| --- | --- | --- |")
    results = {}
    for batch_size in args.batch_sizes:
        tokenizer = HiggsAudioTokenizer(model, batch_size=batch_size)
        with torch.inference_mode():
            tokenizer.encode([(c, 24000) for c in clips[:2]])  # warm-up
            t0 = time.perf_counter()
            results[batch_size] = tokenizer.encode([(c, 24000) for c in clips])
            elapsed = time.perf_counter() - t0
        print(f"| {batch_size} | {elapsed:.1f} | {seconds / elapsed:.2f} |", flush=True)
    base = results[args.batch_sizes[0]]
    for batch_size, codes in results.items():
        equal = sum(int((a == b).sum()) for a, b in zip(codes, base)) / sum(b.numel() for b in base)
        print(f"batch size {batch_size}: {100 * equal:.3f} % of codes equal to batch size {args.batch_sizes[0]}")


def bench_exactness(args, model):
    """Batches of 1 to 8 clips of 0.1-15 s: each item's embeddings and codes vs the clip alone
    (padded to a whole hop, as the feature extractor pads one clip)."""
    audio = recordings()
    rng = np.random.default_rng(1)
    worst, equal, total = 0.0, 0, 0
    with torch.inference_mode():
        for batch_size in args.batch_sizes:
            clips = []
            for _ in range(batch_size):
                n = int(rng.uniform(0.1, 15) * 24000)
                start = int(rng.integers(0, len(audio) - n))
                clips.append(audio[start : start + n])
            x = torch.zeros(len(clips), 1, max(len(c) for c in clips))
            for i, c in enumerate(clips):
                x[i, 0, : len(c)] = torch.from_numpy(c)
            mask = (torch.arange(x.shape[-1]) < torch.tensor([len(c) for c in clips])[:, None]).long()
            batched, frames = model.latents(x, mask)
            codes = model.encode(x, padding_mask=mask).audio_codes
            for i, c in enumerate(clips):
                # The clip alone is what the feature extractor makes of it: padded to its valid length.
                alone = torch.from_numpy(np.pad(c, (0, model.valid_length(len(c)) - len(c))))[None, None]
                embedding = model.latents(alone)[0][0]
                t = int(frames[i])
                worst = max(worst, float((batched[i, :t] - embedding).norm() / embedding.norm()))
                reference = model.encode(alone).audio_codes[0]
                equal += int((codes[i, :, :t] == reference).sum())
                total += reference.numel()
            print(f"batch of {batch_size}: clips of {', '.join(f'{len(c) / 24000:.1f}' for c in clips)} s", flush=True)
    print(f"largest relative embedding difference (|batched - alone| / |alone|): {worst:.2e}; "
          f"codes identical: {equal}/{total} ({100 * equal / total:.3f} %)")


def bench_memory(args, model_path):
    """Peak resident memory of encoding a WAV file of each length, each in a fresh process."""
    print("| audio | peak RSS (MiB) | encode seconds | real-time factor |\n| --- | --- | --- | --- |")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "long.wav"
            make_long_wav(path, minutes * 60)
            # The child imports common for what every benchmark gets from it: this checkout's package.
            code = (
                "import sys, time, resource, torch; sys.path.insert(0, %r); import common\n"
                "from higgs_tokenizer.tokenizer import HiggsAudioTokenizer\n"
                "tok = HiggsAudioTokenizer.from_pretrained(%r)\n"
                "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
                "t = time.perf_counter()\n"
                "with torch.inference_mode(): codes = tok.encode(%r)\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t, codes.shape[1], base / 1024)\n"
            ) % (str(Path(__file__).parent), str(model_path), str(path))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            peak, seconds, frames, base = float(out[0]), float(out[1]), int(out[2]), float(out[3])
            print(f"| {minutes:g} min ({frames} frames) | {peak:.0f} (model loaded: {base:.0f}) | {seconds:.0f} | {seconds / (minutes * 60):.3f} |", flush=True)


def make_long_wav(path: Path, seconds: float) -> None:
    import soundfile as sf

    audio = recordings()
    reps = int(np.ceil(seconds * 24000 / len(audio)))
    with sf.SoundFile(str(path), "w", 24000, 1, subtype="PCM_16") as f:
        for _ in range(reps):
            f.write(audio)
    with sf.SoundFile(str(path), "r+") as f:
        f.truncate(int(seconds * 24000))


def bench_memory_estimate(args, model_path):
    """Peak memory of one one-shot encode (above the memory before it; fresh process per
    length) against `long_audio.encode_memory_bytes`, the estimate the one-shot-or-windowed
    policy uses."""
    print("| audio | measured peak (MiB) | estimate (MiB) | estimate / measured |\n| --- | --- | --- | --- |")
    code = (
        "import sys, numpy as np, torch; sys.path.insert(0, %r)\n"
        "from common import PeakRss, current_rss, recordings\n"
        "from higgs_tokenizer import HiggsAudioV2TokenizerModel\n"
        "from higgs_tokenizer.long_audio import encode_memory_bytes\n"
        "model = HiggsAudioV2TokenizerModel.from_pretrained(%r)\n"
        "n = int(float(sys.argv[1]) * 24000) // 960 * 960\n"
        "audio = recordings(); x = torch.from_numpy(np.tile(audio, 1 + n // len(audio))[:n])[None, None]\n"
        "with torch.inference_mode():\n"
        "    model.encode(x[..., :24000])  # warm-up\n"
        "    base = current_rss()\n"
        "    with PeakRss() as peak:\n"
        "        model.encode(x)\n"
        "print((peak.peak - base) / 2**20, encode_memory_bytes(model, n) / 2**20)\n"
    ) % (str(Path(__file__).parent), str(model_path))
    for seconds in args.lengths:
        out = subprocess.run([sys.executable, "-c", code, str(seconds)], capture_output=True, text=True, check=True)
        measured, estimate = (float(v) for v in out.stdout.split())
        print(f"| {seconds:g} s | {measured:.0f} | {estimate:.0f} | {estimate / measured:.2f} |", flush=True)


def bench_agreement(args, model):
    """Windowed against one-shot codes on the same recording, for each context length."""
    audio = recordings()
    samples = np.tile(audio, int(np.ceil(args.seconds * 24000 / len(audio))))[: int(args.seconds * 24000)]
    samples = samples[: len(samples) // 960 * 960]
    with torch.inference_mode():
        t0 = time.perf_counter()
        one_shot = model.encode(torch.from_numpy(samples)[None, None]).audio_codes[0]
        print(f"{args.seconds:g} s of speech, one-shot {time.perf_counter() - t0:.1f} s; windows of {args.window:g} s")
        print("| context each side | codes equal to one-shot | first codebook | windowed seconds |\n| --- | --- | --- | --- |")
        for context in args.contexts:
            t1 = time.perf_counter()
            windowed = encode_long(model, SampleSource.from_array(samples), window_seconds=args.window, context_seconds=context)
            elapsed = time.perf_counter() - t1
            equal = (windowed == one_shot).float().mean().item()
            first = (windowed[0] == one_shot[0]).float().mean().item()
            print(f"| {context:g} s | {100 * equal:.2f} % | {100 * first:.2f} % | {elapsed:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["batch", "exactness", "memory", "memory-estimate", "agreement"])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: full size, random weights)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--lengths", type=float, nargs="+", default=[10, 30, 60, 90, 120], help="memory-estimate: seconds")
    ap.add_argument("--window", type=float, default=30, help="agreement: window seconds")
    ap.add_argument("--contexts", type=float, nargs="+", default=[5], help="agreement: context seconds on each side")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, model: {args.model or 'full size, random weights'}")
    model_path = args.model or prepare_model_and_inputs()[0]
    if args.section in ("memory", "memory-estimate"):
        (bench_memory if args.section == "memory" else bench_memory_estimate)(args, model_path)
        return
    model = HiggsAudioV2TokenizerModel.from_pretrained(model_path)
    sections = {"batch": bench_batch, "exactness": bench_exactness, "agreement": bench_agreement}
    sections[args.section](args, model)


if __name__ == "__main__":
    main()
