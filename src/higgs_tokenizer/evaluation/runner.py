"""Every file through the codec at every bandwidth and precision, measured.

A file is encoded once per precision, at the highest bandwidth asked for: the codes of a
lower bandwidth are the first quantizers' codes of a higher one (each quantizer codes
what the ones before it left), so every bandwidth is decoded from them. Each row of the
result is one file at one precision and bandwidth; `aggregate` gives each setting's mean
with a 95 % bootstrap interval over the files. What the report needs of each file (the
original, one reconstruction, its codes) is kept on disk, not in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics

METRICS = ("stft_distance", "mel_distance", "si_sdr", "snr")  # always computed
SPEECH_METRICS = ("stoi", "pesq")  # when their packages are installed
LOWER_IS_BETTER = frozenset({"stft_distance", "mel_distance", "real_time_factor"})
BOOTSTRAP_RESAMPLES = 2000


@dataclass
class FileResult:
    name: str
    rows: list[dict] = field(default_factory=list)
    artifact: Path | None = None  # .npz: original, reconstruction, codes of the report's setting


@dataclass
class Evaluation:
    model: str
    sample_rate: int
    bandwidths: list[float]
    precisions: list[str]
    files: list[FileResult]
    failures: list[tuple[str, str]]

    @property
    def rows(self) -> list[dict]:
        return [row for f in self.files for row in f.rows]

    @property
    def report_setting(self) -> tuple[str, float]:
        """The (precision, bandwidth) whose reconstructions the report plays and draws."""
        return self.precisions[0], max(self.bandwidths)


def evaluate(load_tokenizer, files: list[tuple[str, Path]], bandwidths: list[float], precisions: list[str],
             work_dir: Path, speech: bool = True, progress=None, on_failure=None) -> Evaluation:
    """`load_tokenizer(precision)` gives a `HiggsAudioTokenizer`; `files` are (name, path)
    pairs. `progress(n)` is called as work is done (n file-precisions); `on_failure(name,
    reason)` for each file that cannot be evaluated (it is left out, the others go on)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Keyed by position: two inputs may carry the same name (two manifests, say).
    results = [FileResult(name) for name, _ in files]
    reference_codes: dict[int, torch.Tensor] = {}  # file -> codes at the first precision
    failed: dict[int, str] = {}
    tokenizer = None
    for precision in precisions:
        tokenizer = load_tokenizer(precision)
        config = tokenizer.config
        unknown = [b for b in bandwidths if b not in config.target_bandwidths]
        if unknown:
            raise ValueError(f"bandwidths {unknown} are not the model's: {list(config.target_bandwidths)}")
        for index, (name, path) in enumerate(files):
            if index in failed:
                continue
            try:
                _evaluate_file(tokenizer, precision, precisions, bandwidths, index, path, results[index],
                               reference_codes, work_dir, speech)
            except Exception as err:  # one bad file must not stop the others
                failed[index] = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
                results[index].rows.clear()
                if on_failure is not None:
                    on_failure(name, failed[index])
            if progress is not None:
                progress(1)
    return Evaluation(
        model=tokenizer.name if tokenizer is not None else "",
        sample_rate=tokenizer.sample_rate if tokenizer is not None else 0,
        bandwidths=sorted(bandwidths),
        precisions=list(precisions),
        files=[result for index, result in enumerate(results) if index not in failed],
        failures=sorted((files[index][0], reason) for index, reason in failed.items()),
    )


