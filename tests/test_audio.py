"""Reading and writing audio files: formats, rates, channels, loudness, and bad files."""

import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
from helpers import audio_file

from higgs_tokenizer.audio import (
    AudioDecodeError,
    MissingExtraError,
    load_audio,
    normalize_loudness,
    resample_audio,
    write_audio,
)


@pytest.mark.parametrize(
    "name,rate,channels", [("en_man.wav", 24000, 1), ("belinda.wav", 44100, 1), ("mabel.wav", 48000, 1), ("old_man.wav", 44100, 2)]
)
def test_shared_recordings_to_24k_mono(name, rate, channels):
    info = sf.info(audio_file(name))
    assert (info.samplerate, info.channels) == (rate, channels)
    samples, out_rate = load_audio(audio_file(name), 24000)
    assert out_rate == 24000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - info.frames * 24000 / rate) <= 1
    assert 0.01 < np.abs(samples).max() <= 1.0


def test_stereo_is_averaged_and_integer_pcm_scaled(tmp_path):
    pcm = np.array([[32767, -32768], [16384, 0], [-16384, 16384]], dtype=np.int16)
    sf.write(tmp_path / "s.wav", pcm, 8000, subtype="PCM_16")
    samples, rate = load_audio(tmp_path / "s.wav")
    assert rate == 8000
    np.testing.assert_allclose(samples, pcm.astype(np.float64).mean(axis=1) / 32768, atol=1e-7)


def test_resampling_keeps_a_tone(tmp_path):
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample_audio(tone, 44100, 24000)
    assert len(out) == 24000
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 1e-3


@pytest.mark.parametrize(
    "suffix,fmt,subtype,tolerance",
    [(".flac", "FLAC", "PCM_16", 0), (".ogg", "OGG", "VORBIS", 0), (".opus", "OGG", "OPUS", 0), (".mp3", "MP3", "MPEG_LAYER_III", 1200)],
)
def test_compressed_formats(tmp_path, suffix, fmt, subtype, tolerance):
    reference, _ = load_audio(audio_file("en_woman.wav"))
    reference = reference[:48000]
    path = tmp_path / f"copy{suffix}"
    sf.write(path, reference, 24000, format=fmt, subtype=subtype)
    samples, rate = load_audio(path, 24000)
    assert rate == 24000
    assert abs(len(samples) - len(reference)) <= tolerance
    n = min(len(samples), len(reference))
    if suffix == ".flac":
        assert np.abs(samples[:n] - reference[:n]).max() < 1e-4
    else:  # lossy: same signal, give or take the codec's delay
        shift = max(range(0, tolerance + 1, 1), key=lambda s: np.dot(samples[s:n], reference[: n - s]))
        corr = np.corrcoef(samples[shift:n], reference[: n - shift])[0, 1]
        assert corr > 0.9, corr


def test_m4a_through_pyav(tmp_path):
    import av

    reference, _ = load_audio(audio_file("en_woman.wav"))
    reference = reference[:48000]
    path = tmp_path / "clip.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=24000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(reference[None], format="flt", layout="mono")
        frame.sample_rate = 24000
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    samples, rate = load_audio(path, 24000)
    assert rate == 24000 and abs(len(samples) - len(reference)) <= 2048  # AAC priming and padding


def test_missing_pyav_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "clip.m4a").write_bytes(b"\0" * 100)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtraError, match=r"higgs-audio-tokenizer\[av\]"):
        load_audio(tmp_path / "clip.m4a")


def test_bad_files_each_say_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(IsADirectoryError):
        load_audio(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty file"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is text, not audio\n" * 20)
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        load_audio(tmp_path / "notes.wav")
    good = audio_file("en_man.wav").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(good[:30])
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        load_audio(tmp_path / "truncated.flac")
    sf.write(tmp_path / "nosamples.wav", np.zeros((0, 1), dtype=np.float32), 24000)
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        load_audio(tmp_path / "nosamples.wav")


def test_write_wav_and_flac(tmp_path):
    samples = np.linspace(-1.5, 1.5, 2400, dtype=np.float32)
    write_audio(tmp_path / "a.wav", samples, 24000)
    back, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 24000 and np.array_equal(back, samples)  # float WAV keeps peaks above 1
    write_audio(tmp_path / "a.flac", samples, 24000)
    back, _ = sf.read(tmp_path / "a.flac", dtype="float32")
    assert np.abs(back - np.clip(samples, -1, 1)).max() < 1e-6
    with pytest.raises(ValueError, match=r"\.wav, \.flac"):
        write_audio(tmp_path / "a.mp3", samples, 24000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "a.wav"]  # no temporary files left


def test_loudness_normalisation():
    import pyloudnorm

    samples, rate = load_audio(audio_file("en_man.wav"))
    out = normalize_loudness(samples, rate, -23.0)
    assert abs(pyloudnorm.Meter(rate).integrated_loudness(out.astype(np.float64)) + 23.0) < 0.05
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silent = np.zeros(rate, dtype=np.float32)
        assert normalize_loudness(silent, rate) is silent
    assert any("silent" in str(w.message) for w in caught)


def test_missing_pyloudnorm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyloudnorm", None)
    with pytest.raises(MissingExtraError, match=r"higgs-audio-tokenizer\[loudness\]"):
        normalize_loudness(np.zeros(24000, dtype=np.float32), 24000)
