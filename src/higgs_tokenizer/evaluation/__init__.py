"""`higgs-tokenizer evaluate`: what the codec does to a user's own audio.

- `metrics`: the distances (multi-scale STFT, mel, SI-SDR, SNR; PESQ and STOI when installed);
- `runner`: every file through every bandwidth and precision, with per-file rows and
  aggregates with 95 % intervals;
- `report`: the self-contained `report.html`.
"""
