"""Decoding in chunks and as a stream, with exactly the one-shot result.

Each output sample of the acoustic decoder depends on a bounded range of code
frames: `decoder_context` derives that range from the decoder's layers
(kernels, strides, dilations, padding), so nothing is guessed. A chunk decoded
with that much context on both sides reproduces the one-shot samples of its
frames; only the samples next to a chunk's artificial edges would differ, and
those are never emitted.

`StreamingDecoder` holds the whole streaming state in one place: the code
frames still needed as context and how far audio has been emitted. `push`
returns the audio of every frame that no longer depends on frames not yet
received; `flush` ends the stream.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decoder_context(model) -> tuple[int, int]:
    """(left, right): code frames before and after frame f that f's audio depends on."""
    hop = model.config.hop_length
    frame = 10_000  # far from both ends, so no edge clips the intervals
    lo, hi = frame * hop, (frame + 1) * hop - 1
    convs = [m for m in model.acoustic_decoder.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    for conv in reversed(convs):  # walk from the output back to the codes
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        if isinstance(conv, nn.ConvTranspose1d):
            # output t receives input j when 0 <= t + p - j*s <= d*(k-1)
            lo, hi = math.ceil((lo + p - d * (k - 1)) / s), (hi + p) // s
        else:
            lo, hi = lo * s - p, hi * s - p + d * (k - 1)
    return frame - lo, hi - frame


class StreamingDecoder:
    """Codes in, audio out, frame by frame; the concatenated output equals one-shot `decode`.

        decoder = tokenizer.stream_decoder()
        for codes in generated:            # [n_q, k] (or [batch, n_q, k]) as they arrive
            play(decoder.push(codes))      # audio of the frames that are final now (may be empty)
        play(decoder.flush())              # the rest, at the end of the stream

    Latency: `latency_frames` frames (the decoder's right context) after a frame
    arrives, its audio is final; `latency_ms` in milliseconds.
    """

    def __init__(self, model):
        self.model = model
        self.left, self.right = decoder_context(model)
        self.hop = model.config.hop_length
        self._codes: torch.Tensor | None = None  # [batch, n_q, frames kept], frames from `_first`
        self._first = 0  # index of the first kept frame
        self._received = 0
        self._emitted = 0
        self._batched: bool | None = None
        self._closed = False

    @property
    def latency_frames(self) -> int:
        return self.right

    @property
    def latency_ms(self) -> float:
        return 1000 * self.right / self.model.config.frame_rate

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Add code frames `[n_q, k]` or `[batch, n_q, k]`; return the audio now final
        (`[samples]` or `[batch, samples]`, a multiple of the hop, possibly empty)."""
        if self._closed:
            raise RuntimeError("this stream was flushed; start a new StreamingDecoder")
        codes = torch.as_tensor(codes)
        batched = codes.dim() == 3
        if codes.dim() not in (2, 3):
            raise ValueError(f"push codes of shape [n_q, frames] or [batch, n_q, frames], got {tuple(codes.shape)}")
        if self._batched is not None and batched != self._batched:
            raise ValueError("mixing batched and unbatched pushes in one stream")
        codes = codes if batched else codes[None]
        if codes.shape[-1] == 0:
            return self._empty(codes.shape[0])
        if self._codes is not None and codes.shape[:2] != self._codes.shape[:2]:
            raise ValueError(f"pushed codes have shape {tuple(codes.shape[:2])}[...]; this stream has {tuple(self._codes.shape[:2])}")
        # Checked before anything is kept: a refused push leaves the stream as it was.
        codes = self.model.check_codes(codes)
        self._batched = batched
        self._codes = codes if self._codes is None else torch.cat([self._codes, codes.to(self._codes.device)], dim=-1)
        self._received += codes.shape[-1]
        return self._emit(self._received - self.right)

    def flush(self) -> torch.Tensor:
        """End the stream: the audio of every frame not yet emitted."""
        if self._codes is None:
            raise RuntimeError("nothing was pushed")
        audio = self._emit(self._received)
        self._closed = True
        return audio

    def _emit(self, until: int) -> torch.Tensor:
        """Decode frames [emitted, until) with their context; keep only what later frames need."""
        batch = self._codes.shape[0]
        if until <= self._emitted:
            return self._empty(batch)
        start = max(self._first, self._emitted - self.left)
        stop = min(self._received, until + self.right)
        window = self._codes[..., start - self._first : stop - self._first]
        with torch.inference_mode():
            audio = self.model.decode(window, return_dict=False)[:, 0]
        audio = audio[:, (self._emitted - start) * self.hop : (until - start) * self.hop].float().cpu()
        self._emitted = until
        keep_from = max(0, self._emitted - self.left)  # the left context of the next frames
        self._codes = self._codes[..., keep_from - self._first :]
        self._first = keep_from
        return audio if self._batched else audio[0]

    def _empty(self, batch: int) -> torch.Tensor:
        audio = torch.zeros(batch, 0)
        return audio if self._batched else audio[0]


def decode_in_chunks(model, codes: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """`decode` of `[batch, n_q, frames]` in chunks of `chunk_frames`, bounded memory; equals one-shot."""
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    stream = StreamingDecoder(model)
    pieces = [stream.push(codes[..., i : i + chunk_frames]) for i in range(0, codes.shape[-1], chunk_frames)]
    pieces.append(stream.flush())
    return torch.cat(pieces, dim=-1)
