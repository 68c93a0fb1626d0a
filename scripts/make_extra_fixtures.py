"""Extra reference outputs for the tests, made with the reference implementations.

Run inside the reference environment (../shared/tools/setup_reference_env.sh):

    .reference-venv/bin/python scripts/make_extra_fixtures.py

Writes tests/data/reference_extra.safetensors with
- `resample_{orig}_{new}_in` / `_out`: torchaudio.functional.resample (defaults)
  for many pairs of integer rates;
- `{fixture}/bf16_codes_{n}`: the reference's codes with the model and input in
  bfloat16 (`from_pretrained(..., dtype=torch.bfloat16)`);
- `{fixture}/original_codes_{n}`: codes of Boson AI's original length rule
  (pad 160 x semantic_downsample_factor on each side when the frame counts
  differ, re-run the acoustic encoder, trim the longer branch), computed with
  the transformers modules of each tiny fixture model, following the original's
  `_xcodec_encode` step by step.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file
from transformers import HiggsAudioV2TokenizerModel

RATE_PAIRS = [
    (24000, 16000), (16000, 24000), (44100, 16000), (48000, 16000), (44100, 24000), (48000, 24000),
    (22050, 24000), (8000, 24000), (11025, 16000), (32000, 24000), (96000, 24000), (24000, 44100),
    (16000, 8000), (7, 3), (3, 7), (1000, 999),
]
EXTRA_LENGTHS = [1000, 2500, 24001, 30000, 47999]
BF16_LENGTHS = [960, 1920]  # plus the longest (speech) case, added per fixture below


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
    args = ap.parse_args()
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
        bf16 = HiggsAudioV2TokenizerModel.from_pretrained(directory, dtype=torch.bfloat16).eval()
        with torch.inference_mode():
            for n in BF16_LENGTHS + [int(cases["batch_lengths"].max())]:
                x = cases[f"input_{n}"].view(1, 1, -1).to(torch.bfloat16)
                tensors[f"{name}/bf16_codes_{n}"] = bf16.encode(x, return_dict=False)[0].clone()
        for n, x in sorted(inputs.items()):
            tensors[f"{name}/original_input_{n}"] = x.clone()
            tensors[f"{name}/original_codes_{n}"] = original_rule_codes(model, x.view(1, 1, -1))[0].clone()
            tensors[f"{name}/transformers_codes_{n}"] = model.encode(x.view(1, 1, -1), return_dict=False)[0].clone()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
