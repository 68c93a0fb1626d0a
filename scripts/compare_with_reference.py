"""Full-size side-by-side check against the transformers reference.

Run inside the reference environment (../shared/tools/setup_reference_env.sh):

    .reference-venv/bin/python scripts/compare_with_reference.py [--audio-dir ../shared/audio]

It builds the full-size model from ../shared/reference/transformers_full_config.json
with seeded random weights (convs at fan-in scale and codebooks calibrated on the
recordings, so every layer shapes the output and codes vary), saves it, loads the
saved checkpoint in both implementations and compares, for every recording:
codes (all bandwidths), decoded audio and forward audio. It also writes the same
weights in the original format and checks that they load to the same codes.
The tiny fixtures have tiny widths; bugs that only show at full width show here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from transformers import HiggsAudioV2TokenizerConfig as RefConfig  # noqa: E402
from transformers import HiggsAudioV2TokenizerModel as RefModel  # noqa: E402

import higgs_tokenizer  # noqa: E402
from higgs_tokenizer.bench import randomize  # noqa: E402  (the same modules and names in the reference)
from make_extra_fixtures import original_rule_codes  # noqa: E402  (the original's steps, reference modules)

SHARED = REPO.parent / "shared"


def load_recordings(audio_dir: Path, sample_rate: int) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(audio_dir.glob("*.wav")):
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = torch.from_numpy(wav.mean(axis=1))
        out[path.name] = torchaudio.functional.resample(wav, sr, sample_rate) if sr != sample_rate else wav
    return out


@torch.inference_mode()
def calibrate_codebooks(model: RefModel, waves: list[torch.Tensor], seed: int) -> None:
    """Codewords drawn around the statistics of the residuals each stage sees."""
    g = torch.Generator().manual_seed(seed)
    embeddings = []
    for wav in waves:
        x = wav[: 10 * model.config.sample_rate].view(1, 1, -1)
        x = x[..., : x.shape[-1] // model.config.hop_length * model.config.hop_length]
        e_sem = model.encoder_semantic(model._extract_semantic_features(x).transpose(1, 2))
        e = torch.cat([model.acoustic_encoder(x), e_sem], 1)
        embeddings.append(model.fc(e.transpose(1, 2))[0])
    residual = torch.cat(embeddings)
    for q in model.quantizer.quantizers:
        z = q.project_in(residual)
        embed = z.mean(0) + z.std(0) * torch.randn(q.codebook.embed.shape, generator=g)
        q.codebook.embed.copy_(embed)
        q.codebook.embed_avg.copy_(embed)
        residual = residual - q.project_out(q.codebook.decode(q.codebook.encode(z[None])[0]))


@torch.inference_mode()
def margins_float64(model: RefModel, x: torch.Tensor) -> torch.Tensor:
    """Per frame, the smallest gap between the nearest and second-nearest codeword over all stages."""
    m = model.double()
    x = x.double()
    e_sem = m.encoder_semantic(m._extract_semantic_features(x).transpose(1, 2))
    if m._get_conv1d_output_lengths(x.shape[2], m.acoustic_encoder) != e_sem.shape[2]:
        x = torch.nn.functional.pad(x, (m.pad, m.pad))
    residual = m.fc(torch.cat([m.acoustic_encoder(x), e_sem], 1).transpose(1, 2))[0]
    gaps = []
    for q in m.quantizer.quantizers:
        z = q.project_in(residual)
        d = torch.cdist(z, q.codebook.embed) ** 2
        two = d.topk(2, largest=False).values
        gaps.append(two[:, 1] - two[:, 0])
        residual = residual - q.project_out(q.codebook.decode(d.argmin(1)))
    model.float()
    return torch.stack(gaps).min(0).values


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-dir", type=Path, default=SHARED / "audio")
    ap.add_argument("--config", type=Path, default=SHARED / "reference" / "transformers_full_config.json")
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    config = RefConfig(**{k: v for k, v in json.loads(args.config.read_text()).items()
                          if k not in ("architectures", "transformers_version", "model_type")})
    reference = RefModel(config).eval()
    randomize(reference, args.seed)
    recordings = load_recordings(args.audio_dir, config.sample_rate)
    calibrate_codebooks(reference, list(recordings.values()), args.seed)

    tolerance = 1e-4
    summary = {"recordings": {}, "versions": {"torch": torch.__version__, "higgs_tokenizer": higgs_tokenizer.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        t0 = time.perf_counter()
        ours = higgs_tokenizer.HiggsAudioV2TokenizerModel.from_pretrained(tmp)
        summary["load_seconds"] = round(time.perf_counter() - t0, 3)
        reloaded = RefModel.from_pretrained(tmp).eval()  # the reference reads the same file
        with tempfile.TemporaryDirectory() as tmp_orig:
            higgs_tokenizer.save_original(ours, tmp_orig)
            ours_from_original = higgs_tokenizer.HiggsAudioV2TokenizerModel.from_pretrained(tmp_orig)

    all_ok = True
    total_codes = total_equal = 0
    with torch.inference_mode():
        for name, wav in recordings.items():
            x = wav.view(1, 1, -1)
            row = {"seconds": round(wav.numel() / config.sample_rate, 2)}
            ref_codes = reloaded.encode(x, return_dict=False)
            our_codes = ours.encode(x).audio_codes
            equal = our_codes == ref_codes
            total_codes += equal.numel()
            total_equal += int(equal.sum())
            row["frames"] = int(ref_codes.shape[-1])
            row["distinct_codes_q0"] = int(ref_codes[0, 0].unique().numel())  # calibrated codebooks: codes vary
            row["codes_identical"] = bool(equal.all())
            if not equal.all():
                frames = (~equal[0]).any(0).nonzero().flatten()
                margins = margins_float64(reloaded, x)
                row["differing_frames"] = frames.tolist()
                row["their_margins"] = [float(margins[f]) for f in frames]
            for bw in config.target_bandwidths[:-1]:
                same = torch.equal(ours.encode(x, bandwidth=bw).audio_codes, reloaded.encode(x, bandwidth=bw, return_dict=False))
                row[f"codes_identical_bw{bw}"] = same
            row["original_rule_codes_identical"] = torch.equal(
                ours.encode(x, length_rule="original").audio_codes, original_rule_codes(reloaded, x)
            )
            row["original_format_codes_identical"] = torch.equal(ours_from_original.encode(x).audio_codes, our_codes)
            row["decode_rel_err"] = rel_err(ours.decode(ref_codes).audio_values, reloaded.decode(ref_codes, return_dict=False))
            row["forward_rel_err"] = rel_err(ours(x, audio_codes=ref_codes).audio_values, reloaded(x, audio_codes=ref_codes).audio_values)
            ok = (
                row["codes_identical"]
                and all(v for k, v in row.items() if k.startswith("codes_identical_bw"))
                and row["original_format_codes_identical"]
                and row["original_rule_codes_identical"]
                and row["decode_rel_err"] <= tolerance
                and row["forward_rel_err"] <= tolerance
            )
            all_ok &= ok
            summary["recordings"][name] = row
            print(f"{name:22s} {row['seconds']:6.2f}s {row['frames']:4d} frames ({row['distinct_codes_q0']:3d} distinct q0)  codes identical: {row['codes_identical']}"
                  f"  bandwidths: {all(v for k, v in row.items() if k.startswith('codes_identical_bw'))}"
                  f"  original rule: {row['original_rule_codes_identical']}"
                  f"  original format: {row['original_format_codes_identical']}"
                  f"  decode err/peak {row['decode_rel_err']:.2e}  forward err/peak {row['forward_rel_err']:.2e}"
                  f"  {'OK' if ok else 'MISMATCH'}", flush=True)
    summary["codes_equal_fraction"] = total_equal / total_codes
    summary["all_ok"] = all_ok
    print(f"\nfull-size model, {len(recordings)} recordings: {total_equal}/{total_codes} codes identical; "
          f"audio tolerance {tolerance} of peak; checkpoint load {summary['load_seconds']} s; "
          f"{'ALL OK' if all_ok else 'MISMATCHES FOUND'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
