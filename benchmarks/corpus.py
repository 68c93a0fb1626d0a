"""Throughput of tokenize-dataset: items/s and audio hours per hour, local engine and local Ray.

    python benchmarks/corpus.py [--clips 24] [--model DIR ...] [--engines local ray]

Builds a corpus of speech clips (1-5 s, from ../shared/audio) as WAV files, then
tokenizes it with each model and engine into a fresh output directory and
reports the wall time of the whole job (listing, worker and Ray start-up,
decoding, encoding, writing). Default models: the tiny fixture and the
benchmarks' full-size model (common.py; made on first use).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
from common import SHARED, WORK_DIR, prepare_model_and_inputs, recordings

from higgs_tokenizer.dataset import tokenize_dataset
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer

BENCHMARK_MODEL = WORK_DIR / "model"


def make_corpus(root: Path, clips: int, seed: int = 0) -> float:
    speech = recordings()
    rng = random.Random(seed)
    total = 0
    for i in range(clips):
        n = int(rng.uniform(1, 5) * 24000)
        start = rng.randrange(0, len(speech) - n)
        path = root / f"speaker{i % 4}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, speech[start : start + n], 24000)
        total += n
    return total / 24000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--model", nargs="+", default=[str(SHARED / "fixtures" / "tiny-24k"), str(BENCHMARK_MODEL)])
    ap.add_argument("--engines", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    ap.add_argument("--shard-size", type=int, default=8)
    args = ap.parse_args()
    if str(BENCHMARK_MODEL) in args.model:
        prepare_model_and_inputs()

    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    seconds = make_corpus(work / "corpus", args.clips)
    print(f"corpus: {args.clips} clips, {seconds:.1f} s of audio; {os.cpu_count()} CPUs\n")
    print("| model | engine | wall s | items/s | audio h per h |")
    print("|---|---|---|---|---|")
    for model in args.model:
        label = Path(model).name if "fixtures" in model else "full size"
        for engine in args.engines:
            output = work / f"out-{label}-{engine}"
            started = time.perf_counter()
            if engine == "local":
                tokenizer = HiggsAudioTokenizer.from_pretrained(model)
                manifest = tokenize_dataset(work / "corpus", output, tokenizer, shard_size=args.shard_size, progress=False)
            else:
                import ray

                from higgs_tokenizer.dataset.ray_engine import tokenize_dataset_ray

                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                manifest = tokenize_dataset_ray(work / "corpus", output, model, shard_size=args.shard_size, progress=False)
                ray.shutdown()
            wall = time.perf_counter() - started
            assert manifest["counts"]["encoded"] == args.clips, manifest["counts"]
            print(f"| {label} | {engine} | {wall:.1f} | {args.clips / wall:.2f} | {seconds / wall:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
