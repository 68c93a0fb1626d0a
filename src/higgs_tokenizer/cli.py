"""The `higgs-tokenizer` command: encode, decode, roundtrip, info, convert, tokenize-dataset."""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .audio import AUDIO_EXTENSIONS, WRITE_FORMATS, MissingExtraError, write_audio
from .codes_file import SUFFIX
from .checkpoint_files import DEFAULT_MODEL, MODEL_ENV, default_model
from .config import LENGTH_RULES, PRECISION_NAMES

AUDIO_OUTPUT_SUFFIXES = tuple(WRITE_FORMATS)

EXAMPLES = {
    "encode": "examples:\n  higgs-tokenizer encode speech.wav -o codes/\n  higgs-tokenizer encode recordings/ 'more/*.flac' -o codes/ --skip-existing",
    "decode": "examples:\n  higgs-tokenizer decode codes/speech.hac -o decoded/\n  higgs-tokenizer decode codes/ -o decoded/ --format flac",
    "roundtrip": "example:\n  higgs-tokenizer roundtrip speech.wav -o speech.roundtrip.wav",
    "info": "examples:\n  higgs-tokenizer info\n  higgs-tokenizer info /models/higgs-audio-v2-tokenizer",
    "evaluate": "examples:\n  higgs-tokenizer evaluate speech/ --report eval/\n"
    "  higgs-tokenizer evaluate manifest.jsonl --report eval/ --bandwidth 1,2 --precision float32 bfloat16 --max-files 200",
    "convert": "example:\n  higgs-tokenizer convert original_checkpoint/ converted/",
    "serve": "examples:\n  higgs-tokenizer serve --model checkpoint/ --port 8000\n"
    "  higgs-tokenizer serve --model checkpoint/ --device cuda --max-streams 256   # then open http://127.0.0.1:8000/",
    "tokenize-dataset": "examples:\n  higgs-tokenizer tokenize-dataset corpus/ --output tokens/\n"
    "  higgs-tokenizer tokenize-dataset manifest.jsonl --output tokens/ --shard-size 512 --workers 4\n"
    "  higgs-tokenizer tokenize-dataset data.parquet --output tokens/ --engine ray --ray-address auto --num-actors 8 --gpus-per-actor 1",
}


# --------------------------------------------------------------------------- inputs
@dataclass
class Job:
    source: Path
    output: Path


@dataclass
class Report:
    done: int = 0
    skipped: int = 0
    seconds_of_audio: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, what, reason: str, bar=None) -> None:
        reason = reason.removeprefix(f"{what}: ")  # errors from the audio and codes readers name the file too
        self.failures.append((str(what), reason))
        _say(f"FAILED {what}: {reason}", bar)


def collect_jobs(inputs: list[str], out_dir: Path, extensions: frozenset[str], out_suffix: str, report: Report) -> list[Job]:
    """Expand files, directories (recursively) and globs; outputs mirror the input tree under `out_dir`."""
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}

    def add(source: Path, relative: Path) -> None:
        output = out_dir / relative.with_suffix(out_suffix)
        if output in claimed:
            report.fail(source, f"its output {output} is already produced from {claimed[output]}")
            return
        claimed[output] = source
        jobs.append(Job(source, output))

    def add_tree(directory: Path) -> None:
        found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not found:
            report.fail(directory, f"no {'/'.join(sorted(extensions))} files in this directory")
        for path in found:
            add(path, path.relative_to(directory))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            add_tree(path)
        elif path.is_file():
            add(path, Path(path.name))
        elif glob.has_magic(item):
            base = _glob_base(item)
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                report.fail(item, "the pattern matches nothing")
            for match in matches:
                if match.is_dir():
                    add_tree(match)
                elif match.suffix.lower() in extensions:
                    add(match, match.relative_to(base))
        else:
            report.fail(item, "no such file or directory")
    return jobs


