"""Audio files in and out: decode any common format, mix to mono, resample, and
(optionally) normalise loudness; write WAV or FLAC.

libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis, Opus and MP3.
Other containers (m4a/AAC, video files) go through PyAV, an optional extra.
Resampling uses soxr at its highest quality; integer PCM comes out scaled to [-1, 1].
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from .atomic import write_atomic

# Read by libsndfile; anything else is offered to PyAV.
SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64"}
)
PYAV_EXTENSIONS = frozenset({".m4a", ".aac", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".wma", ".avi", ".ac3", ".amr"})
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | PYAV_EXTENSIONS
WRITE_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}


class AudioDecodeError(ValueError):
    """A file that exists but holds no decodable audio."""


class AudioTooLongError(ValueError):
    """Audio longer than the caller allows (`max_seconds`): refused before it is all decoded."""


# Rates above this are refused where a caller bounds the duration: with the duration,
# they bound the samples decoded (and no real recording needs more).
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
# And the samples decoded (all channels) at most as many as this rate in stereo would make:
# a small file of silence at 384 kHz in 64 channels must not decode to gigabytes.
BOUNDED_SAMPLES_PER_SECOND = 48_000 * 2


class MissingExtraError(ImportError):
    """An optional dependency is needed for this input; the message names the extra to install."""


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode `path` to mono float32 samples in [-1, 1], resampled to `sample_rate` if given.

    Returns `(samples, rate)`: `rate` is `sample_rate`, or the file's own rate when None.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in PYAV_EXTENSIONS:
        channels, rate = _read_pyav(path)
    else:
        try:
            channels, rate = _read_soundfile(path)
        except AudioDecodeError:
            if suffix in SOUNDFILE_EXTENSIONS:
                raise
            # An unknown extension: PyAV may still know the container.
            channels, rate = _read_pyav(path)
    return _mono_at_rate(channels, rate, sample_rate, str(path))


def load_audio_bytes(data: bytes, sample_rate: int | None = None, name: str = "<bytes>",
                     max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """`load_audio` for an encoded file held in memory (a Parquet audio column, an upload);
    `name` labels errors. `max_seconds`: refuse longer audio (`AudioTooLongError`) without
    decoding more than that much of it, whatever the file's header claims."""
    if not data:
        raise AudioDecodeError(f"{name}: empty audio bytes")
    try:
        channels, rate = _read_soundfile(io.BytesIO(data), name, max_seconds)
    except AudioDecodeError as err:
        try:
            channels, rate = _read_pyav(io.BytesIO(data), name, max_seconds)
        except MissingExtraError:
            raise err from None
    return _mono_at_rate(channels, rate, sample_rate, name)


def _check_size(name: str, rate: int, channels: int, frames: int, max_seconds: float | None) -> None:
    if max_seconds is None:
        return
    if not 0 < rate <= MAX_SAMPLE_RATE or channels > MAX_CHANNELS:
        raise AudioDecodeError(f"{name}: {channels} channels at {rate} Hz: not audio this reads "
                               f"(at most {MAX_CHANNELS} channels, {MAX_SAMPLE_RATE} Hz)")
    if frames > max_seconds * rate:
        raise AudioTooLongError(f"{name}: longer than the {max_seconds:g} s allowed")
    if frames * channels > max_seconds * BOUNDED_SAMPLES_PER_SECOND:
        raise AudioTooLongError(f"{name}: {channels} channels at {rate} Hz for {frames / rate:.1f} s: more samples "
                                f"than {max_seconds:g} s of 48 kHz stereo, the most this takes")


def _mono_at_rate(channels: np.ndarray, rate: int, sample_rate: int | None, name: str) -> tuple[np.ndarray, int]:
    if channels.shape[1] == 0:
        raise AudioDecodeError(f"{name}: contains no audio samples")
    if not np.isfinite(channels).all():
        raise AudioDecodeError(f"{name}: contains NaN or infinite samples")
    samples = to_mono(channels)
    if sample_rate is not None and sample_rate != rate:
        samples, rate = resample_audio(samples, rate, sample_rate), sample_rate
    return samples, rate


def to_mono(channels: np.ndarray) -> np.ndarray:
    """`[channels, samples]` → `[samples]` by averaging the channels."""
    return channels[0].copy() if channels.shape[0] == 1 else channels.mean(axis=0, dtype=np.float32)


