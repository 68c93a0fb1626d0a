"""The evaluation metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from higgs_tokenizer.evaluation.metrics import mel_distance, mel_filters, si_sdr, snr, speech_metrics, stft_distance

RATE = 24000


def tone(seconds: float = 1.0, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float64)


def test_identity_is_perfect():
    x = tone() + 0.01 * np.random.default_rng(0).standard_normal(RATE)
    assert stft_distance(x, x) == 0 and mel_distance(x, x, RATE) == 0
    assert snr(x, x) == math.inf and si_sdr(x, x) == math.inf


def test_white_noise_of_known_power_gives_its_snr():
    x = tone(amplitude=0.5)  # power 0.125
    noise = np.random.default_rng(1).standard_normal(len(x))
    for target_db in (0.0, 10.0, 30.0):
        power = 0.125 / 10 ** (target_db / 10)
        scaled = noise * math.sqrt(power / np.mean(noise**2))  # exactly that power
        signal_power = np.mean(x**2)  # 0.125 up to the tone's partial last period
        expected = 10 * math.log10(signal_power / power)
        assert snr(x, x + scaled) == pytest.approx(expected, abs=1e-9)
        # The noise is (almost) orthogonal to the tone: SI-SDR sees the same ratio.
        assert si_sdr(x, x + scaled) == pytest.approx(expected, abs=0.05)
    # More noise, farther in every distance.
    quiet, loud = x + 0.01 * noise, x + 0.1 * noise
    assert stft_distance(x, quiet) < stft_distance(x, loud) and mel_distance(x, quiet, RATE) < mel_distance(x, loud, RATE)


def test_a_gain_change_shows_in_snr_but_not_in_si_sdr():
    x = tone() + 0.05 * tone(hz=1234.5)
    for gain in (0.5, 2.0):
        assert snr(x, gain * x) == pytest.approx(-20 * math.log10(abs(gain - 1)), abs=1e-9)  # 6.02 dB, 0 dB
        assert si_sdr(x, gain * x) > 100  # inf up to rounding
    assert stft_distance(x, 0.5 * x) > 0.5  # log magnitudes move by log10(0.25) everywhere


def test_a_time_shift():
    """Shifting a tone by half a period inverts it: SNR -6.02 dB, while SI-SDR takes it as a
    gain of -1 (perfect). A quarter period makes it orthogonal: SNR -3.01 dB, and no gain
    fits (SI-SDR very low). A whole period (circularly) changes nothing. The spectral
    distances look at magnitudes, which a shift leaves almost as they are."""
    hz = 400.0  # 60 samples a period at 24 kHz, a whole number of periods in the second
    x = tone(hz=hz)
    half, quarter, whole = np.roll(x, 30), np.roll(x, 15), np.roll(x, 60)
    assert np.allclose(half, -x, atol=1e-9)
    assert snr(x, half) == pytest.approx(20 * math.log10(1 / 2), abs=1e-6) and si_sdr(x, half) > 100
    assert snr(x, quarter) == pytest.approx(10 * math.log10(1 / 2), abs=1e-6) and si_sdr(x, quarter) < -100
    assert snr(x, whole) > 100 and si_sdr(x, whole) > 100
    assert stft_distance(x, half) < 1e-6 and mel_distance(x, half, RATE) < 1e-6
    # A quarter period moves only the faint leakage between bins (and the edges): far less
    # than noise that makes the same SNR, which fills every bin.
    noise = np.random.default_rng(3).standard_normal(len(x))
    noise *= math.sqrt(np.mean((quarter - x) ** 2) / np.mean(noise**2))
    assert snr(x, x + noise) == pytest.approx(snr(x, quarter), abs=1e-9)
    assert stft_distance(x, quarter) < stft_distance(x, x + noise) / 20
    assert mel_distance(x, quarter, RATE) < mel_distance(x, x + noise, RATE) / 20


def test_mel_filters_are_unit_area_triangles():
    filters = mel_filters(RATE, 2048, 80)
    assert filters.shape == (80, 1025) and (filters >= 0).all()
    hz_per_bin = RATE / 2048
    # Slaney normalisation: each triangle's area (in Hz) is 1.
    areas = filters.sum(axis=1) * hz_per_bin
    assert np.allclose(areas[10:], 1.0, rtol=0.05)


def test_stoi_on_speech_like_audio():
    rng = np.random.default_rng(2)
    x = np.repeat(rng.standard_normal(RATE // 100), 100) * tone(hz=220.0) * 4
    scores = speech_metrics(x, x, RATE)
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert speech_metrics(x, x + 2 * rng.standard_normal(len(x)), RATE)["stoi"] < 0.9
