"""Speed benchmark, side by side with the transformers reference.

    python benchmarks/speed.py                       # CPU, float32, full-size model
    python benchmarks/speed.py --runs 5 --threads all 1 --output docs/benchmark-results.md
    python benchmarks/speed.py --device cuda --dtype float32 bfloat16 float16 --compile

The model is the full-size one (`--config`, by default
../shared/reference/transformers_full_config.json) with seeded random weights:
convs at fan-in scale, varied Snake α, and codebooks drawn around the
residuals each stage quantizes, so every layer shapes the output and codes
vary. It is saved once under `--work-dir` and loaded from disk by both
implementations. Inputs: speech from `--audio-dir` (looped to length; a
seeded synthetic signal when there is none): clips of 1, 10 and 60 s and a
batch of 16 clips of 0.5-5 s.

Every implementation runs in its own process (allocator settings are
process-wide): ours, and the reference when `transformers` with
HiggsAudioV2TokenizerModel is importable (the reference environment of
../shared/tools/setup_reference_env.sh). For each case, thread count and
operation: min and median of `--runs` timed runs after one warm-up; GFLOP
(counted by torch's FLOP counter) and the fraction of the measured matmul
peak; peak memory of one call in a fresh process; checkpoint load time;
import time. Codes are compared item by item (the reference encodes padded
batches wrongly, so its batch items are also encoded alone for the check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    AUDIO_DIR,
    FULL_CONFIG,
    HOP,
    REPO,
    SAMPLE_RATE,
    SEED,
    WORK_DIR,
    PeakRss,
    current_rss,
    matmul_peak,
    prepare_model_and_inputs,
    time_runs,
)

CASES = ("1s", "10s", "60s", "batch16")


# ----------------------------------------------------------------------------- one implementation, one process
class Implementation:
    """Our model or the reference, behind one encode/decode interface."""

    def __init__(self, name: str, model_dir: Path, device: str, dtype: torch.dtype, compile: bool, tf32: bool = False):
        self.name, self.device, self.dtype = name, torch.device(device), dtype
        started = time.perf_counter()
        self.model = self.load(model_dir)
        self.load_seconds = time.perf_counter() - started
        if compile:
            self.model.compile_kernels()
        if name == "reference" and not tf32:
            # Ours runs float32 as float32 on a GPU; the reference gets the same for a fair check.
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        if name == "ours":
            self.model.allow_tf32 = tf32

    def load(self, model_dir: Path):
        if self.name == "ours":
            from higgs_tokenizer import HiggsAudioV2TokenizerModel

            return HiggsAudioV2TokenizerModel.from_pretrained(model_dir, device=self.device, dtype=self.dtype)
        from transformers import HiggsAudioV2TokenizerModel as Reference

        return Reference.from_pretrained(str(model_dir)).to(device=self.device, dtype=self.dtype).eval()

    def encode(self, clips: list[torch.Tensor]):
        """Codes of each clip; a list of several is encoded as one padded batch (ours with its
        padding mask, exact; the reference as its users call it, without)."""
        lengths = [len(c) for c in clips]
        batch = torch.zeros(len(clips), 1, max(lengths), device=self.device, dtype=self.dtype)
        for i, clip in enumerate(clips):
            batch[i, 0, : len(clip)] = clip.to(self.device, self.dtype)
        if len(clips) > 1 and self.name == "ours":
            mask = torch.arange(batch.shape[-1], device=self.device) < torch.tensor(lengths, device=self.device)[:, None]
            out = self.model.encode(batch, padding_mask=mask.long())
            return out.audio_codes, out.code_lengths
        codes = self.model.encode(batch).audio_codes
        return codes, None

    def decode(self, codes: torch.Tensor, code_lengths: torch.Tensor | None):
        if code_lengths is not None:
            return self.model.decode(codes, code_lengths=code_lengths).audio_values
        return self.model.decode(codes).audio_values

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def case_clips(inputs: dict[str, torch.Tensor], case: str) -> list[torch.Tensor]:
    if case == "batch16":
        return [inputs[k] for k in sorted(inputs) if k.startswith("batch16.")]
    return [inputs[case]]


@torch.inference_mode()
def run_worker(spec: dict) -> dict:
    """Times every case in this process; writes codes beside the result."""
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, spec["dtype"])
    impl = Implementation(spec["impl"], Path(spec["model_dir"]), spec["device"], dtype, spec["compile"], spec["tf32"])
    inputs = load_file(spec["inputs"])
    result = {"impl": impl.name, "load_seconds": impl.load_seconds, "rows": [], "peaks": {}}
    codes_out = {}
    default_threads = torch.get_num_threads()
    for threads in spec["threads"]:
        torch.set_num_threads(default_threads if threads == "all" else int(threads))
        result["peaks"][str(threads)] = matmul_peak(impl.device, dtype) if impl.device.type == "cpu" or threads == "all" else None
        for case in spec["cases"]:
            clips = case_clips(inputs, case)
            seconds = sum(len(c) for c in clips) / SAMPLE_RATE
            codes, code_lengths = impl.encode(clips)
            encode_times = time_runs(lambda: impl.encode(clips), spec["runs"], impl.sync)
            decode_times = time_runs(lambda: impl.decode(codes, code_lengths), spec["runs"], impl.sync)
            row = {"case": case, "threads": threads, "seconds": seconds, "encode": encode_times, "decode": decode_times}
            if impl.device.type == "cuda" and threads == spec["threads"][0]:
                row["encode_peak_mib"] = cuda_peak_mib(lambda: impl.encode(clips))
                row["decode_peak_mib"] = cuda_peak_mib(lambda: impl.decode(codes, code_lengths))
            if impl.name == "ours" and threads == spec["threads"][0]:
                row["encode_gflop"], row["decode_gflop"] = count_gflop(impl, clips, codes, code_lengths)
            result["rows"].append(row)
            if threads == spec["threads"][0]:
                for i in range(len(clips)):
                    n = int(code_lengths[i]) if code_lengths is not None else codes.shape[-1]
                    codes_out[f"{case}.{i:02d}"] = codes[i, :, :n].cpu().contiguous()
                if len(clips) > 1 and impl.name == "reference":
                    # Its padded batch encodes the padding as audio; the check uses each clip alone.
                    for i, clip in enumerate(clips):
                        codes_out[f"{case}.{i:02d}"] = impl.encode([clip])[0][0].cpu().contiguous()
    # The first variant's codes decoded here too: what this dtype does to the audio alone.
    saved = load_file(spec["decode_check"]) if spec.get("decode_check") else codes_out
    key = min(k for k in saved if k.startswith(spec["cases"][0] + "."))
    audio = impl.decode(saved[key][None].to(impl.device), None)
    codes_out["audio"] = audio[0, 0].float().cpu().contiguous()
    save_file(codes_out, spec["codes_out"])
    return result


def cuda_peak_mib(fn) -> float:
    """GPU memory one call allocates above what is allocated before it (exact: the caching
    allocator's own statistics, so no fresh process is needed on a GPU)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def count_gflop(impl: Implementation, clips, codes, code_lengths) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    _count_onednn_convs()
    with FlopCounterMode(display=False) as counter:
        impl.encode(clips)
    encode = counter.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as counter:
        impl.decode(codes, code_lengths)
    return encode, counter.get_total_flops() / 1e9


def _count_onednn_convs() -> None:
    """Our decoder calls oneDNN's conv op directly (`layers.onednn_conv1d`), which torch's
    FLOP counter does not know: count it as the conv it is."""
    from torch.utils.flop_counter import conv_flop_count, flop_registry, register_flop_formula

    op = torch.ops.aten.mkldnn_convolution
    if op in flop_registry:  # registered by an earlier count in this process
        return

    @register_flop_formula(op)
    def _flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


@torch.inference_mode()
def run_memory_worker(spec: dict) -> dict:
    """Peak memory of one call in a fresh process, above the loaded model's footprint.
    Decoding takes its codes from the timing run, so no encode inflates the peak."""
    from safetensors.torch import load_file

    dtype = getattr(torch, spec["dtype"])
    impl = Implementation(spec["impl"], Path(spec["model_dir"]), spec["device"], dtype, False, spec["tf32"])
    case = spec["cases"][0]
    clips = case_clips(load_file(spec["inputs"]), case)
    if spec["op"] == "decode":
        saved = load_file(spec["codes"])
        items = [saved[k] for k in sorted(saved) if k.startswith(case + ".")]
        code_lengths = torch.tensor([c.shape[-1] for c in items])
        codes = torch.zeros(len(items), items[0].shape[0], int(code_lengths.max()), dtype=torch.long)
        for i, c in enumerate(items):
            codes[i, :, : c.shape[-1]] = c
        codes = codes.to(impl.device)
        code_lengths = None if len(items) == 1 or impl.name != "ours" else code_lengths
        impl.decode(codes[:1, :, :2], None)  # lazy set-up is not counted
    else:
        impl.encode([clips[0][: 5 * HOP]])
    impl.sync()
    if impl.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss()
    with PeakRss() as sampler:
        if spec["op"] == "encode":
            impl.encode(clips)
        else:
            impl.decode(codes, code_lengths)
        impl.sync()
    if impl.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = sampler.peak - base
    return {"peak_mib": max(0, peak) / 2**20, "load_seconds": impl.load_seconds}


# ----------------------------------------------------------------------------- orchestration and report
def reference_available() -> bool:
    try:
        from transformers import HiggsAudioV2TokenizerModel  # noqa: F401
    except ImportError:
        return False
    return True


def spawn(spec: dict, work_dir: Path, extra_env: dict | None = None) -> dict:
    """Runs one worker in a fresh interpreter and returns its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=work_dir, delete=False) as f:
        json.dump(spec, f)
    result_path = Path(f.name).with_suffix(".result.json")
    env = dict(os.environ, **(extra_env or {}))
    cmd = [sys.executable, __file__, "--worker", f.name, str(result_path)]
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(result_path.read_text())
    os.unlink(f.name)
    os.unlink(result_path)
    return result


def import_seconds(statement: str, setup: str = "", repeats: int = 5) -> float:
    """Seconds `statement` takes in a fresh interpreter after `setup` (min of `repeats`);
    the interpreter imports this checkout's package, as the benchmark does."""
    code = f"import sys, time\nsys.path.insert(0, {str(REPO / 'src')!r})\n{setup}\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(repeats)]
    return min(runs)


def code_agreement(a_path: str, b_path: str) -> tuple[int, int]:
    """(equal codes, total codes) between two workers' codes, item by item."""
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    equal = total = 0
    for key in a:
        if key == "audio":
            continue
        x, y = a[key], b.get(key)
        total += x.numel()
        if y is not None and x.shape == y.shape:
            equal += int((x == y).sum())
    return equal, total


def decode_error(a_path: str, b_path: str) -> tuple[float, float]:
    """(max error relative to the peak, SNR in dB) of one variant's decoded audio against another's."""
    from safetensors.torch import load_file

    a, b = load_file(a_path)["audio"].double(), load_file(b_path)["audio"].double()
    noise = (a - b).pow(2).sum().clamp(min=1e-30)
    return float((a - b).abs().max() / b.abs().max()), float(10 * torch.log10(b.pow(2).sum() / noise))


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def fmt_times(times: list[float]) -> str:
    return f"{min(times):.3f} / {statistics.median(times):.3f}"


def report(args, variants: list[dict], memory: dict, imports: dict, agreement: dict, audio_error: dict) -> str:
    from higgs_tokenizer import __version__

    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python benchmarks/speed.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- machine: {machine_description(args.device)}; {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, higgs-audio-tokenizer {__version__}, Python {platform.python_version()}"
        + (f", transformers {variants[-1].get('transformers', '?')}" if any(v['impl'] == 'reference' for v in variants) else ""),
        "- model: full size, seeded random weights; times in seconds, min / median of "
        f"{args.runs} runs after a warm-up; speed-up = reference min / ours min",
        "",
    ]
    base = variants[0]
    reference = next((v for v in variants if v["impl"] == "reference"), None)
    for threads in args.threads:
        lines += [f"## Threads: {threads}", ""]
        header = "| case | audio s | op | " + " | ".join(v["label"] for v in variants) + (" | speed-up |" if reference else " |")
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for case in args.cases:
            for op in ("encode", "decode"):
                cells, rows = [], []
                for v in variants:
                    row = next((r for r in v["rows"] if r["case"] == case and str(r["threads"]) == str(threads)), None)
                    rows.append(row)
                    cells.append(fmt_times(row[op]) if row else "-")
                seconds = rows[0]["seconds"] if rows[0] else 0
                speedup = ""
                if reference:
                    ref_row = rows[variants.index(reference)]
                    speedup = f" | {min(ref_row[op]) / min(rows[0][op]):.2f}×" if ref_row and rows[0] else " | -"
                lines.append(f"| {case} | {seconds:.1f} | {op} | " + " | ".join(cells) + speedup + " |")
        lines.append("")
    lines += ["## Throughput", "", "Seconds of audio per second (min time), " + f"{args.threads[0]} threads:", ""]
    lines += ["| case | " + " | ".join(f"{v['label']} encode | {v['label']} decode" for v in variants) + " |",
              "|---|" + "---|---|" * len(variants)]
    for case in args.cases:
        cells = []
        for v in variants:
            row = next((r for r in v["rows"] if r["case"] == case and str(r["threads"]) == str(args.threads[0])), None)
            cells += [f"{row['seconds'] / min(row[op]):.1f}" if row else "-" for op in ("encode", "decode")]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "## Codes", "", "| variant | compared with | codes equal |", "|---|---|---|"]
    for (a, b), (equal, total) in agreement.items():
        lines.append(f"| {a} | {b} | {equal}/{total} ({100 * equal / max(total, 1):.3f} %) |")
    lines += ["", f"Decoding the same codes ({variants[0]['label']}'s, case {args.cases[0]}):", "",
              "| variant | compared with | max error / peak | SNR |", "|---|---|---|---|"]
    for (a, b), (error, snr) in audio_error.items():
        lines.append(f"| {a} | {b} | {error:.2e} | {snr:.1f} dB |")
    lines += ["", "## Arithmetic", ""]
    peak = base["peaks"].get(str(args.threads[0]))
    if peak:
        lines += [f"Matmul yardstick (2048² {args.dtype[0]} product, {args.threads[0]} threads): {peak:.0f} GFLOP/s.", ""]
    lines += ["| case | op | GFLOP | GFLOP per audio second | achieved GFLOP/s (ours, min) | of the yardstick |", "|---|---|---|---|---|---|"]
    for row in base["rows"]:
        if str(row["threads"]) != str(args.threads[0]) or "encode_gflop" not in row:
            continue
        for op in ("encode", "decode"):
            gflop = row[f"{op}_gflop"]
            rate = gflop / min(row[op])
            share = f"{100 * rate / peak:.0f} %" if peak else "-"
            lines.append(f"| {row['case']} | {op} | {gflop:.1f} | {gflop / row['seconds']:.1f} | {rate:.0f} | {share} |")
    if memory:
        lines += ["", "## Memory", "", "Peak above the loaded model during one call: "
                  + ("GPU memory allocated (the caching allocator's statistics)." if args.device.startswith("cuda")
                     else "resident set size, sampled every millisecond, in a fresh process."), ""]
        labels = sorted({label for label, _, _ in memory})
        lines += ["| case | op | " + " | ".join(f"{label} MiB" for label in labels) + " |", "|---|---|" + "---|" * len(labels)]
        for case in args.cases:
            for op in ("encode", "decode"):
                cells = [f"{memory[(label, case, op)]['peak_mib']:.0f}" if (label, case, op) in memory else "-" for label in labels]
                lines.append(f"| {case} | {op} | " + " | ".join(cells) + " |")
    lines += ["", "## Start-up", ""]
    for v in variants:
        lines.append(f"- checkpoint load ({v['label']}, from a local directory, in the timing process): {v['load_seconds']:.2f} s")
    for key, value in imports.items():
        lines.append(f"- {key}: {value:.3f} s (min of {args.import_runs} fresh interpreters)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=FULL_CONFIG)
    parser.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--threads", nargs="+", default=None, help="'all' and/or thread counts (CPU default: all 1)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="also time ours with compiled kernels")
    parser.add_argument("--tf32", action="store_true", help="let both implementations run float32 GPU convs in TF32")
    parser.add_argument("--reference", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--tune-reference-allocator", action="store_true",
                        help="give the reference's process the allocator setting ours makes (for attribution)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--import-runs", type=int, default=5, help="fresh interpreters timed per import figure")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--output", type=Path, default=Path("benchmark-results.md"), help="markdown report (and .json beside it)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        result = run_memory_worker(spec) if spec.get("op") else run_worker(spec)
        if spec["impl"] == "reference":
            import transformers

            result["transformers"] = transformers.__version__
        Path(args.worker[1]).write_text(json.dumps(result))
        return 0

    if args.threads is None:
        args.threads = ["all"] if args.device.startswith("cuda") else ["all", "1"]
    use_reference = args.reference == "yes" or (args.reference == "auto" and reference_available())
    if args.reference == "yes" and not reference_available():
        parser.error("--reference yes: transformers with HiggsAudioV2TokenizerModel is not importable here")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"preparing the model and inputs under {args.work_dir} ...", flush=True)
    model_dir, inputs_path = prepare_model_and_inputs(args.work_dir, args.config, args.audio_dir, args.seed)

    variants = []
    plan = [("ours", dtype, False) for dtype in args.dtype] + [("ours", dtype, True) for dtype in args.dtype if args.compile]
    if use_reference:
        plan.append(("reference", args.dtype[0], False))
    for impl, dtype, compiled in plan:
        label = impl + ("" if len(args.dtype) == 1 else f" {dtype}") + (" compiled" if compiled else "")
        print(f"timing {label} ...", flush=True)
        spec = {"impl": impl, "model_dir": str(model_dir), "inputs": str(inputs_path), "device": args.device, "dtype": dtype,
                "decode_check": variants[0]["codes"] if variants else None,
                "compile": compiled, "tf32": args.tf32, "runs": args.runs, "threads": args.threads, "cases": args.cases,
                "codes_out": str(args.work_dir / f"codes-{label.replace(' ', '-')}.safetensors")}
        env = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "2147483647"} if impl == "reference" and args.tune_reference_allocator else None
        result = spawn(spec, args.work_dir, env)
        variants.append({**result, "label": label, "codes": spec["codes_out"], "spec": spec, "env": env})

    agreement, audio_error = {}, {}
    first = variants[0]
    for v in variants[1:]:
        agreement[(v["label"], first["label"])] = code_agreement(v["codes"], first["codes"])
        audio_error[(v["label"], first["label"])] = decode_error(v["codes"], first["codes"])

    memory = {}
    for v in variants:
        for row in v["rows"]:
            for op in ("encode", "decode"):
                if f"{op}_peak_mib" in row:
                    memory[(v["label"], row["case"], op)] = {"peak_mib": row[f"{op}_peak_mib"]}
    if not args.no_memory and not args.device.startswith("cuda"):
        for v in variants:
            if "compiled" in v["label"]:
                continue
            for case in args.cases:
                for op in ("encode", "decode"):
                    print(f"memory {v['label']} {case} {op} ...", flush=True)
                    spec = {**v["spec"], "cases": [case], "op": op, "codes": v["codes"]}
                    memory[(v["label"], case, op)] = spawn(spec, args.work_dir, v["env"])

    imports = {
        "import torch": import_seconds("import torch", repeats=args.import_runs),
        "import higgs_tokenizer, after torch": import_seconds("import higgs_tokenizer", setup="import torch", repeats=args.import_runs),
    }
    text = report(args, variants, memory, imports, agreement, audio_error)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw = {"argv": sys.argv[1:], "variants": [{k: v for k, v in var.items() if k not in ("spec", "env")} for var in variants],
           "memory": {" ".join(k): v for k, v in memory.items()}, "imports": imports,
           "agreement": {" vs ".join(k): v for k, v in agreement.items()},
           "audio_error": {" vs ".join(k): v for k, v in audio_error.items()}}
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
