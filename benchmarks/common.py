"""What the benchmarks share: where the shared data is, the seeded random full-size
model with its inputs, and the measuring tools (the matmul yardstick, peak resident
memory).

`random_model` gives the full-size model (../shared/reference/transformers_full_config.json)
seeded random weights: convs at fan-in scale, varied Snake α, and codebooks drawn
around the residuals each stage quantizes, so every layer shapes the output and codes
vary. `prepare_model_and_inputs` saves it once under a work directory (by default
higgs-tokenizer-bench in the system's temporary directory) with the speed benchmark's
inputs, its codebooks calibrated on two of them; the benchmarks load it from there.
The documented figures were measured with exactly these weights: a change here changes
them all. Without soxr (the reference environment) the recordings at other rates than
24 kHz cannot be read, and the inputs, hence the codebooks, are synthetic speech."""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
SHARED = Path(os.environ.get("HIGGS_SHARED_DIR", REPO.parent / "shared"))
FULL_CONFIG = SHARED / "reference" / "transformers_full_config.json"
AUDIO_DIR = SHARED / "audio"
WORK_DIR = Path(tempfile.gettempdir()) / "higgs-tokenizer-bench"
SEED = 20261126

SAMPLE_RATE = 24000
HOP = 960
BATCH_SECONDS = (0.5, 5.0)

# Benchmarks measure this checkout's package, whether or not an environment has it installed
# (the reference environment does not).
sys.path.insert(0, str(SRC))


# ----------------------------------------------------------------------------- the model and its inputs
def recordings(audio_dir: Path = AUDIO_DIR) -> np.ndarray:
    """The recordings in `audio_dir`, in name order, at 24 kHz, one after the other."""
    from higgs_tokenizer.audio import load_audio

    return np.concatenate([load_audio(p, SAMPLE_RATE)[0] for p in sorted(audio_dir.glob("*.wav"))])


