"""The playground page in a real browser (Debian's chromium, driven by Playwright): upload
a file, wait for the decoded audio to load, no console errors. A missing browser fails."""

import os
import shutil

import pytest
from helpers import REPO, ServerProcess, audio_file, fixture_dir

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_executable() -> str:
    for name in (os.environ.get("HIGGS_CHROMIUM"), *CHROMIUM_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no chromium to drive: apt-get install -y chromium (or set HIGGS_CHROMIUM)")


def test_upload_encode_decode_in_a_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    server = ServerProcess(fixture_dir("tiny-24k"))
    problems = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('bandwidth').options.length > 0")
            assert "24000 Hz" in page.text_content("#model")
            page.set_input_files("#file", str(audio_file("en_woman.wav")))
            page.select_option("#bandwidth", "1.5")
            page.click("#run")
            # The decoded audio has loaded (its duration is known) and the summary is written.
            page.wait_for_function(
                "document.getElementById('decoded').readyState >= 1 && document.getElementById('status').textContent === 'done'",
                timeout=60_000,
            )
            duration = page.evaluate("document.getElementById('decoded').duration")
            assert abs(duration - 6.41) < 0.05, duration
            summary = page.text_content("#summary")
            assert "1.5 kbps" in summary and "6 × " not in summary and "× 6 codes" in summary, summary
            assert page.evaluate("document.getElementById('codes').width") == 161  # frames
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("HIGGS_UPDATE_SCREENSHOT"):
                shutil.copy(shot, REPO / "docs" / "images" / "playground.png")
            browser.close()
    finally:
        server.stop()
    assert not problems, problems


def test_record_encode_decode_in_a_browser():
    """The recording path: chromium's fake microphone (a tone), recorded by MediaRecorder,
    decoded by the browser and sent as raw PCM with its rate."""
    from playwright.sync_api import sync_playwright

    server = ServerProcess(fixture_dir("tiny-24k"))
    problems = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium_executable(),
                args=["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
            )
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.goto(server.url + "/")  # 127.0.0.1: a secure context, where recording is allowed
            page.wait_for_function("document.getElementById('bandwidth').options.length > 0")
            page.click("#record")
            page.wait_for_function("document.getElementById('status').textContent === 'recording…'")
            page.wait_for_timeout(1500)
            page.click("#record")
            page.wait_for_function("!document.getElementById('run').disabled", timeout=30_000)
            page.click("#run")
            page.wait_for_function(
                "document.getElementById('decoded').readyState >= 1 && document.getElementById('status').textContent === 'done'",
                timeout=60_000,
            )
            duration = page.evaluate("document.getElementById('decoded').duration")
            assert 0.5 < duration < 5, duration
            assert "× 8 codes" in page.text_content("#summary")
            browser.close()
    finally:
        server.stop()
    assert not problems, problems
