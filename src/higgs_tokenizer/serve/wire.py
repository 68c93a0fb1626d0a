"""What goes over the wire: request bodies in, codes and audio out, stream messages.

Every reader here takes bytes already bounded by the app and checks what it finds
against the limits it is given: nothing trusts a size or count that a client sent.

- Codes as JSON (`/v1/encode` answers, `/v1/decode` bodies):
  `{"codes": [[...], ...], "num_samples": n}`, codes quantizer-major `[n_q][frames]`
  (the library's `[n_q, frames]`); `num_samples` optional on the way in.
- Codes files (`.hac`, `application/x-higgs-audio-codes`): see `codes_file`.
- Raw PCM in: `pcm_s16le` or `pcm_f32le`, interleaved channels, with its sample rate.
- Audio out: `wav` (32-bit float), `flac` (24-bit), `pcm_s16le` or `pcm_f32le` (raw, mono).
- Stream messages (`/v1/decode/stream`), client to server: binary = little-endian int16
  codes, frame-major (k frames of n_q codes each); or JSON text
  `{"type": "codes", "frames": [[c_0, ..., c_{n_q-1}], ...]}` (frame-major too: a
  language model makes a frame at a time) and `{"type": "end"}`.
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from ..audio import audio_file_bytes

CODES_MEDIA_TYPE = "application/x-higgs-audio-codes"
AUDIO_MEDIA_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm_s16le": "audio/L16",  # with the rate and channel count as parameters
    "pcm_f32le": "application/octet-stream",
}
MAX_QUANTIZERS = 64  # more than any model of this family has: bounds a request before the model checks it
PCM_DTYPES = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}


class BadRequest(ValueError):
    """A request that cannot be served as sent; the message says why (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- bodies in
def multipart_fields(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a `multipart/form-data` body: name → (filename or None, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise BadRequest("multipart body without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    position = body.find(delimiter)
    if position < 0:
        raise BadRequest("multipart body without its boundary")
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return fields
        header_end = body.find(b"\r\n\r\n", position)
        next_part = body.find(b"\r\n" + delimiter, position)
        if header_end < 0 or next_part < 0 or header_end > next_part:
            raise BadRequest("malformed multipart body")
        headers = body[position:header_end].decode("utf-8", "replace")
        disposition = re.search(r"content-disposition:([^\r\n]*)", headers, re.IGNORECASE)
        name = re.search(r'[; ]name="([^"]*)"', disposition.group(1)) if disposition else None
        if name is None:
            raise BadRequest("multipart part without a name")
        filename = re.search(r'filename="([^"]*)"', disposition.group(1))
        fields[name.group(1)] = (filename.group(1) if filename else None, body[header_end + 4 : next_part])
        position = next_part + 2


def pcm_samples(data: bytes, fmt: str, channels: int) -> np.ndarray:
    """Raw interleaved PCM → `[channels, samples]` in its own type (int16 or float32), as
    `HiggsAudioTokenizer.load` takes arrays (it scales, mixes and checks them)."""
    dtype = PCM_DTYPES.get(fmt)
    if dtype is None:
        raise BadRequest(f"unknown PCM format {fmt!r}; use one of {', '.join(PCM_DTYPES)}")
    if not 1 <= channels <= 16:
        raise BadRequest(f"channels must be from 1 to 16, got {channels}")
    frame_bytes = dtype.itemsize * channels
    if not data or len(data) % frame_bytes:
        raise BadRequest(f"{len(data)} bytes of {fmt} is not a whole number of {channels}-channel samples")
    return np.frombuffer(data, dtype=dtype).reshape(-1, channels).T.astype(dtype.newbyteorder("="))


# Bytes a JSON body of codes may take per code: "1023, " is 6; the rest is room for
# whitespace (indented one code a line, as json.dumps(indent=4) writes them, 18).
JSON_BYTES_PER_CODE = 32


def codes_from_json(data: bytes, max_frames: int, num_quantizers: int = MAX_QUANTIZERS) -> tuple[torch.Tensor, int | None]:
    """`(codes [n_q, frames] int64, num_samples or None)` from a JSON body, refused (413)
    before parsing when it is longer than codes of `num_quantizers` x `max_frames` can
    need: parsing holds the interpreter (a second for 50 MB), which every stream waits for."""
    limit = JSON_BYTES_PER_CODE * num_quantizers * max_frames + 4096
    if len(data) > limit:
        raise BadRequest(f"a JSON body of {len(data)} bytes; codes of at most {max_frames} frames need at most {limit}", 413)
    payload = _json(data, "body")
    if not isinstance(payload, dict) or "codes" not in payload:
        raise BadRequest('JSON body must be an object with "codes": [[...], ...] (quantizer-major)')
    codes = _int_rows(payload["codes"], "codes", max_rows=MAX_QUANTIZERS, max_columns=max_frames)
    num_samples = payload.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0):
        raise BadRequest(f'"num_samples" must be a non-negative integer, got {num_samples!r}')
    return codes, num_samples


def _json(data: bytes | str, what: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"{what} is not JSON: {err}") from None
    except RecursionError:  # nesting deeper than the parser goes
        raise BadRequest(f"{what}: JSON nested too deeply") from None


def _int_rows(rows, what: str, max_rows: int, max_columns: int) -> torch.Tensor:
    """A JSON list of equal-length integer lists as an int64 tensor `[rows, columns]`, bounded."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise BadRequest(f'"{what}" must be a non-empty list of lists of integers')
    if len(rows) > max_rows or any(len(r) > max_columns for r in rows):
        raise BadRequest(f'"{what}" is larger than this server takes ({max_rows} lists of at most {max_columns})')
    if len({len(r) for r in rows}) != 1:
        raise BadRequest(f'"{what}" lists differ in length')
    if not all(type(v) is int for r in rows for v in r):
        raise BadRequest(f'"{what}" must hold integers only')
    try:
        return torch.tensor(rows, dtype=torch.int64)
    except (OverflowError, RuntimeError) as err:
        raise BadRequest(f'"{what}": {err}') from None


# ----------------------------------------------------------------------------- streams
def stream_frames(message: bytes | str, num_quantizers: int, max_frames: int) -> torch.Tensor | None:
    """A stream message's frames as `[n_q, k]` codes, or None for the end message."""
    if isinstance(message, bytes):
        width = 2 * num_quantizers
        if not message or len(message) % width:
            raise BadRequest(f"a binary message holds whole frames of {num_quantizers} int16 codes "
                             f"({width} bytes each); got {len(message)} bytes")
        if len(message) // width > max_frames:
            raise BadRequest(f"{len(message) // width} frames in one message; at most {max_frames}")
        codes = np.frombuffer(message, dtype="<i2").reshape(-1, num_quantizers)
        return torch.from_numpy(codes.astype(np.int64)).T.contiguous()
    payload = _json(message, "a text message")
    kind = payload.get("type") if isinstance(payload, dict) else None
    if kind == "end":
        return None
    if kind != "codes":
        raise BadRequest('a text message is {"type": "codes", "frames": [[...], ...]} or {"type": "end"}')
    codes = _int_rows(payload.get("frames"), "frames", max_rows=max_frames, max_columns=MAX_QUANTIZERS).T.contiguous()
    if codes.shape[0] != num_quantizers:
        raise BadRequest(f"frames of {codes.shape[0]} codes; this stream has {num_quantizers} quantizers")
    return codes


# ----------------------------------------------------------------------------- audio out
def encode_audio(samples: torch.Tensor | np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Mono float samples as `fmt` bytes (see `AUDIO_MEDIA_TYPES`)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if fmt == "pcm_f32le":
        return samples.astype("<f4").tobytes()
    if fmt == "pcm_s16le":
        return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    if fmt not in ("wav", "flac"):
        raise BadRequest(f"unknown audio format {fmt!r}; use one of {', '.join(AUDIO_MEDIA_TYPES)}")
    return audio_file_bytes(samples, sample_rate, "." + fmt)  # as `write_audio` writes its files


def audio_media_type(fmt: str, sample_rate: int) -> str:
    if fmt == "pcm_s16le":
        return f"audio/L16;rate={sample_rate};channels=1;endianness=little-endian"
    return AUDIO_MEDIA_TYPES[fmt]


def audio_format(requested: str | None, accept: str) -> str:
    """The output format: `?format=` if given, else the first audio type `Accept` names, else WAV."""
    if requested:
        if requested not in AUDIO_MEDIA_TYPES:
            raise BadRequest(f"unknown audio format {requested!r}; use one of {', '.join(AUDIO_MEDIA_TYPES)}")
        return requested
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        for fmt, known in (("flac", "audio/flac"), ("flac", "audio/x-flac"), ("wav", "audio/wav"),
                           ("wav", "audio/x-wav"), ("pcm_s16le", "audio/l16")):
            if media == known:
                return fmt
    return "wav"
