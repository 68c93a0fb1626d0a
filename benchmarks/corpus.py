"""Throughput of tokenize-dataset: items/s and audio hours per hour, local engine and local Ray,
beside the model alone on the same clips.

    python benchmarks/corpus.py [--clips 24] [--model DIR ...] [--engines local ray command]
    python benchmarks/corpus.py --clips 128 --longest 20 --model DIR --engines local command --device cuda

Builds a corpus of speech clips (`--shortest` to `--longest` s, log-uniform, from
../shared/audio: common.corpus_mix) as WAV files, then tokenizes it with each model and
engine into a fresh output directory and reports the wall time of the whole job
(listing, worker and Ray start-up, decoding, encoding, writing). "model only" is the
same clips, already in memory, encoded by `HiggsAudioTokenizer.encode_clips` with the
same settings: what the job would reach if reading, decoding and writing cost nothing;
its first pass meets every batch shape for the first time, as a job does (cuDNN chooses
its kernels for each new shape), the second meets them again. The job runs after both,
in the same process: the shapes it shares with them are no longer new to it. The
"command" engine is the local engine as a user runs it: `higgs-tokenizer tokenize-dataset`
in a process of its own, its wall time from the process's start (imports, loading the
model) to its exit. For each job, "first shard" is when its first shard was committed,
and "after it" the audio of the other shards over the time between the first commit and
the last: the job's rate once started, what a corpus of many hours gets (the commit times
are the data files' modification times: each is renamed into place when written). Default models: the tiny fixture and the benchmarks' full-size
model (common.py; made on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
from common import SAMPLE_RATE, SHARED, SRC, WORK_DIR, corpus_mix, device_sync, prepare_model_and_inputs, time_runs

from higgs_tokenizer.dataset import tokenize_dataset
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer

BENCHMARK_MODEL = WORK_DIR / "model"


def make_corpus(root: Path, clips: list) -> None:
    for i, clip in enumerate(clips):
        path = root / f"speaker{i % 4}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, clip, SAMPLE_RATE, subtype="FLOAT")  # the samples as they are: the same codes as in memory


def model_only_seconds(tokenizer: HiggsAudioTokenizer, clips: list) -> tuple[float, float]:
    """Wall times of encoding the clips in memory: the first pass (each batch shape new to
    the process, as in a job, where shapes seldom repeat) and a second pass."""
    sync = device_sync(tokenizer.model.device)
    started = time.perf_counter()
    tokenizer.encode_clips(clips)
    sync()
    return time.perf_counter() - started, time_runs(lambda: tokenizer.encode_clips(clips), 1, sync)[0]


def command_job(corpus: Path, output: Path, model: str, shard_size: int, settings: dict) -> dict:
    """tokenize-dataset run as a user runs it, in a process of its own; its manifest."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items() if value is not None]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run([sys.executable, "-m", "higgs_tokenizer.cli", "tokenize-dataset", str(corpus), "-o", str(output),
                    "--model", model, "--shard-size", str(shard_size), "-q", *flags], check=True, env=env)
    return json.loads((output / "dataset.json").read_text())


def shard_commits(output: Path) -> list[tuple[float, float]]:
    """(commit time, audio seconds) of each shard with a data file, in commit order."""
    import pyarrow.parquet as pq

    return sorted((path.stat().st_mtime, float(pq.read_table(path, columns=["duration"])["duration"].to_numpy().sum()))
                  for path in (output / "data").glob("*.parquet"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--shortest", type=float, default=1.0)
    ap.add_argument("--longest", type=float, default=5.0)
    ap.add_argument("--model", nargs="+", default=[str(SHARED / "fixtures" / "tiny-24k"), str(BENCHMARK_MODEL)])
    ap.add_argument("--engines", nargs="+", choices=("local", "ray", "command"), default=["local", "ray", "command"])
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--device", default=None, help="the model's device (default: the library's)")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--batch-seconds", type=float, default=None)
    args = ap.parse_args()
    if str(BENCHMARK_MODEL) in args.model:
        prepare_model_and_inputs()

    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    clips = corpus_mix(args.clips, args.shortest, args.longest, seed=0)
    make_corpus(work / "corpus", clips)
    seconds = sum(map(len, clips)) / SAMPLE_RATE
    settings = {"device": args.device, "precision": args.precision, "batch_size": args.batch_size,
                "batch_seconds": args.batch_seconds}
    print(f"corpus: {args.clips} clips of {args.shortest:g}-{args.longest:g} s, {seconds:.1f} s of audio; "
          f"{os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None) + "\n")
    print("| model | engine | wall s | items/s | audio h per h | first shard s | after it, audio h per h |")
    print("|---|---|---|---|---|---|---|")
    for model in args.model:
        label = Path(model).name if "fixtures" in model else "full size"
        with torch.inference_mode():
            walls = model_only_seconds(HiggsAudioTokenizer.from_pretrained(model, **settings), clips)
        for wall, name in zip(walls, ("model only, first pass", "model only, again")):
            print(f"| {label} | {name} | {wall:.1f} | {args.clips / wall:.2f} | {seconds / wall:.2f} | | |", flush=True)
        for engine in args.engines:
            output = work / f"out-{label}-{engine}"
            started, start_time = time.perf_counter(), time.time()
            if engine == "command":
                manifest = command_job(work / "corpus", output, model, args.shard_size, settings)
            elif engine == "local":
                tokenizer = HiggsAudioTokenizer.from_pretrained(model, **settings)
                manifest = tokenize_dataset(work / "corpus", output, tokenizer, shard_size=args.shard_size, progress=False)
            else:
                import ray

                from higgs_tokenizer.dataset.ray_engine import tokenize_dataset_ray

                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                gpus = 1.0 if (args.device or "").startswith("cuda") else 0.0
                manifest = tokenize_dataset_ray(work / "corpus", output, model, shard_size=args.shard_size, progress=False,
                                                gpus_per_actor=gpus, **settings)
                ray.shutdown()
            wall = time.perf_counter() - started
            assert manifest["counts"]["encoded"] == args.clips, manifest["counts"]
            commits = shard_commits(output)
            first = f"{commits[0][0] - start_time:.1f}"
            later = "(one shard)"
            if len(commits) > 1 and commits[-1][0] > commits[0][0]:
                later = f"{sum(audio for _, audio in commits[1:]) / (commits[-1][0] - commits[0][0]):.2f}"
            print(f"| {label} | {engine} | {wall:.1f} | {args.clips / wall:.2f} | {seconds / wall:.2f} | {first} | {later} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
