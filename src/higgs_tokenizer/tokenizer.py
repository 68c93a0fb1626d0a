"""`HiggsAudioTokenizer`: the high-level API, from files and arrays to codes and back.

    tokenizer = HiggsAudioTokenizer.from_pretrained("bosonai/higgs-audio-v2-tokenizer")
    codes = tokenizer.encode("speech.flac")                 # [8, frames] int64
    audio = tokenizer.decode(codes)                         # [frames * hop] float32, 24 kHz
    tokenizer.encode_file("speech.flac", "speech.hac")      # codes + metadata on disk
    tokenizer.decode_to_file("speech.hac", "speech.wav")    # back to the original length
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .audio import load_audio, normalize_loudness, resample_audio, write_audio
from .checkpoint_files import DEFAULT_MODEL, MODEL_ENV, default_model  # noqa: F401  (also the tokenizer's names)
from .codes_file import EncodedAudio, ModelIdentity, load_codes
from .long_audio import (
    CONTEXT_SECONDS,
    MEMORY_BUDGET_GB,
    WINDOW_SECONDS,
    SampleSource,
    encode_long,
    encode_memory_bytes,
    file_source,
)
from .model import HiggsAudioV2TokenizerModel
from .decoder_streams import StreamingDecoder, decode_in_chunks

# The GPU's default batching, padded audio seconds per model call: on an H200 (corpus mix of
# 128 clips of 1-20 s, benchmarks/throughput.py, 2026-11-28) 320 s encoded faster than
# 640 s, 8 or 32 clips in float32 and in bfloat16 (float32: 417 audio s/s against 318,
# 306 and 391), with a peak of 9.3 GB a call in float32. Measured before the semantic
# encoder's convs left cuDNN on GPUs (`FrameRateConv1d`), to be measured again.
GPU_BATCH_SECONDS = 320.0


class HiggsAudioTokenizer:
    def __init__(
        self,
        model: HiggsAudioV2TokenizerModel,
        name: str = "unnamed",
        batch_size: int | None = None,
        window_seconds: float = WINDOW_SECONDS,
        context_seconds: float = CONTEXT_SECONDS,
        memory_budget_gb: float = MEMORY_BUDGET_GB,
        batch_seconds: float | None = None,
    ):
        """`batch_size`: clips per model call (sorted by length, padded, masked: exact);
        default 1 on the CPU, where batching measured slower (the convs already use every
        core, and padding is extra work: docs/batching-long-streaming.md).
        `batch_seconds`: instead (or as well), a budget of padded audio per model call, the
        batch's clips times its longest, so that a batch of long clips is as large as one
        of short ones (a clip longer than the budget goes alone); without `batch_size` the
        budget alone decides. On a GPU the default is `GPU_BATCH_SECONDS`.
        A recording is encoded in one call while that call's estimated memory
        (`long_audio.encode_memory_bytes`) fits `memory_budget_gb`, and beyond it in windows
        of `window_seconds` with `context_seconds` of context on each side (see
        `long_audio`); codes longer than a window are decoded in chunks."""
        self.model = model.eval()
        self.name = name
        if batch_size is None and batch_seconds is None:
            if model.device.type == "cpu":
                batch_size = 1
            else:
                batch_seconds = GPU_BATCH_SECONDS
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_seconds is not None and not batch_seconds > 0:
            raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
        self.batch_seconds = batch_seconds
        if not window_seconds > 0 or not context_seconds >= 0 or not memory_budget_gb > 0:
            raise ValueError(
                "window_seconds and memory_budget_gb must be positive and context_seconds at least 0, got "
                f"{window_seconds}, {memory_budget_gb} and {context_seconds}"
            )
        self.memory_budget_gb = memory_budget_gb
        self.batch_size = batch_size
        self.window_seconds = window_seconds
        self.context_seconds = context_seconds
        self._identity: ModelIdentity | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        *,
        device=None,
        dtype=None,
        precision: str | None = None,
        length_rule: str | None = None,
        batch_size: int | None = None,
        window_seconds: float = WINDOW_SECONDS,
        context_seconds: float = CONTEXT_SECONDS,
        memory_budget_gb: float = MEMORY_BUDGET_GB,
        batch_seconds: float | None = None,
        **kwargs,
    ) -> "HiggsAudioTokenizer":
        """Load a checkpoint (Hub id or directory; default `default_model()`) onto `device` in
        `dtype`, or in a `precision` mode ("float32", "tf32", "bfloat16", "float16")."""
        name = os.fspath(model) if model is not None else default_model()
        loaded = HiggsAudioV2TokenizerModel.from_pretrained(
            name, device=device, dtype=dtype, precision=precision, length_rule=length_rule, **kwargs
        )
        return cls(
            loaded, name=name, batch_size=batch_size, window_seconds=window_seconds,
            context_seconds=context_seconds, memory_budget_gb=memory_budget_gb, batch_seconds=batch_seconds,
        )

    # ------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> int:
        return self.config.frame_rate

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self._identity = ModelIdentity.of(self.model, self.name)
        return self._identity

    # ------------------------------------------------------------ audio in
    def load(self, item, sample_rate: int | None = None, loudness: float | None = None):
        """One input as mono float32 at the model's rate: a path, an array/tensor (with `sample_rate`),
        or an `(array, sample_rate)` pair. `loudness`: target LUFS, or None to leave the level alone.

        A long recording in a file libsndfile reads is not loaded but streamed: the
        result is then a `SampleSource` (see `long_audio`)."""
        if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], (np.ndarray, torch.Tensor)):
            item, sample_rate = item
        if isinstance(item, (str, os.PathLike)):
            if loudness is None:  # loudness needs the whole signal
                streamed = self._stream_if_long(item)
                if streamed is not None:
                    return streamed
            samples, rate = load_audio(item)
        else:
            if sample_rate is None:
                raise ValueError(
                    "an array or tensor needs its sample rate: encode(x, sample_rate=...) or encode((x, rate))"
                )
            samples, rate = _as_mono_float(item), int(sample_rate)
            if samples.size == 0:
                raise ValueError("empty audio")
            if not np.isfinite(samples).all():
                raise ValueError("audio contains NaN or infinite samples")
        if loudness is not None:
            samples = normalize_loudness(samples, rate, loudness)
        return resample_audio(samples, rate, self.sample_rate)

    # ------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, x, sample_rate: int | None = None, bandwidth: float | None = None, loudness: float | None = None):
        """Codes `[num_quantizers, frames]` (int64, CPU) for one input, or a list of them for a list.

        Each item's codes cover exactly that item: with the default length rule the
        audio is right-padded to a whole frame, as the feature extractor does
        (`model.valid_length`).
        """
        return self._encode(x, sample_rate, bandwidth, loudness, lambda codes, samples, item: codes)

    @torch.inference_mode()
    def encode_to_result(self, x, sample_rate=None, bandwidth=None, loudness=None, source: str | None = None):
        """Like `encode`, but each result is an `EncodedAudio` (codes with the metadata a codes file holds)."""

        def wrap(codes, samples: int, item):
            name = source if source is not None else (os.fspath(item) if isinstance(item, (str, os.PathLike)) else "")
            return self.as_encoded_audio(codes, samples, name)

        return self._encode(x, sample_rate, bandwidth, loudness, wrap)

    def as_encoded_audio(self, codes: torch.Tensor, num_samples: int, source: str = "") -> EncodedAudio:
        """An `EncodedAudio`: codes of a clip of `num_samples` samples (at the model's rate) with
        this model's metadata, as a codes file holds them."""
        return EncodedAudio(
            codes=codes,
            num_samples=num_samples,
            sample_rate=self.sample_rate,
            hop_length=self.hop_length,
            frame_rate=self.frame_rate,
            codebook_size=self.config.codebook_size,
            model=self.identity,
            source=source,
            length_rule=self.config.length_rule,
        )

    def _encode(self, x, sample_rate, bandwidth, loudness, wrap):
        single = not isinstance(x, list)
        items = [x] if single else x
        if not items:
            return []
        clips = [self.load(item, sample_rate, loudness) for item in items]
        codes = self.encode_clips(clips, bandwidth)
        results = [wrap(c, num_samples(clip), item) for c, clip, item in zip(codes, clips, items)]
        return results[0] if single else results

    @torch.inference_mode()
    def encode_clips(self, clips: Sequence, bandwidth: float | None = None) -> list[torch.Tensor]:
        """Codes for mono clips at the model's rate (arrays or `SampleSource`s), each exactly
        as if alone (at the model's `valid_length`): clips are sorted by length and batched
        with padding masks; long recordings are encoded in windows."""
        results: list[torch.Tensor | None] = [None] * len(clips)
        shortest = self.model.shortest_clip()
        for i, clip in enumerate(clips):
            if num_samples(clip) < shortest:
                where = f"clip {i} of {len(clips)}" if len(clips) > 1 else "the clip"
                raise ValueError(
                    f"{where} has {num_samples(clip)} samples: too short; the shortest clip this model "
                    f"encodes has {shortest} ({shortest / self.sample_rate * 1000:.1f} ms)"
                )
        short = []
        for i, clip in enumerate(clips):
            if self._in_windows(clip):
                source = clip if isinstance(clip, SampleSource) else SampleSource.from_array(clip)
                results[i] = self._encode_long(source, bandwidth)
            else:
                short.append((i, clip))
        short.sort(key=lambda item: -len(item[1]))  # neighbours in length share a batch: little padding
        for group in self._batches(short):
            lengths = [len(clip) for _, clip in group]
            batch = torch.zeros(len(group), 1, max(lengths))
            for row, (_, clip) in enumerate(group):
                batch[row, 0, : len(clip)] = torch.from_numpy(clip)
            mask = (torch.arange(batch.shape[-1]) < torch.tensor(lengths)[:, None]).long()
            out = self.model.encode(batch, bandwidth=bandwidth, padding_mask=mask)
            for row, (i, _) in enumerate(group):
                results[i] = out.audio_codes[row, :, : int(out.code_lengths[row])].cpu()
        return results

    def batch_full(self, lengths: Sequence[int]) -> bool:
        """Whether clips of these lengths (samples) fill one model call: no other clip joins them."""
        if self.batch_size is not None and len(lengths) >= self.batch_size:
            return True
        if self.batch_seconds is None or not lengths:
            return False
        return (len(lengths) + 1) * max(lengths) > self.batch_seconds * self.sample_rate

    def _batches(self, clips: list) -> list[list]:
        """`(index, clip)` pairs, longest first, cut into model calls."""
        batches: list[list] = []
        for item in clips:
            if not batches or self.batch_full([len(clip) for _, clip in batches[-1]]):
                batches.append([])
            batches[-1].append(item)
        return batches

    @torch.inference_mode()
    def try_encode_clips(self, clips: Sequence, bandwidth: float | None = None) -> list[torch.Tensor | Exception]:
        """`encode_clips` where one bad clip cannot sink the others: each result is the clip's
        codes or the exception that encoding it raised. Recordings encoded in windows go one
        by one (a streamed one can be read only once, so a retry could not read it again); a
        batch of the others that fails is retried clip by clip."""
        results: dict[int, torch.Tensor | Exception] = {}
        batched = []
        for i, clip in enumerate(clips):
            try:
                windowed = self._in_windows(clip)
            except Exception as err:  # not a clip at all
                results[i] = err
                continue
            if windowed:
                results[i] = self._codes_or_error(clip, bandwidth)
            else:
                batched.append(i)
        try:
            results.update(zip(batched, self.encode_clips([clips[i] for i in batched], bandwidth)))
        except Exception:
            results.update((i, self._codes_or_error(clips[i], bandwidth)) for i in batched)
        return [results[i] for i in range(len(clips))]

    def _codes_or_error(self, clip, bandwidth) -> torch.Tensor | Exception:
        try:
            return self.encode_clips([clip], bandwidth)[0]
        except Exception as err:
            return err

    def _encode_long(self, source: SampleSource, bandwidth) -> torch.Tensor:
        return encode_long(
            self.model, source, bandwidth=bandwidth,
            window_seconds=self.window_seconds, context_seconds=self.context_seconds,
        )

    def _in_windows(self, clip) -> bool:
        """Whether `encode_clips` encodes this clip in windows: a streamed recording, or one
        that one call would not fit the memory budget for."""
        return isinstance(clip, SampleSource) or self._needs_windows(len(clip))

    def _needs_windows(self, samples: int) -> bool:
        """Whether one call on this clip would pass the memory budget."""
        return encode_memory_bytes(self.model, self.model.valid_length(samples)) > self.memory_budget_gb * 2**30

    def _stream_if_long(self, path) -> SampleSource | None:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception:
            return None  # not for libsndfile (or not audio): load_audio says why
        if info.frames < 1 or not self._needs_windows(int(info.frames * self.sample_rate / info.samplerate)):
            return None
        return file_source(path, self.sample_rate)

    # ------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, codes, chunk_frames: int | None = None):
        """Waveform(s) at the model's rate, float32 on the CPU.

        `codes`: `[n_q, frames]` (or a list of them) → `[frames * hop]` samples;
        an `EncodedAudio` or codes-file path → the recording at its original length.
        `chunk_frames`: decode in chunks of that many frames (the same audio, in
        bounded memory); by default codes longer than the encoding window are decoded
        in window-sized chunks.
        """
        single = not isinstance(codes, list)
        items = [codes] if single else codes
        out = [self._decode_one(item, chunk_frames) for item in items]
        return out[0] if single else out

    def stream_decoder(self, lookahead_frames: int | None = None, compiled=None, graphs=None) -> StreamingDecoder:
        """A `StreamingDecoder`: push code frames as they arrive, get the audio that is final
        (or, with `lookahead_frames` below 10, provisional audio sooner). `compiled`: a
        `CompiledSteps` of this model, compiled once and shared by many decoders; `graphs`:
        a `GraphedSteps` (CUDA graphs of the steps), likewise."""
        return StreamingDecoder(self.model, lookahead_frames=lookahead_frames, compiled=compiled, graphs=graphs)

    def _decode_one(self, item, chunk_frames: int | None = None) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            item = load_codes(item)
        if isinstance(item, EncodedAudio):
            item.check_model(self.identity, self.config)
            audio = self._decode_one(item.codes, chunk_frames)
            # Restore the recording's length (the last frame is cut, or, rarely, padded).
            audio = audio[: item.num_samples]
            if len(audio) < item.num_samples:
                audio = torch.nn.functional.pad(audio, (0, item.num_samples - len(audio)))
            return audio
        codes = torch.as_tensor(item)
        if codes.dim() != 2:
            raise ValueError(f"codes must be [num_quantizers, frames], got shape {tuple(codes.shape)}")
        if chunk_frames is None and codes.shape[1] > self.window_seconds * self.frame_rate:
            chunk_frames = round(self.window_seconds * self.frame_rate)
        if chunk_frames is not None:
            return decode_in_chunks(self.model, codes[None], chunk_frames)[0]
        return self.model.decode(codes[None]).audio_values[0, 0].float().cpu()

    # ------------------------------------------------------------ files
    def encode_file(
        self,
        path: str | os.PathLike,
        out_path: str | os.PathLike | None = None,
        bandwidth: float | None = None,
        loudness: float | None = None,
    ) -> EncodedAudio:
        """Encode an audio file; write its codes file to `out_path` when given."""
        result = self.encode_to_result(os.fspath(path), bandwidth=bandwidth, loudness=loudness)
        if out_path is not None:
            result.save(out_path)
        return result

    def decode_to_file(self, codes, out_path: str | os.PathLike) -> Path:
        """Decode codes (an `EncodedAudio`, a codes-file path, or a `[n_q, frames]` tensor) to a WAV or FLAC file."""
        return write_audio(out_path, self.decode(codes).numpy(), self.sample_rate)


def _as_mono_float(x) -> np.ndarray:
    """An array or tensor `[samples]` or `[channels, samples]` → mono float32; integer PCM scaled to [-1, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        array = (x.float() if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64) else x).numpy()
    else:
        array = np.asarray(x)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        scale = float(max(abs(info.min), info.max + 1))
        offset = (info.max + 1) / 2 if array.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit WAV) is centred
        array = (array.astype(np.float64) - offset) / (scale / 2 if array.dtype.kind == "u" else scale)
    elif array.dtype.kind != "f":
        raise TypeError(f"audio must be numbers, got dtype {array.dtype}")
    if array.ndim == 2:
        if array.shape[0] == 0:
            raise ValueError(f"audio of shape {array.shape} has no channels")
        if array.shape[0] > 16:
            raise ValueError(
                f"audio of shape {array.shape}: expected [channels, samples]; transpose a [samples, channels] array"
            )
        array = array.mean(axis=0)
    elif array.ndim != 1:
        raise ValueError(f"audio must be [samples] or [channels, samples], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def num_samples(clip) -> int:
    """Samples of a loaded clip: an array or a streamed `SampleSource`."""
    return clip.num_samples if isinstance(clip, SampleSource) else len(clip)
