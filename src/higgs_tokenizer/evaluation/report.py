"""`report.html`: one self-contained page (plots, spectrograms and audio embedded as data
URIs, no script, nothing fetched) that a browser opens offline.

Needs matplotlib (the `[eval]` extra).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from . import metrics
from .runner import LOWER_IS_BETTER, METRICS, SPEECH_METRICS, Evaluation, worst_first

LABELS = {
    "stft_distance": "multi-scale STFT distance",
    "mel_distance": "mel distance",
    "si_sdr": "SI-SDR (dB)",
    "snr": "SNR (dB)",
    "stoi": "STOI",
    "pesq": "PESQ (wide band)",
    "real_time_factor": "real-time factor",
    "codes_agree": "codes equal to the first precision's",
    "first_codebook_agrees": "first codebook equal",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #1d1d1f; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f4f4f6; }
td.name, th.name { text-align: left; }
.plots img { width: 380px; margin: 0 0.5rem 0.5rem 0; }
section.file { border-top: 2px solid #ddd; margin-top: 2rem; padding-top: 1rem; }
.players { display: flex; gap: 2rem; }
.players figure { margin: 0; }
img.wide { max-width: 100%; }
.note { color: #555; }
"""


def write_report(evaluation: Evaluation, aggregates: list[dict], path: Path, max_files: int = 50) -> Path:
    """Write the report; the `max_files` worst files get their own section."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    metric_names = [m for m in (*METRICS, *SPEECH_METRICS, "real_time_factor") if aggregates and m in aggregates[0]]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>higgs-tokenizer evaluation</title>",
        "<link rel='icon' href='data:,'>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Codec evaluation</h1>",
        f"<p class='note'>Model {_e(evaluation.model)}; {len(evaluation.files)} files evaluated"
        f"{f', {len(evaluation.failures)} failed' if evaluation.failures else ''}; "
        f"precisions {', '.join(evaluation.precisions)}; bandwidths "
        f"{', '.join(f'{b:g}' for b in evaluation.bandwidths)} kbps. Means with 95 % bootstrap intervals over the files. "
        "Lower is better for the distances and the real-time factor; higher for the rest.</p>",
        "<h2>Summary</h2>",
        _summary_table(aggregates, metric_names),
        "<h2>Against bandwidth</h2><div class='plots'>",
        *(f"<img alt='{_e(LABELS[m])} against bandwidth' src='{_plot_against_bandwidth(evaluation, aggregates, m)}'>"
          for m in metric_names),
        "</div>",
    ]
    if evaluation.failures:
        parts.append("<h2>Files that failed</h2><table><tr><th class='name'>file</th><th class='name'>reason</th></tr>")
        parts += [f"<tr><td class='name'>{_e(n)}</td><td class='name'>{_e(r)}</td></tr>" for n, r in evaluation.failures]
        parts.append("</table>")
    precision, bandwidth = evaluation.report_setting
    ordered = worst_first(evaluation)
    parts.append(f"<h2>Files, worst first</h2><p class='note'>By mel distance at {precision}, {bandwidth:g} kbps, "
                 f"the setting each file's players, spectrograms and codes show"
                 f"{f'; the {max_files} worst of {len(ordered)} are shown' if len(ordered) > max_files else ''}.</p>")
    for rank, result in enumerate(ordered[:max_files], 1):
        parts.append(_file_section(rank, result, evaluation, metric_names))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _summary_table(aggregates: list[dict], names: list[str]) -> str:
    head = "".join(f"<th>{_e(LABELS[n])}</th>" for n in (*names, "codes_agree", "first_codebook_agrees"))
    rows = [f"<table><tr><th class='name'>precision</th><th>kbps</th><th>bits/s</th><th>files</th>{head}</tr>"]
    for entry in aggregates:
        cells = "".join(f"<td>{_interval(entry.get(n))}</td>" for n in (*names, "codes_agree", "first_codebook_agrees"))
        rows.append(f"<tr><td class='name'>{_e(entry['precision'])}</td><td>{entry['bandwidth_kbps']:g}</td>"
                    f"<td>{entry['bitrate_bps']:.0f}</td><td>{entry['files']}</td>{cells}</tr>")
    return "\n".join(rows) + "</table>"


def _file_section(rank: int, result, evaluation: Evaluation, names: list[str]) -> str:
    data = np.load(result.artifact)
    original, reconstruction, codes = data["original"], data["reconstruction"], data["codes"]
    rate = evaluation.sample_rate
    table = ["<table><tr><th class='name'>precision</th><th>kbps</th>"
             + "".join(f"<th>{_e(LABELS[n])}</th>" for n in (*names, "codes_agree")) + "</tr>"]
    for row in result.rows:
        table.append(f"<tr><td class='name'>{_e(row['precision'])}</td><td>{row['bandwidth_kbps']:g}</td>"
                     + "".join(f"<td>{_number(row.get(n))}</td>" for n in (*names, "codes_agree")) + "</tr>")
    table.append("</table>")
    return "\n".join([
        f"<section class='file'><h3>{rank}. {_e(result.name)}</h3>",
        "<div class='players'>",
        f"<figure><figcaption>original</figcaption><audio controls preload='metadata' src='{_wav(original, rate)}'></audio></figure>",
        f"<figure><figcaption>reconstruction ({_e(evaluation.report_setting[0])}, {evaluation.report_setting[1]:g} kbps)"
        f"</figcaption><audio controls preload='metadata' src='{_wav(reconstruction, rate)}'></audio></figure>",
        "</div>",
        f"<img class='wide' alt='log-mel spectrograms of {_e(result.name)}' src='{_spectrograms(original, reconstruction, rate)}'>",
        f"<img class='wide' alt='codes of {_e(result.name)}' src='{_codes_image(codes)}'>",
        *table,
        "</section>",
    ])


# ----------------------------------------------------------------------------- pictures and sound
def _plot_against_bandwidth(evaluation: Evaluation, aggregates: list[dict], name: str) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.2, 3.0), dpi=90)
    for precision in evaluation.precisions:
        entries = [e for e in aggregates if e["precision"] == precision and math.isfinite(e[name]["mean"])]
        if not entries:
            continue
        x = [e["bandwidth_kbps"] for e in entries]
        mean = np.array([e[name]["mean"] for e in entries])
        low, high = np.array([e[name]["low"] for e in entries]), np.array([e[name]["high"] for e in entries])
        axes.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=precision)
    axes.set_xlabel("bandwidth (kbps)")
    axes.set_title(LABELS[name] + (" (lower is better)" if name in LOWER_IS_BETTER else ""), fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _spectrograms(original: np.ndarray, reconstruction: np.ndarray, rate: int) -> str:
    import matplotlib.pyplot as plt

    a, b = metrics.log_mel(original, rate), metrics.log_mel(reconstruction, rate)
    top = max(a.max(), b.max())
    figure, axes = plt.subplots(1, 3, figsize=(13, 2.8), dpi=80, sharey=True)
    extent = (0, len(original) / rate, 0, a.shape[0])
    for axis, image, title, kwargs in (
        (axes[0], a, "original (log-mel, dB)", {"vmin": top - 80, "vmax": top, "cmap": "magma"}),
        (axes[1], b, "reconstruction", {"vmin": top - 80, "vmax": top, "cmap": "magma"}),
        (axes[2], b - a, "difference (dB)", {"vmin": -20, "vmax": 20, "cmap": "coolwarm"}),
    ):
        shown = axis.imshow(image, origin="lower", aspect="auto", extent=extent, **kwargs)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("seconds")
        figure.colorbar(shown, ax=axis, fraction=0.046)
    axes[0].set_ylabel("mel band")
    figure.tight_layout()
    return _png(figure)


def _codes_image(codes: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(13, 0.3 * len(codes) + 0.8), dpi=80)
    axis.imshow(codes, aspect="auto", interpolation="nearest", cmap="viridis")
    axis.set_title("codes (a row per quantizer, a column per frame)", fontsize=9)
    axis.set_ylabel("quantizer")
    axis.set_xlabel("frame")
    figure.tight_layout()
    return _png(figure)


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wav(samples: np.ndarray, rate: int) -> str:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1, 1), rate, format="WAV", subtype="PCM_16")  # what every browser plays
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def _interval(value: dict | None) -> str:
    if value is None:
        return ""
    mean, low, high = value["mean"], value["low"], value["high"]
    if not math.isfinite(mean) or low == high:
        return _number(mean)
    return f"{_number(mean)} <small>[{_number(low)}, {_number(high)}]</small>"


def _number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)
