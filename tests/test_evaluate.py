"""`higgs-tokenizer evaluate`: every file at every bandwidth and precision, CSV and JSON, and
a self-contained report that a real browser (Debian's chromium) renders offline."""

import csv
import json
import os
import shutil

import pytest
import soundfile as sf
import torch
from helpers import REPO, audio_file, fixture_dir
from test_playground import chromium_executable

from higgs_tokenizer.cli import main
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    inputs = root / "in"
    inputs.mkdir()
    for name in ("en_woman.wav", "old_man.wav"):
        samples, rate = sf.read(audio_file(name), dtype="float32")
        sf.write(inputs / name, samples[: 3 * rate], rate)  # 3 s each keeps the test short
    (inputs / "broken.wav").write_bytes(b"RIFF not really a wave file")
    out = root / "report"
    status = main(["evaluate", str(inputs), "--report", str(out), "--model", str(fixture_dir("tiny-24k")),
                   "--bandwidth", "1,2", "--precision", "float32", "bfloat16", "--quiet"])
    return inputs, out, status


def test_every_file_at_every_setting(evaluated):
    inputs, out, status = evaluated
    assert status == 1  # one file failed, and says so
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 * 2 * 2  # files x precisions x bandwidths
    assert {(r["precision"], float(r["bandwidth_kbps"])) for r in rows} == {
        (p, b) for p in ("float32", "bfloat16") for b in (1.0, 2.0)}
    for row in rows:
        assert float(row["bitrate_bps"]) == float(row["num_quantizers"]) * 10 * 25
        assert float(row["stft_distance"]) > 0 and float(row["real_time_factor"]) > 0
        assert "stoi" in row and "mel_distance" in row and "si_sdr" in row and "snr" in row
        if row["precision"] == "float32":
            assert float(row["codes_agree"]) == 1.0  # the first precision is the yardstick
    summary = json.loads((out / "summary.json").read_text())
    assert [f["file"] for f in summary["failures"]] == [str(inputs / "broken.wav")]
    entry = summary["aggregates"][0]
    assert entry["files"] == 2 and entry["mel_distance"]["low"] <= entry["mel_distance"]["mean"] <= entry["mel_distance"]["high"]


def test_lower_bandwidths_are_the_first_quantizers_codes():
    """What the evaluation relies on to encode once per file and precision."""
    tokenizer = HiggsAudioTokenizer.from_pretrained(fixture_dir("tiny-24k"))
    path = audio_file("en_man.wav")
    full = tokenizer.encode(path)
    for bandwidth in tokenizer.config.target_bandwidths:
        codes = tokenizer.encode(path, bandwidth=bandwidth)
        assert torch.equal(codes, full[: codes.shape[0]])


def test_the_report_renders_in_a_browser(evaluated, tmp_path):
    from playwright.sync_api import sync_playwright

    _, out, _ = evaluated
    page_text = (out / "report.html").read_text()
    assert "http://" not in page_text and "https://" not in page_text  # nothing to fetch
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("request", lambda r: problems.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
        page.goto((out / "report.html").as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        assert len(images) >= 5 + 2 * 2 and all(images)  # the plots, then spectrograms and codes per file
        page.wait_for_function(
            "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1 && a.duration > 2.9)", timeout=30_000)
        assert page.eval_on_selector_all("audio", "els => els.length") == 4  # original and reconstruction per file
        assert "Files, worst first" in page.text_content("body")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        if os.environ.get("HIGGS_UPDATE_SCREENSHOT"):
            shutil.copy(shot, REPO / "docs" / "images" / "evaluation-report.png")
        browser.close()
    assert not problems, problems


def test_a_manifest_and_max_files(tmp_path):
    """Manifests are inputs too; --max-files draws that many with --seed."""
    rows = [{"path": str(audio_file(name))} for name in ("en_man.wav", "en_woman.wav", "old_man.wav")]
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "report"
    args = ["evaluate", str(manifest), "--report", str(out), "--model", str(fixture_dir("tiny-24k")),
            "--bandwidth", "0.5", "--max-files", "2", "--seed", "3", "--quiet"]
    assert main(args) == 0
    evaluated = {r["file"] for r in csv.DictReader(open(out / "metrics.csv"))}
    assert len(evaluated) == 2 and evaluated <= {r["path"] for r in rows}
    assert main(args) == 2  # the report exists: not replaced without --overwrite
    assert main(args + ["--overwrite"]) == 0
    assert {r["file"] for r in csv.DictReader(open(out / "metrics.csv"))} == evaluated  # the same draw


def test_inputs_with_the_same_file_names(tmp_path):
    """Two directories that both hold x.wav: both are evaluated, each on its own."""
    samples, rate = sf.read(audio_file("en_man.wav"), dtype="float32")
    for name, part in (("a", samples[:rate]), ("b", samples[rate : 2 * rate])):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "x.wav", part, rate)
    out = tmp_path / "report"
    assert main(["evaluate", str(tmp_path / "a"), str(tmp_path / "b"), "--report", str(out), "--model",
                 str(fixture_dir("tiny-24k")), "--bandwidth", "0.5", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert sorted(r["file"] for r in rows) == [str(tmp_path / "a" / "x.wav"), str(tmp_path / "b" / "x.wav")]
    assert rows[0]["snr"] != rows[1]["snr"]  # two clips, two results
