"""Full-size side-by-side check against the transformers reference.

Run inside the reference environment (../shared/tools/setup_reference_env.sh):

    .reference-venv/bin/python scripts/compare_with_reference.py [--audio-dir ../shared/audio]

It builds the full-size model from ../shared/reference/transformers_full_config.json
with the benchmarks' seeded random weights (benchmarks/common.py: convs at fan-in
scale, codebooks calibrated on the first 10 s of each recording, so every layer
shapes the output and codes vary), saves it, has the reference load it and save it
again, loads that in both implementations and compares, for every recording: codes
(all bandwidths, both length rules), decoded audio and forward audio. It also writes
the same weights in the original format and checks that they load to the same codes.
The tiny fixtures have tiny widths; bugs that only show at full width show here.

Audio is measured against a yardstick: the reference run in float64 on the same codes.
Two float32 implementations that order their sums differently cannot agree more closely
than each is to float64, so a recording passes when our distance from float64 (max
error / peak) is at most FLOAT64_FACTOR times the reference's own. Codes pass when they
are identical on every frame that is not a near tie (float64 decision margin of the
reference, with its length rule, below NEAR_TIE at some quantizer: float32 rounding may
pick the runner-up there, as in the fixtures) and on at least 99 % overall, at every
bandwidth and with both length rules. Exit status 0 when every recording passes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "scripts"))

from common import AUDIO_DIR, FULL_CONFIG, SEED, random_model  # noqa: E402  (also puts this checkout's package on the path)
from make_extra_fixtures import original_rule_codes  # noqa: E402  (the original's steps, reference modules)
from transformers import HiggsAudioV2TokenizerModel as RefModel  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

import higgs_tokenizer  # noqa: E402

FLOAT64_FACTOR = 2.0
NEAR_TIE = 1e-4  # as the fixtures define it (../shared/fixtures/README.md)
CALIBRATION_SECONDS = 10


def load_recordings(audio_dir: Path, sample_rate: int) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(audio_dir.glob("*.wav")):
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = torch.from_numpy(wav.mean(axis=1))
        out[path.name] = torchaudio.functional.resample(wav, sr, sample_rate) if sr != sample_rate else wav
    return out


@torch.inference_mode()
def margins_float64(model64: RefModel, x: torch.Tensor) -> torch.Tensor:
    """Per frame, the smallest gap between the nearest and second-nearest codeword over all stages."""
    m = model64
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
    return torch.stack(gaps).min(0).values


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of `a` from `b`, relative to `b`'s peak."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def audio_row(row: dict, what: str, ours: torch.Tensor, reference: torch.Tensor, float64: torch.Tensor) -> bool:
    """Records ours vs reference and each vs the float64 yardstick; True when ours is no further
    from float64 than FLOAT64_FACTOR times the reference's own distance."""
    row[f"{what}_rel_err"] = rel_err(ours, reference)
    row[f"{what}_ours_vs_float64"] = rel_err(ours, float64)
    row[f"{what}_reference_vs_float64"] = rel_err(reference, float64)
    return row[f"{what}_ours_vs_float64"] <= FLOAT64_FACTOR * row[f"{what}_reference_vs_float64"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-dir", type=Path, default=AUDIO_DIR)
    ap.add_argument("--config", type=Path, default=FULL_CONFIG)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    transformers_logging.disable_progress_bar()  # its loading bars would bury the table

    sample_rate = json.loads(args.config.read_text())["sample_rate"]
    recordings = load_recordings(args.audio_dir, sample_rate)
    built = random_model(args.config, [wav[: CALIBRATION_SECONDS * sample_rate] for wav in recordings.values()], args.seed)

    summary = {"recordings": {}, "versions": {"torch": torch.__version__, "higgs_tokenizer": higgs_tokenizer.__version__},
               "float64_yardstick": "the reference in float64", "float64_factor": FLOAT64_FACTOR, "near_tie": NEAR_TIE}
    with tempfile.TemporaryDirectory() as tmp:
        built.save_pretrained(Path(tmp) / "ours")
        # The reference reads our file and writes its own; both implementations load that one.
        RefModel.from_pretrained(str(Path(tmp) / "ours")).save_pretrained(str(Path(tmp) / "reference"))
        t0 = time.perf_counter()
        ours = higgs_tokenizer.HiggsAudioV2TokenizerModel.from_pretrained(Path(tmp) / "reference")
        summary["load_seconds"] = round(time.perf_counter() - t0, 3)
        reloaded = RefModel.from_pretrained(str(Path(tmp) / "reference")).eval()
        with tempfile.TemporaryDirectory() as tmp_orig:
            higgs_tokenizer.save_original(ours, tmp_orig)
            ours_from_original = higgs_tokenizer.HiggsAudioV2TokenizerModel.from_pretrained(tmp_orig)
    del built
    reference64 = copy.deepcopy(reloaded).double()
    config = reloaded.config

    all_ok = True
    total_codes = total_equal = 0
    worst = {"decode_rel_err": 0.0, "decode_ours_vs_float64": 0.0, "decode_reference_vs_float64": 0.0,
             "forward_rel_err": 0.0, "forward_ours_vs_float64": 0.0, "forward_reference_vs_float64": 0.0}
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
            pairs = {"codes_identical": (our_codes, ref_codes)}
            for bw in config.target_bandwidths[:-1]:
                pairs[f"codes_identical_bw{bw}"] = (ours.encode(x, bandwidth=bw).audio_codes, reloaded.encode(x, bandwidth=bw, return_dict=False))
            pairs["original_rule_codes_identical"] = (ours.encode(x, length_rule="original").audio_codes, original_rule_codes(reloaded, x))
            codes_ok, margins = True, None
            for key, (mine, theirs) in pairs.items():
                row[key] = torch.equal(mine, theirs)
                if row[key]:
                    continue
                if mine.shape != theirs.shape:
                    codes_ok = False
                    continue
                if margins is None:
                    margins = margins_float64(reference64, x)
                frames = (mine[0] != theirs[0]).any(0).nonzero().flatten().tolist()
                row[key.replace("identical", "differing_frames")] = frames
                row[key.replace("identical", "their_margins")] = [float(margins[f]) for f in frames]
                codes_ok &= all(margins[f] < NEAR_TIE for f in frames) and float((mine == theirs).float().mean()) >= 0.99
            # The same weights read back from the original format: the same implementation, so exact.
            row["original_format_codes_identical"] = torch.equal(ours_from_original.encode(x).audio_codes, our_codes)
            decode_ok = audio_row(row, "decode", ours.decode(ref_codes).audio_values, reloaded.decode(ref_codes, return_dict=False),
                                  reference64.decode(ref_codes, return_dict=False))
            forward_ok = audio_row(row, "forward", ours(x, audio_codes=ref_codes).audio_values,
                                   reloaded(x, audio_codes=ref_codes).audio_values,
                                   reference64(x.double(), audio_codes=ref_codes).audio_values)
            for measure in worst:
                worst[measure] = max(worst[measure], row[measure])
            ok = codes_ok and row["original_format_codes_identical"] and decode_ok and forward_ok
            all_ok &= ok
            summary["recordings"][name] = row
            print(f"{name:22s} {row['seconds']:6.2f}s {row['frames']:4d} frames ({row['distinct_codes_q0']:3d} distinct q0)  codes identical: {row['codes_identical']}"
                  f"  bandwidths: {all(v for k, v in row.items() if k.startswith('codes_identical_bw'))}"
                  f"  original rule: {row['original_rule_codes_identical']}"
                  f"  original format: {row['original_format_codes_identical']}"
                  f"  decode err/peak: ours-ref {row['decode_rel_err']:.2e}, vs float64 ours {row['decode_ours_vs_float64']:.2e} ref {row['decode_reference_vs_float64']:.2e}"
                  f"  forward err/peak: ours-ref {row['forward_rel_err']:.2e}, vs float64 ours {row['forward_ours_vs_float64']:.2e} ref {row['forward_reference_vs_float64']:.2e}"
                  f"  {'OK' if ok else 'MISMATCH'}", flush=True)
    summary["codes_equal_fraction"] = total_equal / total_codes
    summary["worst"] = worst
    summary["all_ok"] = all_ok
    print(f"\nfull-size model, {len(recordings)} recordings: {total_equal}/{total_codes} codes identical; "
          f"audio max err/peak: ours-ref {worst['decode_rel_err']:.1e} decode, {worst['forward_rel_err']:.1e} forward; "
          f"vs the reference in float64: ours {worst['decode_ours_vs_float64']:.1e} / {worst['forward_ours_vs_float64']:.1e}, "
          f"reference {worst['decode_reference_vs_float64']:.1e} / {worst['forward_reference_vs_float64']:.1e} "
          f"(pass: ours <= {FLOAT64_FACTOR:g} x reference); checkpoint load {summary['load_seconds']} s; "
          f"{'ALL OK' if all_ok else 'MISMATCHES FOUND'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