def _glob_base(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard: matches are placed relative to it."""
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]) if i else Path(".")
    return Path(pattern).parent


def _say(message: str, bar=None) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def _progress(total: int, quiet: bool, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet or total == 0, file=sys.stderr, dynamic_ncols=True)


def _existing(job: Job, args, report: Report, bar) -> bool:
    """True when the job's output exists and is not to be replaced (skipped or failed)."""
    if not job.output.exists() or args.overwrite:
        return False
    if args.skip_existing:
        report.skipped += 1
    else:
        report.fail(job.source, f"{job.output} exists (use --overwrite or --skip-existing)", bar)
    return True


def _summary(verb: str, report: Report, started: float, quiet: bool) -> int:
    elapsed = time.perf_counter() - started
    if not quiet or report.failures:
        line = f"{verb} {report.done} file(s), {report.seconds_of_audio:.1f} s of audio, in {elapsed:.1f} s"
        if report.skipped:
            line += f"; skipped {report.skipped} existing"
        if report.failures:
            line += f"; {len(report.failures)} FAILED:"
        print(line, file=sys.stderr)
        for what, reason in report.failures:
            print(f"  {what}: {reason}", file=sys.stderr)
    return 1 if report.failures else 0


# --------------------------------------------------------------------------- commands
def _load_tokenizer(args):
    from .tokenizer import HiggsAudioTokenizer

    budget = getattr(args, "memory_budget_gb", None)
    tokenizer = HiggsAudioTokenizer.from_pretrained(
        args.model, device=args.device, precision=args.precision, batch_size=getattr(args, "batch_size", None),
        batch_seconds=getattr(args, "batch_seconds", None),
        length_rule=getattr(args, "length_rule", None), **({"memory_budget_gb": budget} if budget is not None else {}),
    )
    if getattr(args, "bandwidth", None) is not None:
        tokenizer.config.num_quantizers_for_bandwidth(args.bandwidth)  # a bad one stops here, before any work
    return tokenizer


def _single_file_output(inputs: list[str], output: str, suffixes: tuple[str, ...]) -> bool:
    """True when `-o` names the output file of a single input file (by its extension)."""
    return len(inputs) == 1 and Path(inputs[0]).is_file() and Path(output).suffix.lower() in suffixes


def cmd_encode(args) -> int:
    from .tokenizer import num_samples

    started = time.perf_counter()
    report = Report()
    if _single_file_output(args.inputs, args.output, (SUFFIX,)):
        jobs = [Job(Path(args.inputs[0]), Path(args.output))]
    else:
        jobs = collect_jobs(args.inputs, Path(args.output), AUDIO_EXTENSIONS, SUFFIX, report)
    tokenizer = _load_tokenizer(args) if jobs else None
    with _progress(len(jobs), args.quiet, "file") as bar:
        pending = []
        for job in jobs:
            if _existing(job, args, report, bar):
                bar.update(1)
                continue
            try:
                pending.append((job, tokenizer.load(job.source, loudness=args.loudness)))
            except Exception as err:
                report.fail(job.source, _message(err), bar)
                bar.update(1)
            if tokenizer.batch_full([num_samples(clip) for _, clip in pending]):
                _encode_batch(tokenizer, pending, args, report, bar)
                pending = []
        _encode_batch(tokenizer, pending, args, report, bar)
    return _summary("encoded", report, started, args.quiet)


def _encode_batch(tokenizer, pending, args, report: Report, bar) -> None:
    from .tokenizer import num_samples

    if not pending:
        return
    all_codes = tokenizer.try_encode_clips([clip for _, clip in pending], args.bandwidth)
    for (job, clip), codes in zip(pending, all_codes):
        bar.update(1)
        if isinstance(codes, Exception):
            report.fail(job.source, _message(codes), bar)
            continue
        result = tokenizer.as_encoded_audio(codes, num_samples(clip), str(job.source))
        try:
            result.save(job.output)
        except Exception as err:
            report.fail(job.source, f"cannot write {job.output}: {_message(err)}", bar)
            continue
        report.done += 1
        report.seconds_of_audio += result.duration


def cmd_decode(args) -> int:
    started = time.perf_counter()
    report = Report()
    if _single_file_output(args.inputs, args.output, AUDIO_OUTPUT_SUFFIXES):
        jobs = [Job(Path(args.inputs[0]), Path(args.output))]
    else:
        jobs = collect_jobs(args.inputs, Path(args.output), frozenset({SUFFIX}), f".{args.format}", report)
    tokenizer = _load_tokenizer(args) if jobs else None
    from .codes_file import load_codes

    with _progress(len(jobs), args.quiet, "file") as bar:
        for job in jobs:
            bar.update(1)
            if _existing(job, args, report, bar):
                continue
            try:
                encoded = load_codes(job.source)
                audio = tokenizer.decode(encoded)
            except Exception as err:
                report.fail(job.source, _message(err), bar)
                continue
            try:
                write_audio(job.output, audio.numpy(), tokenizer.sample_rate)
            except Exception as err:
                report.fail(job.source, f"cannot write {job.output}: {_message(err)}", bar)
                continue
            report.done += 1
            report.seconds_of_audio += encoded.duration
    return _summary("decoded", report, started, args.quiet)


def cmd_roundtrip(args) -> int:
    import torch

    from .audio import load_audio
    from .tokenizer import num_samples

    output = Path(args.output)
    if output.suffix.lower() not in AUDIO_OUTPUT_SUFFIXES:
        raise ValueError(f"-o {output}: the output must be a {' or '.join(AUDIO_OUTPUT_SUFFIXES)} file")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists (use --overwrite)")
    tokenizer = _load_tokenizer(args)
    t0 = time.perf_counter()
    samples, rate = load_audio(args.input)
    clip = tokenizer.load((samples, rate), loudness=args.loudness)
    t1 = time.perf_counter()
    codes = tokenizer.encode_clips([clip], args.bandwidth)[0]
    t2 = time.perf_counter()
    with torch.inference_mode():
        audio = tokenizer.decode(codes)[: num_samples(clip)]
    t3 = time.perf_counter()
    write_audio(output, audio.numpy(), tokenizer.sample_rate)
    if args.quiet:
        return 0
    duration = len(samples) / rate
    n_q, frames = codes.shape
    bitrate = n_q * math.log2(tokenizer.config.codebook_size) * tokenizer.frame_rate
    resampled = f", resampled to {tokenizer.sample_rate} Hz" if rate != tokenizer.sample_rate else ""
    print(f"input      {args.input}: {duration:.2f} s at {rate} Hz{resampled} (load {t1 - t0:.2f} s)")
    print(f"codes      {frames} frames x {n_q} codebooks at {tokenizer.frame_rate} frames/s = {bitrate / 1000:g} kbps")
    print(f"encode     {t2 - t1:.2f} s, real-time factor {(t2 - t1) / duration:.3f}")
    print(f"decode     {t3 - t2:.2f} s, real-time factor {(t3 - t2) / duration:.3f}")
    print(f"output     {output}: {len(audio) / tokenizer.sample_rate:.2f} s at {tokenizer.sample_rate} Hz")
    return 0


def cmd_info(args) -> int:
    from .checkpoint_files import resolve_checkpoint
    from .tokenizer import HiggsAudioTokenizer

    name = args.model_arg or args.model or default_model()
    directory, fmt = resolve_checkpoint(name, weights=False)
    tokenizer = HiggsAudioTokenizer.from_pretrained(name, device=args.device, precision=args.precision)
    config = tokenizer.config
    params = sum(p.numel() for p in tokenizer.model.parameters())
    bandwidths = ", ".join(f"{b:g} kbps ({config.num_quantizers_for_bandwidth(b)} codebooks)" for b in config.target_bandwidths)
    rows = [
        ("checkpoint", f"{name} ({fmt} format, {directory})"),
        ("parameters", f"{params / 1e6:.1f} M ({tokenizer.model.precision}, {tokenizer.model.device})"),
        ("sample rate", f"{config.sample_rate} Hz (semantic branch {config.semantic_sample_rate} Hz)"),
        ("frame rate", f"{config.frame_rate} frames/s (hop {config.hop_length} samples)"),
        ("codebooks", f"{config.num_quantizers} x {config.codebook_size} (dim {config.codebook_dim})"),
        ("bandwidths", bandwidths),
        ("length rule", config.length_rule),
        ("shortest clip", f"{tokenizer.model.shortest_clip()} samples (unpadded tensors: {tokenizer.model.min_input_length()})"),
        ("config sha256", tokenizer.identity.config_sha256),
    ]
    for key, value in rows:
        print(f"{key:15s} {value}")
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve.app import run
    except ImportError as err:
        raise MissingExtraError(f"serving needs the [serve] extra ({err.name} is missing): "
                                "pip install 'higgs-audio-tokenizer[serve]'") from None
    from .serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, max_streams=args.max_streams, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb, max_audio_seconds=args.max_audio_seconds,
        stream_idle_seconds=args.stream_idle_seconds, compiled_step_streams=args.compile_steps,
        graphed_step_streams=args.graph_steps, max_connections=args.max_connections,
    )
    tokenizer = _load_tokenizer(args)
    tokenizer.batch_size = settings.max_batch
    return run(tokenizer, settings)


