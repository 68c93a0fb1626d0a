"""Extra reference outputs for the tests, made with the reference implementations.

Run inside the reference environment (../shared/tools/setup_reference_env.sh):

    .reference-venv/bin/python scripts/make_extra_fixtures.py

Writes tests/data/reference_extra.safetensors with
- `resample_{orig}_{new}_in` / `_out`: torchaudio.functional.resample (defaults)
  for many pairs of integer rates;
- `{fixture}/bf16_codes_{n}`: the reference's codes with the model and input in
  bfloat16 (`from_pretrained(..., dtype=torch.bfloat16)`), computed with the CPU
  kernels pinned to AVX2 (`PINNED_CPU_ENV`, one thread): bfloat16 kernels round
  differently per instruction set, and every x86-64 CI machine has AVX2, so the
  test can rerun ours under the same pin and ask for identical codes;
- `{fixture}/fe_forward_{n}` for every fixture case: `model(**inputs).audio_values`
  of that clip through the feature extractor (the usage example's forward pass);
- `{fixture}/snippet_lengths` and, for each length n (remainders on both sides of
  the band where the length rule pads the acoustic branch), with the clip being
  the first n samples of the fixture's speech case: `snippet_fe_codes_{n}` =
  `encode(inputs["input_values"])`, `snippet_fe_margin_{n}` (float64 decision
  margins, as in the fixtures) and `snippet_forward_{n}` = `model(**inputs)`;
- `{fixture}/original_codes_{n}`: codes of Boson AI's original length rule
  (pad 160 x semantic_downsample_factor on each side when the frame counts
  differ, re-run the acoustic encoder, trim the longer branch), computed with
  the transformers modules of each tiny fixture model, following the original's
  `_xcodec_encode` step by step.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file
from transformers import DacFeatureExtractor, HiggsAudioV2TokenizerModel

SHARED = Path(__file__).resolve().parents[2] / "shared"
sys.path.insert(0, str(SHARED / "tools"))
from add_code_margins import margins  # noqa: E402  (the fixtures' own margin computation)

RATE_PAIRS = [
    (24000, 16000), (16000, 24000), (44100, 16000), (48000, 16000), (44100, 24000), (48000, 24000),
    (22050, 24000), (8000, 24000), (11025, 16000), (32000, 24000), (96000, 24000), (24000, 44100),
    (16000, 8000), (7, 3), (3, 7), (1000, 999),
]
EXTRA_LENGTHS = [1000, 2500, 24001, 30000, 47999]
BF16_LENGTHS = [960, 1920]  # plus the longest (speech) case, added per fixture below
# Clip lengths of the usage-example tests: k hops plus remainders below, inside and above the
# band of remainders for which the acoustic branch is padded (24 kHz: 119-631 of 960;
# 16 kHz: 80-311 of 320).
SNIPPET_LENGTHS = {
    "tiny-24k": [9660, 28918, 28919, 48236, 58231, 58232, 68100],
    "tiny-16k": [3240, 12879, 12880, 25800, 32311, 32312, 44810],
}
# Must equal tests/test_checkpoint.py's PINNED_CPU_ENV.
PINNED_CPU_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def pinned_bf16_codes(fixtures: str) -> dict:
    """The bf16 cases, computed in a child process whose CPU kernels are pinned to AVX2."""
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bf16.safetensors"
            env = {**os.environ, **PINNED_CPU_ENV}
            subprocess.run([sys.executable, __file__, "--fixtures", fixtures, "--bf16-only", str(out)], env=env, check=True)
            return load_file(out)
    torch.set_num_threads(1)
    assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
    tensors = {}
    for name in ("tiny-24k", "tiny-16k"):
        directory = Path(fixtures) / name
        cases = load_file(directory / "cases.safetensors")
        bf16 = HiggsAudioV2TokenizerModel.from_pretrained(directory, dtype=torch.bfloat16).eval()
        with torch.inference_mode():
            for n in BF16_LENGTHS + [int(cases["batch_lengths"].max())]:
                x = cases[f"input_{n}"].view(1, 1, -1).to(torch.bfloat16)
                tensors[f"{name}/bf16_codes_{n}"] = bf16.encode(x, return_dict=False)[0].clone()
    return tensors


@torch.inference_mode()
def usage_example_cases(name: str, model, model64, cases: dict) -> dict:
    """The usage example's forward pass on single clips: fixture cases and speech snippets."""
    fe = DacFeatureExtractor.from_pretrained(Path(model.name_or_path))
    tensors = {}
    for n in cases["batch_lengths"].tolist():
        inputs = fe(raw_audio=cases[f"input_{n}"].numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt")
        tensors[f"{name}/fe_forward_{n}"] = model(**inputs).audio_values[0, 0].clone()
    speech = cases[f"input_{cases['batch_lengths'].max().item()}"]
    tensors[f"{name}/snippet_lengths"] = torch.tensor(SNIPPET_LENGTHS[name])
    for n in SNIPPET_LENGTHS[name]:
        inputs = fe(raw_audio=speech[:n].numpy(), sampling_rate=fe.sampling_rate, return_tensors="pt")
        codes = model.encode(inputs["input_values"], return_dict=False)[0]
        margin, codes64 = margins(model64, inputs["input_values"].double())
        if not torch.equal(codes64, codes):
            print(f"{name} snippet {n}: float64 codes differ from float32 at {(codes64 != codes).sum()} codes")
        tensors[f"{name}/snippet_fe_codes_{n}"] = codes.clone()
        tensors[f"{name}/snippet_fe_margin_{n}"] = margin.contiguous()
        tensors[f"{name}/snippet_forward_{n}"] = model(**inputs).audio_values[0, 0].clone()
    return tensors


@torch.inference_mode()
def original_rule_codes(model, x):
    sem = model._extract_semantic_features(x)
    e_semantic = model.encoder_semantic(sem.transpose(1, 2))
    e_acoustic = model.acoustic_encoder(x)
    if e_acoustic.shape[2] != e_semantic.shape[2]:
        pad = 160 * model.config.semantic_downsample_factor
        e_acoustic = model.acoustic_encoder(F.pad(x, (pad, pad)))
    frames = min(e_acoustic.shape[2], e_semantic.shape[2])
    e = torch.cat([e_acoustic[..., :frames], e_semantic[..., :frames]], dim=1)
    e = model.fc(e.transpose(1, 2)).transpose(1, 2)
    return model.quantizer.encode(e, None).transpose(0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "reference_extra.safetensors"))
    ap.add_argument("--bf16-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bf16_only:
        save_file(pinned_bf16_codes(args.fixtures), args.bf16_only)
        return
    rng = np.random.default_rng(20261126)
    tensors = {}
    for orig, new in RATE_PAIRS:
        n = 3001 if orig > 100 else 50
        t = np.arange(n) / orig
        x = 0.3 * np.sin(2 * np.pi * min(orig, new) * 0.2 * t) + 0.1 * rng.standard_normal(n)
        x = torch.from_numpy(x.astype(np.float32))
        tensors[f"resample_{orig}_{new}_in"] = x
        tensors[f"resample_{orig}_{new}_out"] = torchaudio.functional.resample(x, orig, new)
    for name in ("tiny-24k", "tiny-16k"):
        directory = Path(args.fixtures) / name
        model = HiggsAudioV2TokenizerModel.from_pretrained(directory).eval()
        cases = load_file(directory / "cases.safetensors")
        speech = cases[f"input_{cases['batch_lengths'].max().item()}"]
        inputs = {n: cases[f"input_{n}"] for n in cases["batch_lengths"].tolist()}
        inputs.update({n: speech[:n] for n in EXTRA_LENGTHS if n <= speech.numel()})
        model64 = HiggsAudioV2TokenizerModel.from_pretrained(directory).eval().double()
        tensors.update(usage_example_cases(name, model, model64, cases))
        for n, x in sorted(inputs.items()):
            tensors[f"{name}/original_input_{n}"] = x.clone()
            tensors[f"{name}/original_codes_{n}"] = original_rule_codes(model, x.view(1, 1, -1))[0].clone()
            tensors[f"{name}/transformers_codes_{n}"] = model.encode(x.view(1, 1, -1), return_dict=False)[0].clone()
    tensors.update(pinned_bf16_codes(args.fixtures))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