def _evaluate_file(tokenizer, precision, precisions, bandwidths, index, path, result: FileResult,
                   reference_codes: dict, work_dir: Path, speech: bool) -> None:
    audio = tokenizer.load(path)
    if not isinstance(audio, np.ndarray):  # a long recording streamed from disk: evaluate it whole
        audio = audio.read(0, audio.num_samples)
    rate, duration = tokenizer.sample_rate, len(audio) / tokenizer.sample_rate
    started = time.perf_counter()
    codes = tokenizer.encode((audio, rate), bandwidth=max(bandwidths))
    encode_seconds = time.perf_counter() - started
    first = precisions[0]
    if precision == first:
        reference_codes[index] = codes
    for bandwidth in sorted(bandwidths):
        n_q = tokenizer.config.num_quantizers_for_bandwidth(bandwidth)
        started = time.perf_counter()
        decoded = tokenizer.decode(codes[:n_q]).numpy()[: len(audio)]
        decode_seconds = time.perf_counter() - started
        decoded = np.pad(decoded, (0, len(audio) - len(decoded)))
        row = {
            "file": result.name, "precision": precision, "bandwidth_kbps": bandwidth, "num_quantizers": n_q,
            "bitrate_bps": n_q * math.log2(tokenizer.config.codebook_size) * tokenizer.frame_rate,
            "duration_s": duration, "encode_s": encode_seconds, "decode_s": decode_seconds,
            "real_time_factor": (encode_seconds + decode_seconds) / duration,
            "stft_distance": metrics.stft_distance(audio, decoded),
            "mel_distance": metrics.mel_distance(audio, decoded, rate),
            "si_sdr": metrics.si_sdr(audio, decoded),
            "snr": metrics.snr(audio, decoded),
        }
        if speech:
            row.update(metrics.speech_metrics(audio, decoded, rate))
        first_codes = reference_codes[index][:n_q]
        row["codes_agree"] = float((codes[:n_q] == first_codes).float().mean())
        row["first_codebook_agrees"] = float((codes[0] == first_codes[0]).float().mean())
        result.rows.append(row)
        if (precision, bandwidth) == (first, max(bandwidths)):
            result.artifact = work_dir / f"{index:06d}.npz"
            np.savez(result.artifact, original=audio, reconstruction=decoded.astype(np.float32), codes=codes[:n_q].numpy())


def aggregate(evaluation: Evaluation, seed: int) -> list[dict]:
    """Per (precision, bandwidth): each metric's mean over the files with a 95 % percentile
    bootstrap interval (`seed` fixes the resampling), and the mean bitrate and RTF."""
    rng = np.random.default_rng(seed)
    rows = evaluation.rows
    names = [m for m in (*METRICS, *SPEECH_METRICS, "real_time_factor", "codes_agree", "first_codebook_agrees")
             if any(m in r for r in rows)]
    out = []
    for precision in evaluation.precisions:
        for bandwidth in evaluation.bandwidths:
            selected = [r for r in rows if r["precision"] == precision and r["bandwidth_kbps"] == bandwidth]
            if not selected:
                continue
            entry = {"precision": precision, "bandwidth_kbps": bandwidth, "files": len(selected),
                     "bitrate_bps": selected[0]["bitrate_bps"]}
            for name in names:
                values = np.array([r[name] for r in selected if name in r], dtype=np.float64)
                entry[name] = _mean_interval(values, rng)
            out.append(entry)
    return out


def _mean_interval(values: np.ndarray, rng: np.random.Generator) -> dict:
    """{"mean", "low", "high"}; infinite values (a perfect score) count as they are."""
    values = values[~np.isnan(values)]
    if not len(values):
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    with np.errstate(invalid="ignore"):
        mean = float(np.mean(values))
        if len(values) == 1 or not np.isfinite(values).all():
            return {"mean": mean, "low": mean, "high": mean}
        means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": mean, "low": float(low), "high": float(high)}


def worst_first(evaluation: Evaluation) -> list[FileResult]:
    """Files ordered by their mel distance at the report's setting, largest first."""
    precision, bandwidth = evaluation.report_setting

    def key(f: FileResult) -> float:
        return -next((r["mel_distance"] for r in f.rows if (r["precision"], r["bandwidth_kbps"]) == (precision, bandwidth)), 0.0)

    return sorted(evaluation.files, key=key)


def save_results(evaluation: Evaluation, aggregates: list[dict], directory: Path, settings: dict) -> tuple[Path, Path]:
    """metrics.csv (a row per file, precision and bandwidth) and summary.json (the settings,
    the aggregates, the failures); infinite values are written as "inf"."""
    import csv
    import json

    from ..atomic import write_atomic

    rows = evaluation.rows
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, json_path = directory / "metrics.csv", directory / "summary.json"

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(csv_path, write_csv)
    summary = {"model": evaluation.model, "settings": settings, "aggregates": aggregates,
               "failures": [{"file": n, "reason": r} for n, r in evaluation.failures]}
    text = json.dumps(_finite(summary), indent=2)
    write_atomic(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return csv_path, json_path


def _finite(value):
    """JSON has no inf or nan: those become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