def cmd_evaluate(args) -> int:
    import random
    import tempfile

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError("evaluate needs the [eval] extra (matplotlib): pip install 'higgs-audio-tokenizer[eval]'") from None
    from .dataset.sources import MANIFEST_SUFFIXES, Columns, list_items
    from .evaluation.report import write_report
    from .evaluation.runner import aggregate, evaluate, save_results
    from .tokenizer import HiggsAudioTokenizer

    out = Path(args.report)
    if (out / "report.html").exists() and not args.overwrite:
        raise FileExistsError(f"{out / 'report.html'} exists; pass --overwrite to replace it")
    if args.max_files is not None and args.max_files < 1:
        raise ValueError(f"--max-files must be at least 1, got {args.max_files}")
    report = Report()
    files: list[tuple[str, Path]] = []
    plain = [i for i in args.inputs if Path(i).suffix.lower() not in MANIFEST_SUFFIXES or not Path(i).is_file()]
    for n, item in enumerate(plain):  # each input apart: no outputs here to collide
        files += [(str(job.source), job.source) for job in collect_jobs([item], out / str(n), AUDIO_EXTENSIONS, ".json", report)]
    for manifest in (i for i in args.inputs if i not in plain):
        files += [(item.source, Path(item.path)) for item in list_items(manifest, Columns(path=args.path_column)).items]
    if args.max_files is not None and len(files) > args.max_files:
        files = sorted(random.Random(args.seed).sample(files, args.max_files))
    if not files:
        _summary("evaluated", report, time.perf_counter(), args.quiet)
        return 1

    first = HiggsAudioTokenizer.from_pretrained(args.model, device=args.device, precision=args.precision[0])
    available = list(first.config.target_bandwidths)
    if args.bandwidth == "all":
        bandwidths = available
    else:
        try:
            bandwidths = sorted({float(b) for b in args.bandwidth.split(",")})
        except ValueError:
            raise ValueError(f"--bandwidth takes 'all' or kbps separated by commas, got {args.bandwidth!r}") from None
        unknown = [b for b in bandwidths if b not in available]
        if unknown:
            raise ValueError(f"bandwidths {unknown} are not the model's: {available}")
    loaded, device = {args.precision[0]: first}, str(first.model.device)
    del first  # `loaded` holds it while it is the one in use
    precisions = list(dict.fromkeys(args.precision))

    def load_tokenizer(precision):
        if precision not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[precision] = HiggsAudioTokenizer.from_pretrained(args.model, device=args.device, precision=precision)
        return loaded[precision]

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with _progress(len(files) * len(precisions), args.quiet, "file") as bar, \
            tempfile.TemporaryDirectory(dir=out, prefix=".work-") as work:
        evaluation = evaluate(
            load_tokenizer, files, bandwidths, precisions, Path(work),
            progress=bar.update, on_failure=lambda name, reason: report.fail(name, reason, bar),
        )
        aggregates = aggregate(evaluation, args.seed)
        settings = {"bandwidths": bandwidths, "precisions": evaluation.precisions, "seed": args.seed,
                    "max_files": args.max_files, "device": device, "files": len(files)}
        save_results(evaluation, aggregates, out, settings)
        if evaluation.files:
            write_report(evaluation, aggregates, out / "report.html", max_files=args.report_files)
    report.done = len(evaluation.files)
    report.seconds_of_audio = sum(r["duration_s"] for f in evaluation.files for r in f.rows[:1])
    if not args.quiet:
        print(f"report: {out / 'report.html'}", file=sys.stderr)
    return _summary("evaluated", report, started, args.quiet)


