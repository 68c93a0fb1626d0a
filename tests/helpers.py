"""Shared test helpers: paths, cached fixture models and cases, comparisons with the reference.

Imported by the tests as `from helpers import ...` (tests/ is on pytest's pythonpath)."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from higgs_tokenizer import HiggsAudioV2TokenizerModel

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIGGS_SHARED_DIR", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
FIXTURE_NAMES = ("tiny-24k", "tiny-16k")
DATA = Path(__file__).parent / "data"


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "cases.safetensors").is_file():
        # The parity tests are the point of this suite: never skip them.
        pytest.fail(f"reference fixtures missing: {path} (set HIGGS_SHARED_DIR to the shared/ folder)")
    return path


_models: dict = {}
_cases: dict = {}


def load_model(name: str, **kwargs) -> HiggsAudioV2TokenizerModel:
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _models:
        _models[key] = HiggsAudioV2TokenizerModel.from_pretrained(fixture_dir(name), **kwargs)
    return _models[key]


def load_cases(name: str) -> dict:
    if name not in _cases:
        _cases[name] = load_file(fixture_dir(name) / "cases.safetensors")
    return _cases[name]


_extra: dict = {}


def load_extra() -> dict:
    """More reference outputs, made by scripts/make_extra_fixtures.py (keys in its docstring)."""
    if not _extra:
        _extra.update(load_file(DATA / "reference_extra.safetensors"))
    return _extra


def case_lengths(name: str) -> list[int]:
    return load_cases(name)["batch_lengths"].tolist()


NEAR_TIE = 1e-4  # fixtures README: frames whose margins are all >= this must match exactly


def assert_codes_match(codes: torch.Tensor, reference: torch.Tensor, margins: torch.Tensor):
    """Codes equal the reference on every frame that is not a near tie, and on >= 99 % overall."""
    assert codes.shape == reference.shape, (codes.shape, reference.shape)
    margins = margins[: reference.shape[0]]
    decisive = (margins >= NEAR_TIE).all(dim=0)  # [frames]
    equal = codes == reference
    bad = (~equal.all(dim=0)) & decisive
    assert not bad.any(), f"codes differ on decisive frames {bad.nonzero().flatten().tolist()}"
    assert equal.float().mean() >= 0.99


def assert_audio_close(audio: torch.Tensor, reference: torch.Tensor, tol: float = 1e-4):
    assert audio.shape == reference.shape, (audio.shape, reference.shape)
    peak = reference.abs().max()
    err = (audio - reference).abs().max()
    assert err <= tol * peak, f"max error {float(err):.3g} > {tol} x peak {float(peak):.3g}"


AUDIO = SHARED / "audio"


def audio_file(name: str):
    path = AUDIO / name
    if not path.is_file():
        pytest.fail(f"shared recording missing: {path}")
    return path


class ServerProcess:
    """`higgs-tokenizer serve` in its own process on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, *args: str, startup_seconds: float = 120):
        import socket
        import subprocess
        import sys
        import time

        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"higgs-serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        command = [sys.executable, "-m", "higgs_tokenizer.cli", "serve", "--model", str(model_dir), "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in {startup_seconds} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except Exception:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