def corpus_mix(clips: int, shortest: float, longest: float, seed: int) -> list[np.ndarray]:
    """Speech clips with log-uniform durations (a corpus has many more short clips than long),
    whole frames long: what the reference's feature extractor pads a clip to, so that both
    implementations make the same frames of it."""
    speech = recordings()
    rng = random.Random(seed)
    mix = []
    for _ in range(clips):
        seconds = math.exp(rng.uniform(math.log(shortest), math.log(longest)))
        n = max(1, round(seconds * SAMPLE_RATE / HOP)) * HOP
        if n > len(speech):
            speech = np.tile(speech, n // len(speech) + 1)
        start = rng.randrange(0, len(speech) - n + 1)
        mix.append(np.ascontiguousarray(speech[start : start + n], dtype=np.float32))
    return mix


def speech(audio_dir: Path, seconds: float, seed: int) -> torch.Tensor:
    """`seconds` of speech at 24 kHz: the recordings in `audio_dir` in turn, looped;
    without recordings (or without soxr to resample them), seeded noise shaped like syllables."""
    n = int(seconds * SAMPLE_RATE)
    audio = None
    try:
        if any(audio_dir.glob("*.wav")):
            audio = torch.from_numpy(recordings(audio_dir))
    except ImportError as err:
        # Kept as it always was (the reference environment has no soxr), so the model built
        # there stays the one its figures were measured with; said aloud, as it differs.
        print(f"note: {err}; the benchmark inputs and codebooks use synthetic speech", file=sys.stderr)
    if audio is None:
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(n) / SAMPLE_RATE
        envelope = torch.sin(2 * torch.pi * 4 * t).clamp(min=0) ** 2
        return (0.1 * envelope * torch.randn(n, generator=g)).float()
    return audio.repeat(n // len(audio) + 1)[:n].contiguous()


@torch.no_grad()
def randomize(model, seed: int) -> None:
    """Fan-in scaled convs and varied Snake α (the default init leaves the decoder near-constant)."""
    g = torch.Generator().manual_seed(seed)
    for part in (model.acoustic_encoder, model.acoustic_decoder, model.encoder_semantic, model.decoder_semantic):
        for mod in part.modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                w = mod.weight
                transposed = isinstance(mod, torch.nn.ConvTranspose1d)
                fan_in = w.shape[0] * w.shape[2] // max(1, mod.stride[0]) if transposed else w.shape[1] * w.shape[2]
                w.copy_(torch.randn(w.shape, generator=g) / fan_in**0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) * 0.1 - 0.05)
            alpha = getattr(mod, "alpha", None)
            if isinstance(alpha, torch.Tensor):
                alpha.copy_(torch.rand(alpha.shape, generator=g) * 1.5 + 0.5)


@torch.inference_mode()
def calibrate_codebooks(model, clips: list[torch.Tensor], seed: int) -> None:
    """Codewords drawn around the statistics of the residual each stage sees."""
    g = torch.Generator().manual_seed(seed)
    residual = torch.cat([model.latents(clip.view(1, 1, -1))[0][0] for clip in clips])
    for q in model.quantizer.quantizers:
        z = q.project_in(residual)
        embed = z.mean(0) + z.std(0) * torch.randn(q.codebook.embed.shape, generator=g)
        q.codebook.embed.copy_(embed)
        q.codebook.embed_avg.copy_(embed)
        residual = residual - q.decode(q.codebook.encode(z))


def random_model(config_path: Path, calibration_clips: list[torch.Tensor], seed: int):
    """The model of `config_path` with seeded random weights, its codebooks calibrated on
    `calibration_clips` (24 kHz, 1-D)."""
    from higgs_tokenizer import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    torch.manual_seed(seed)
    model = HiggsAudioV2TokenizerModel(HiggsAudioV2TokenizerConfig.from_json_file(config_path)).eval()
    randomize(model, seed)
    calibrate_codebooks(model, calibration_clips, seed)
    return model


def prepare_model_and_inputs(work_dir: Path = WORK_DIR, config_path: Path = FULL_CONFIG,
                             audio_dir: Path = AUDIO_DIR, seed: int = SEED) -> tuple[Path, Path]:
    """The benchmark checkpoint directory and inputs file under `work_dir`, made once and reused.

    Inputs: clips of 1, 10 and 60 s ("1s", "10s", "60s") and 16 clips of 0.5-5 s in whole
    frames ("batch16.00" to "batch16.15"), cut one after the other from `speech`."""
    from safetensors.torch import load_file, save_file

    model_dir, inputs_path = work_dir / "model", work_dir / "inputs.safetensors"
    if not inputs_path.exists():
        audio = speech(audio_dir, 200, seed)
        g = torch.Generator().manual_seed(seed)
        inputs = {"1s": audio[: SAMPLE_RATE], "10s": audio[SAMPLE_RATE : 11 * SAMPLE_RATE], "60s": audio[11 * SAMPLE_RATE : 71 * SAMPLE_RATE]}
        start = 71 * SAMPLE_RATE
        for i in range(16):
            seconds = BATCH_SECONDS[0] + (BATCH_SECONDS[1] - BATCH_SECONDS[0]) * torch.rand((), generator=g).item()
            n = int(seconds * SAMPLE_RATE) // HOP * HOP  # whole frames, which the reference needs
            inputs[f"batch16.{i:02d}"] = audio[start : start + n]
            start += n
        work_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_path))
    if not (model_dir / "model.safetensors").exists():
        inputs = load_file(str(inputs_path))
        random_model(config_path, [inputs["10s"], inputs["60s"][: 10 * SAMPLE_RATE]], seed).save_pretrained(model_dir)
    return model_dir, inputs_path


# ----------------------------------------------------------------------------- measuring
def time_runs(fn, runs: int, sync) -> list[float]:
    """Seconds of each of `runs` calls of `fn` after one untimed call; `sync` waits for the device."""
    fn()  # warm-up: lazy initialisation, cached weights, allocator growth
    sync()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def device_sync(device: torch.device):
    """A function that waits for the work queued on `device` (on the CPU, none is queued)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a 2048² matrix product: the yardstick the speed targets are set against."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    times = time_runs(lambda: a @ b, 10, device_sync(device))
    return 2 * 2048**3 / min(times) / 1e9


def current_rss() -> int:
    """Bytes of this process's resident set now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The largest resident set size seen while the block runs, in bytes (read every
    millisecond: the process-wide high-water mark would include the model's loading)."""

    def __enter__(self):
        self.peak, self._stop = current_rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())