def cmd_convert(args) -> int:
    from .model import convert_original_to_transformers

    source, destination = Path(args.source), Path(args.destination)
    if source.exists() and destination.exists() and source.resolve() == destination.resolve():
        raise ValueError(f"{destination} is the source checkpoint: write the converted one to another directory")

    convert_original_to_transformers(args.source, args.destination)
    print(f"wrote a transformers-format checkpoint to {args.destination}")
    return 0


def cmd_tokenize_dataset(args) -> int:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("tokenize-dataset needs pyarrow: pip install 'higgs-audio-tokenizer[dataset]'") from None
    from .dataset.sources import Columns

    columns = Columns(path=args.path_column, id=args.id_column, audio=args.audio_column)
    job = dict(shard_size=args.shard_size, bandwidth=args.bandwidth, overwrite=args.overwrite, progress=not args.quiet, columns=columns)
    started = time.perf_counter()
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ImportError("--engine ray needs Ray: pip install 'higgs-audio-tokenizer[ray]'") from None
        from .dataset.ray_engine import tokenize_dataset_ray

        manifest = tokenize_dataset_ray(
            args.source, args.output, args.model or default_model(), address=args.ray_address,
            num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
            device=args.device, precision=args.precision, length_rule=args.length_rule,
            batch_size=args.batch_size, batch_seconds=args.batch_seconds, **job,
        )
    else:
        from .dataset import tokenize_dataset

        manifest = tokenize_dataset(args.source, args.output, _load_tokenizer(args), workers=args.workers, **job)
    counts = manifest["counts"]
    if not args.quiet:
        print(
            f"{counts['encoded']} of {counts['items']} items encoded ({manifest['total_hours']:.2f} h of audio) "
            f"into {len(manifest['shards'])} shards in {args.output}; {counts['errors']} errors"
            + (" (errors/ lists them)" if counts["errors"] else "")
            + f"; this run {time.perf_counter() - started:.1f} s"
        )
    return 0