def resample_audio(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """High-quality resampling of mono float samples (soxr, very high quality)."""
    import soxr

    if orig_rate == new_rate:
        return samples
    return soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), orig_rate, new_rate, quality="VHQ")


def _read_soundfile(source: Path | io.BytesIO, name: str | None = None, max_seconds: float | None = None):
    import soundfile as sf

    name = name or str(source)
    try:
        with sf.SoundFile(source if isinstance(source, io.BytesIO) else str(source)) as f:
            _check_size(name, f.samplerate, f.channels, f.frames, max_seconds)
            data, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(f"{name}: not a readable audio file ({_reason(err)})") from None
    return data.T, int(rate)


def _reason(err: Exception) -> str:
    text = str(err).strip()
    prefix = "Error opening"
    if text.startswith(prefix) and ": " in text:
        text = text.split(": ", 1)[1]
    return text or type(err).__name__


def _read_pyav(source: Path | io.BytesIO, name: str | None = None, max_seconds: float | None = None):
    name = name or str(source)
    try:
        import av
    except ImportError:
        kind = source.suffix if isinstance(source, Path) and source.suffix else "this"
        raise MissingExtraError(f"{name}: reading {kind} files needs PyAV: pip install 'higgs-audio-tokenizer[av]'") from None
    try:
        with av.open(source if isinstance(source, io.BytesIO) else str(source)) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{name}: has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            # Planar float: one row per channel, already scaled to [-1, 1].
            resampler = av.AudioResampler(format="fltp")
            chunks, frames = [], 0
            for decoded in container.decode(stream):
                for frame in resampler.resample(decoded):
                    chunks.append(frame.to_ndarray())
                    frames += chunks[-1].shape[1]
                    _check_size(name, rate, chunks[-1].shape[0], frames, max_seconds)
            chunks += [frame.to_ndarray() for frame in resampler.resample(None)]
    except (AudioDecodeError, AudioTooLongError):
        raise
    except Exception as err:  # PyAV raises its own error classes per FFmpeg error code
        raise AudioDecodeError(f"{name}: not a readable audio file ({type(err).__name__}: {err})") from None
    if not chunks:
        raise AudioDecodeError(f"{name}: contains no audio samples")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(rate)


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float = -23.0) -> np.ndarray:
    """Scale to `target_lufs` integrated loudness (ITU-R BS.1770, as the original implementation does with pyloudnorm).

    Silence and clips shorter than one 400 ms gating block have no defined loudness:
    they are returned unchanged, with a warning.
    """
    try:
        import pyloudnorm
    except ImportError:
        raise MissingExtraError(
            "loudness normalisation needs pyloudnorm: pip install 'higgs-audio-tokenizer[loudness]'"
        ) from None
    if len(samples) < int(0.4 * sample_rate):
        warnings.warn("clip shorter than 0.4 s: loudness left unchanged", stacklevel=2)
        return samples
    meter = pyloudnorm.Meter(sample_rate)
    loudness = meter.integrated_loudness(samples.astype(np.float64))
    if not np.isfinite(loudness):
        warnings.warn("silent clip: loudness left unchanged", stacklevel=2)
        return samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyloudnorm warns on peaks above 1; the codec takes them
        out = pyloudnorm.normalize.loudness(samples.astype(np.float64), loudness, target_lufs)
    return out.astype(np.float32)


def write_audio(path: str | os.PathLike, samples, sample_rate: int) -> Path:
    """Write mono audio as WAV (32-bit float: lossless, keeps peaks above 1) or FLAC (24-bit).

    The file appears whole or not at all (written aside, then renamed).
    """
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise ValueError(f"{path}: can write {', '.join(WRITE_FORMATS)} files, not {path.suffix or 'no extension'}")
    data = audio_file_bytes(samples, sample_rate, path.suffix.lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def audio_file_bytes(samples, sample_rate: int, suffix: str) -> bytes:
    """The bytes of the file `write_audio` writes for `suffix` (".wav" or ".flac")."""
    import soundfile as sf

    fmt = WRITE_FORMATS[suffix]
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if fmt[0] == "FLAC":
        samples = np.clip(samples, -1.0, 1.0)  # integer PCM cannot hold peaks above full scale
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt[0], subtype=fmt[1])
    return buffer.getvalue()
