"""Speed and peak memory of one-shot encoding under each allocator setting.

    python benchmarks/allocator.py [--case 60s] [--thresholds-mib 0 256 1024]

For each setting, a fresh process loads the benchmarks' model (common.py; made
under --work-dir on first use), encodes the case's clip twice and prints both
times and the peak resident set size above the loaded model (sampled every
millisecond). 0 leaves glibc's default (HIGGS_TOKENIZER_KEEP_MALLOC=1).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import WORK_DIR, PeakRss, current_rss, prepare_model_and_inputs


def measure(work: Path, case: str) -> str:
    import torch
    from safetensors.torch import load_file

    from higgs_tokenizer import HiggsAudioV2TokenizerModel

    model = HiggsAudioV2TokenizerModel.from_pretrained(work / "model")
    x = load_file(str(work / "inputs.safetensors"))[case].view(1, 1, -1)
    with torch.inference_mode():
        model.encode(x[..., :4800])
        base = current_rss()
        with PeakRss() as sampler:
            t0 = time.perf_counter()
            model.encode(x)
            t1 = time.perf_counter()
            model.encode(x)
            t2 = time.perf_counter()
    return f"{t1 - t0:.1f} s | {t2 - t1:.1f} s | {(sampler.peak - base) / 2**20:.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=WORK_DIR)
    ap.add_argument("--case", default="60s")
    ap.add_argument("--thresholds-mib", type=int, nargs="+", default=[0, 256, 1024])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(measure(args.work_dir, args.case))
        return 0
    prepare_model_and_inputs(args.work_dir)
    print(f"| blocks kept up to | first call | second call | peak above the model ({args.case}) |")
    print("|---|---|---|---|")
    for mib in args.thresholds_mib:
        env = dict(os.environ, **({"HIGGS_TOKENIZER_KEEP_MALLOC": "1"} if mib == 0 else {"HIGGS_TOKENIZER_MMAP_MB": str(mib)}))
        cmd = [sys.executable, __file__, "--child", "--work-dir", str(args.work_dir), "--case", args.case]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
        print(f"| {'glibc default' if mib == 0 else f'{mib} MiB'} | {out} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