def _message(err: Exception) -> str:
    text = str(err)
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.strerror} ({err.filename})"
    return text or type(err).__name__


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default=None,
        help=f"checkpoint directory or Hub id (default: ${MODEL_ENV}, else {DEFAULT_MODEL})",
    )
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cpu)")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary (failures still print)")
    model_options = argparse.ArgumentParser(add_help=False, parents=[common])  # evaluate takes several precisions
    common.add_argument("--precision", "--dtype", dest="precision", choices=list(PRECISION_NAMES), default=None,
                        help="float32 (default: the reference's codes), tf32 (float32 with TF32 on NVIDIA GPUs), "
                        "bfloat16 or float16 (docs/precision.md)")

    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("-o", "--output", required=True,
                       help="output directory (mirrors the input tree); for a single input file, the output file "
                       "when it has the output's extension")
    existing = files.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    existing.add_argument("--skip-existing", action="store_true", help="leave outputs that exist and move on")

    encoding = argparse.ArgumentParser(add_help=False)
    encoding.add_argument("--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)")
    encoding.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                          help="normalise loudness to this many LUFS first (the original uses -23; needs the [loudness] extra)")
    encoding.add_argument("--memory-budget-gb", type=float, default=None, metavar="GB",
                          help="encode a recording in one call while it fits this much memory, in windows beyond "
                          "(default 2)")
    encoding.add_argument("--length-rule", choices=LENGTH_RULES, default=None,
                          help="transformers (default: each clip padded to a whole frame) or original (Boson AI's: unpadded)")

    parser = argparse.ArgumentParser(
        prog="higgs-tokenizer",
        description="Higgs Audio V2 tokenizer: audio files to codes (.hac) and back.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(EXAMPLES.values()),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text, parents):
        return sub.add_parser(
            name, help=help_text, description=help_text, parents=parents,
            epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("encode", "encode audio files, directories (recursively) or globs to codes files", [common, files, encoding])
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--batch-size", type=int, default=None,
                   help="files encoded per model call, exactly (default: 1 on the CPU; on a GPU --batch-seconds 320)")
    p.add_argument("--batch-seconds", type=float, default=None, metavar="S",
                   help="padded audio per model call (clips x the longest), instead of or as well as --batch-size")
    p.set_defaults(run=cmd_encode)

    p = add("decode", "decode codes files (or directories of them) to audio", [common, files])
    p.add_argument("inputs", nargs="+", metavar="CODES")
    p.add_argument("--format", choices=("wav", "flac"), default="wav", help="output format (default wav)")
    p.set_defaults(run=cmd_decode)

    p = add("roundtrip", "encode and decode one file, with timings", [common, encoding])
    p.add_argument("input", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, help="output WAV or FLAC file (at the model's rate, 24 kHz)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(run=cmd_roundtrip)

    p = add("info", "describe a checkpoint", [common])
    p.add_argument("model_arg", nargs="?", metavar="MODEL", help="checkpoint directory or Hub id")
    p.set_defaults(run=cmd_info)

    p = add("tokenize-dataset", "tokenize a corpus into Parquet shards: resumable, errors recorded", [common])
    p.add_argument("--length-rule", choices=LENGTH_RULES, default=None,
                   help="transformers (default) or original; part of the job's plan")
    p.add_argument("source", metavar="SOURCE", help="a directory of audio files, a .jsonl/.csv/.tsv manifest, or .parquet file(s)")
    p.add_argument("-o", "--output", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier output in --output and start again")
    p.add_argument("--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per model call (default: 1 on the CPU; on a GPU --batch-seconds 320)")
    p.add_argument("--batch-seconds", type=float, default=None, metavar="S",
                   help="padded audio per model call (clips x the longest), instead of or as well as --batch-size")
    p.add_argument("--shard-size", type=int, default=256, help="items per output shard (default 256)")
    p.add_argument("--workers", type=int, default=None, help="audio decoding processes (default: half the cores)")
    p.add_argument("--path-column", default="path", help="manifest column with the audio path (default: path)")
    p.add_argument("--id-column", default="id", help="column with the item id, if any (default: id)")
    p.add_argument("--audio-column", default="audio", help="Parquet column with audio bytes or paths (default: audio)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local processes (default) or Ray Data")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join ('auto', 'ray://head:10001'); default: start one here")
    p.add_argument("--num-actors", type=int, default=1, help="Ray: models encoding in parallel (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray: GPUs each model actor takes (default 0)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0,
                   help="Ray: CPUs each model actor takes, and its torch threads (default 1)")
    p.set_defaults(run=cmd_tokenize_dataset)

    p = add("serve", "serve encode and decode over HTTP, and streamed decoding over WebSocket (needs the [serve] extra)",
            [common])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--max-streams", type=int, default=16, help="decode streams open at once (default 16)")
    p.add_argument("--max-batch", type=int, default=8, help="encode requests per model call (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long an encode request waits for others to share its batch (default 10)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body (default 50 MB)")
    p.add_argument("--max-audio-seconds", type=float, default=600.0,
                   help="longest audio to encode, or to decode from codes (default 600)")
    p.add_argument("--stream-idle-seconds", type=float, default=30.0,
                   help="close a stream that sends nothing, a connection that holds no request, and a "
                        "stream's connection after its end, after this long; also how long a request body "
                        "may pause (default 30)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections (streams, requests, idle ones; more than --max-streams); one more is "
                        "answered 503 and closed at once, so that file descriptors stay bounded (default 256)")
    p.add_argument("--compile-steps", type=int, default=0, metavar="N",
                   help="compile the decoder's steps of 1 to N streams before serving (torch.compile: faster "
                        "steps, a minute or more to start; needs a C++ compiler on the CPU; default 0: none)")
    p.add_argument("--graph-steps", type=int, default=0, metavar="N",
                   help="capture the decoder's steps of 1 to N streams as CUDA graphs before serving (with "
                        "--device cuda: a step is one launch instead of hundreds; batches of 1, 2, 4, ... and N, "
                        "fewer streams padded; default 0: none)")
    p.set_defaults(run=cmd_serve)

    p = add("evaluate", "measure what the codec does to audio files: metrics, CSV/JSON and an HTML report "
            "(needs the [eval] extra)", [model_options])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, directories, globs, or .jsonl/.csv/.tsv manifests")
    p.add_argument("--report", required=True, metavar="DIR", help="output directory: report.html, metrics.csv, summary.json")
    p.add_argument("--bandwidth", default="all", help="'all' (default) or a comma-separated list of kbps")
    p.add_argument("--precision", nargs="+", choices=list(PRECISION_NAMES), default=["float32"],
                   help="one or more precisions (default float32); codes are compared with the first")
    p.add_argument("--max-files", type=int, default=None, help="evaluate at most this many files, drawn with --seed")
    p.add_argument("--seed", type=int, default=0, help="for --max-files and the bootstrap intervals (default 0)")
    p.add_argument("--report-files", type=int, default=50, help="files with their own section in the report, worst first (default 50)")
    p.add_argument("--path-column", default="path", help="manifests: the column with the audio path (default: path)")
    p.add_argument("--overwrite", action="store_true", help="replace a report that exists in --report")
    p.set_defaults(run=cmd_evaluate)

    p = add("convert", "convert an original-format checkpoint to the transformers format", [common])
    p.add_argument("source", help="original-format checkpoint (directory or Hub id)")
    p.add_argument("destination", help="directory to write")
    p.set_defaults(run=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        print("higgs-tokenizer: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure of the whole command (model not loadable, ...): say why, no traceback
        print(f"higgs-tokenizer {args.command}: error: {_message(err)}", file=sys.stderr)
        if os.environ.get("HIGGS_TOKENIZER_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
