"""Many decoding streams at once, each with its own state, advanced together.

    streams = DecoderStreams(model)
    a, b = streams.add(), streams.add()
    streams.push(a, codes_a)          # [n_q, k] frames as a language model makes them
    streams.push(b, codes_b)
    audio = streams.step()            # {a: samples, b: samples}: what is final now
    streams.end(a); streams.step()    # a's last samples
    streams.remove(a)

This is the API a scheduler (a server) calls. Each `step` advances every stream with
frames waiting: streams of as many quantizers share one batched call per decoder layer
and advance by the fewest frames any of them has waiting (those left with several more
then catch up in a second call), a stream with nothing waiting costs nothing, and
streams join and leave between steps. Each stream's audio equals decoding its codes
alone in one call.

Latency: a sample is final once `latency_samples` of audio after it have their codes
(the decoder's right context, 394 ms for the 24 kHz model). With `lookahead_frames`
below the exact value, each step also gives provisional samples up to `lookahead_frames`
frames behind the newest one, computed as if the stream ended there (the decoder's own
zero padding stands in for the frames not yet made); they are not revised later.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import compiled_steps
from .compiled_steps import CompiledSteps
from .graphed_steps import GraphedSteps
from .streaming import DecoderPlan, DecoderState, decode_step, detach_all, new_state


@dataclass
class _Stream:
    state: DecoderState
    waiting: collections.deque = field(default_factory=collections.deque)  # [n_q, k] chunks, checked
    frames_waiting: int = 0
    ending: bool = False  # no more frames: the next step gives the last samples
    emitted: int = 0  # samples given out
    exact: int = 0  # samples final so far

    def queue(self, codes: torch.Tensor) -> None:
        self.waiting.append(codes)
        self.frames_waiting += codes.shape[-1]

    def take(self, frames: int) -> torch.Tensor:
        """The next `frames` frames, from as few chunks as hold them (a long backlog is not
        copied on every step)."""
        self.frames_waiting -= frames
        if self.waiting[0].shape[-1] == frames:  # a push a step: the usual case
            return self.waiting.popleft()
        taken = []
        while frames:
            chunk = self.waiting[0]
            if chunk.shape[-1] <= frames:
                taken.append(self.waiting.popleft())
                frames -= chunk.shape[-1]
            else:
                taken.append(chunk[:, :frames])
                self.waiting[0] = chunk[:, frames:]
                frames = 0
        return taken[0] if len(taken) == 1 else torch.cat(taken, dim=-1)


# Frames a stream must still have waiting after its batch's call (and at least as many as
# that call took) to take a second call of the step. A second call costs about a 1-frame
# step (most of a call is fixed cost), so a few frames that a stream is ahead by (a
# client's jitter; streams that all fall behind in a server past its limit) wait for a
# later step. In a server at the 2-core CPU's limit (4 streams and an encoding client),
# catching up every frame took the mean step from 28 to 34 ms and its p99 added latency
# from 75 to 120 ms; past it (6 streams), catching up 3 frames or more took them from 60
# to 66 ms and from 166 to 212 ms.
CATCH_UP_FRAMES = 3


class DecoderStreams:
    def __init__(
        self, model, lookahead_frames: int | None = None, max_frames_per_step: int | None = None,
        compiled: CompiledSteps | None = None, graphs: GraphedSteps | None = None,
    ):
        """`lookahead_frames`: future frames a sample waits for before it is given out;
        None (default) or `exact_lookahead_frames` is exact, fewer gives provisional audio
        sooner. `max_frames_per_step`: frames one step takes from a stream at most (None:
        all that wait). `compiled`: compiled steps to run (`compile`), shared with other
        `DecoderStreams` of the same model; `graphs`: steps captured as CUDA graphs
        (`capture_graphs`), which run first where they have the shape."""
        self.model = model.eval()
        self.plan = DecoderPlan(model)
        exact = self.exact_lookahead_frames
        if lookahead_frames is None:
            lookahead_frames = exact
        if not 0 <= lookahead_frames <= exact:
            raise ValueError(f"lookahead_frames must be from 0 to {exact}, got {lookahead_frames}")
        if max_frames_per_step is not None and max_frames_per_step < 1:
            raise ValueError(f"max_frames_per_step must be at least 1, got {max_frames_per_step}")
        self.lookahead_frames = lookahead_frames
        self.max_frames_per_step = max_frames_per_step
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count()
        if compiled is not None and compiled.model is not model:
            raise ValueError("compiled steps of another model")
        if graphs is not None and graphs.model is not model:
            raise ValueError("graphed steps of another model")
        self.compiled, self.graphs = compiled, graphs

    def compile(self, batch_sizes=(1,), frames=(1,)) -> None:
        """Compile the steady step (`compiled_steps`) now for these shapes: steps of that many
        streams advancing that many frames then run compiled (a quarter faster for 1-frame
        steps on a 2-core CPU), any other step eagerly. Takes seconds per shape; the model's
        compiled steps (`compiled_steps.shared`) are extended, and serve every decoder of it."""
        if self.compiled is None:
            self.compiled = compiled_steps.shared(self.model)
        self.compiled.compile(batch_sizes, frames)

    def capture_graphs(self, batch_sizes=(1,), frames=(1,)) -> None:
        """Capture the steady step as CUDA graphs (`graphed_steps`) now for these shapes (a
        model on a CUDA device only): a steady step of B streams then runs as one replay of
        the smallest captured batch of at least B (the rest padded), instead of hundreds of
        kernel launches. `graphed_steps.bucket_sizes(n)` gives sizes that serve 1 to n."""
        if self.graphs is None:
            self.graphs = GraphedSteps(self.model)
        self.graphs.capture(batch_sizes, frames)

    def _programs(self) -> tuple:
        return tuple(p for p in (self.graphs, self.compiled) if p is not None)

    @property
    def exact_lookahead_frames(self) -> int:
        """Frames after a sample's own that its exact value depends on (10 for 24 kHz)."""
        return self.plan.end_frames

    @property
    def latency_samples(self) -> int:
        """How far the final audio lags the newest code frame's end, in samples."""
        if self.lookahead_frames == self.exact_lookahead_frames:
            return self.plan.latency_samples
        return self.lookahead_frames * self.plan.hop

    @property
    def latency_ms(self) -> float:
        return 1000 * self.latency_samples / self.model.config.sample_rate

    @property
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def add(self) -> int:
        """A new stream; returns its id."""
        stream_id = next(self._ids)
        self._streams[stream_id] = _Stream(new_state(self.model))
        return stream_id

    def remove(self, stream_id: int) -> None:
        """Forget a stream and free its state (its waiting frames are dropped)."""
        self._stream(stream_id)
        del self._streams[stream_id]

    def reset(self, stream_id: int) -> None:
        """Start the stream again from nothing, under the same id."""
        self._stream(stream_id)
        self._streams[stream_id] = _Stream(new_state(self.model))

    def state(self, stream_id: int) -> DecoderState:
        """A copy of the stream's decoder state (the frames waiting are not part of it)."""
        return self._stream(stream_id).state.copy()

    def push(self, stream_id: int, codes) -> None:
        """Queue code frames `[n_q, k]` for the next step. Checked first: a refused push
        leaves the stream as it was."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 2:
            raise ValueError(f"push codes of shape [n_q, frames], got {tuple(codes.shape)}")
        stream = self._open(stream_id)
        if codes.shape[-1]:
            stream.queue(self._checked(codes[None], [stream_id], [stream])[0])

    def push_batch(self, stream_ids: Sequence[int], codes) -> None:
        """Queue `codes[b]` `[n_q, k]` for stream `stream_ids[b]`, for every b: the next frames
        of a batch of streams, as a language model generating for them together makes them.
        The codes are checked once for the batch (that check is most of a push's host time,
        which a step of hundreds of streams pays per stream); all or nothing: a refused
        batch leaves every stream as it was."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 3 or codes.shape[0] != len(stream_ids):
            raise ValueError(f"push_batch takes codes of shape [{len(stream_ids)} streams, n_q, frames], got {tuple(codes.shape)}")
        if len(set(stream_ids)) != len(stream_ids):
            raise ValueError("a stream id appears more than once in one push_batch")
        streams = [self._open(i) for i in stream_ids]
        if codes.shape[0] and codes.shape[-1]:
            for stream, rows in zip(streams, self._checked(codes, stream_ids, streams).unbind(0)):
                stream.queue(rows)

    def _open(self, stream_id: int) -> _Stream:
        """The stream, if it takes frames."""
        stream = self._stream(stream_id)
        if stream.ending or stream.state.ended:
            raise RuntimeError(f"stream {stream_id} has ended; add a new stream")
        return stream

    def _checked(self, codes: torch.Tensor, stream_ids: Sequence[int], streams: list[_Stream]) -> torch.Tensor:
        """`codes` `[streams, n_q, k]` checked, as int64 on the host and our own copy (a caller
        may reuse its tensor; they move to the device with the step's batch)."""
        checked = self.model.check_codes(codes, to_device=False)
        checked = checked.clone() if checked is codes and codes.device.type == "cpu" else checked.cpu()
        for stream_id, stream in zip(stream_ids, streams):
            expected = stream.state.num_quantizers or (stream.waiting[0].shape[0] if stream.waiting else None)
            if expected is not None and checked.shape[1] != expected:
                raise ValueError(f"pushed codes have {checked.shape[1]} quantizers; this stream has {expected} (stream {stream_id})")
        return checked

    def end(self, stream_id: int) -> None:
        """No more frames for this stream: the next step gives its last samples."""
        self._stream(stream_id).ending = True

    def frames_waiting(self, stream_id: int) -> int:
        return self._stream(stream_id).frames_waiting

    def frames_decoded(self, stream_id: int) -> int:
        return self._stream(stream_id).state.frames

    def samples_emitted(self, stream_id: int) -> int:
        return self._stream(stream_id).emitted

    @torch.inference_mode()
    def step(self) -> dict[int, torch.Tensor]:
        """Advance every stream that has frames waiting or has ended; each one's new audio
        (1-D, possibly empty). Streams of as many quantizers share one batched call and
        advance by as many frames: the fewest that any of them has waiting (at most
        `max_frames_per_step`), so that a stream with more waiting does not split the batch
        (one call's fixed cost is most of a frame's). Those left with `CATCH_UP_FRAMES` or
        more, and at least as many as that call took, then catch up in a second call of
        their own, by the fewest of theirs (no stream takes more than `max_frames_per_step`
        in a step, the two calls together): a stream that fell behind does not stay behind
        while the others come a frame at a time. A stream that has ended gives its last
        samples once its frames are all decoded."""
        groups: dict[int, list[int]] = {}  # quantizers -> streams with frames waiting
        for stream_id, stream in self._streams.items():
            if stream.frames_waiting and not stream.state.ended:
                groups.setdefault(stream.waiting[0].shape[0], []).append(stream_id)
        stepping = {i for ids in groups.values() for i in ids}.union(self._ending())
        if len(stepping) < len(self._streams):
            self._detach_left_out(stepping)
        out: dict[int, torch.Tensor] = {}
        for ids in groups.values():
            taken, behind = self._advance(ids, out, self.max_frames_per_step, catch_up=True)
            if behind:
                most = self.max_frames_per_step
                self._advance(behind, out, None if most is None else most - taken, catch_up=False)
                # The others keep their rows of the first call's batch, which these left.
                left = set(behind)
                detach_all([self._streams[i].state for i in ids if i not in left])
        ending = self._ending()  # and those whose last frames were just decoded
        if ending:
            streams = [self._streams[i] for i in ending]
            audio = decode_step(self.model, self.plan, [s.state for s in streams], None, to_host=True)
            for stream_id, stream, last in zip(ending, streams, audio):
                stream.state.ended = True
                _append(out, stream_id, self._emit(stream, last, None))
        return out

    def _advance(self, ids: list[int], out: dict[int, torch.Tensor], limit: int | None, catch_up: bool):
        """One batched call: streams `ids` (of as many quantizers) advance by the fewest
        frames any of them has waiting, at most `limit`; their new audio joins `out`.
        Returns the frames taken and, with `catch_up`, the streams for a second call: those
        left with `CATCH_UP_FRAMES` or more and at least as many as this call took, when the
        limit leaves room for as many. The others get their provisional audio now."""
        streams = [self._streams[i] for i in ids]
        frames = min(s.frames_waiting for s in streams)
        if limit is not None:
            frames = min(frames, limit)
        codes = torch.stack([s.take(frames) for s in streams])
        for stream in streams:
            stream.state.num_quantizers = codes.shape[1]
        states = [s.state for s in streams]
        audio = decode_step(self.model, self.plan, states, codes, programs=self._programs(), to_host=True)
        need = max(CATCH_UP_FRAMES, frames)
        catch_up = catch_up and (limit is None or limit - frames >= need)
        done = [not catch_up or s.frames_waiting < need for s in streams]
        # Provisional audio only where this call is the stream's last of the step.
        ahead = iter(self._provisional([s for s, d in zip(streams, done) if d]))
        for stream_id, stream, exact, d in zip(ids, streams, audio, done):
            _append(out, stream_id, self._emit(stream, exact, next(ahead) if d else None))
        return frames, [i for i, d in zip(ids, done) if not d]

    def _ending(self) -> list[int]:
        return [i for i, s in self._streams.items() if s.ending and not s.waiting and not s.state.ended]

    def _detach_left_out(self, stepping: set[int]) -> None:
        """Streams that sit out this step take copies of their histories, when streams stepping
        now leave the batch they shared behind: otherwise idle streams would keep one old batch
        each alive."""
        left_behind = {id(batch) for i in stepping if (batch := self._streams[i].state.batch) is not None}
        detach_all([s.state for i, s in self._streams.items() if i not in stepping and id(s.state.batch) in left_behind])

    def _provisional(self, streams: list[_Stream]) -> list[torch.Tensor | None]:
        """Each stream's audio past its final part, as if it ended now, where the lookahead
        asks for it (computed on copies of the states)."""
        if self.lookahead_frames == self.exact_lookahead_frames or not streams:
            return [None] * len(streams)
        copies = [s.state.branch() for s in streams]
        # Only the frames of padding that carry the output to the lookahead: fewer for more.
        short = self.plan.latency_samples - self.lookahead_frames * self.plan.hop
        return decode_step(self.model, self.plan, copies, None, end_frames=max(1, -(-short // self.plan.hop)), to_host=True)

    def _emit(self, stream: _Stream, exact: torch.Tensor, ahead: torch.Tensor | None) -> torch.Tensor:
        """The samples not given out yet: the new final ones, then provisional ones up to
        the lookahead."""
        start = stream.exact
        stream.exact += exact.shape[0]
        if ahead is None and stream.emitted <= start:  # exact audio only, none given out yet
            stream.emitted = stream.exact
            return exact.clone()  # a copy: a view would keep the whole step's audio alive
        pieces = [exact[max(0, stream.emitted - start) :]]
        target = stream.exact
        if ahead is not None:
            target = max(target, (stream.state.frames - self.lookahead_frames) * self.plan.hop)
            first = max(stream.emitted, stream.exact)
            pieces.append(ahead[first - stream.exact : target - stream.exact])
        audio = torch.cat(pieces)  # a copy: a view would keep the whole step's audio alive
        stream.emitted = max(stream.emitted, target)
        return audio

    def _stream(self, stream_id: int) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(f"no stream with id {stream_id!r} (open: {sorted(self._streams)})") from None


def _append(out: dict[int, torch.Tensor], stream_id: int, audio: torch.Tensor) -> None:
    out[stream_id] = torch.cat([out[stream_id], audio]) if stream_id in out else audio


class StreamingDecoder:
    """Codes in, audio out, for one stream (or a batch in lockstep); the concatenated output
    equals one-shot `decode`.

        decoder = tokenizer.stream_decoder()
        for codes in generated:            # [n_q, k] (or [batch, n_q, k]) as they arrive
            play(decoder.push(codes))      # the audio that is final now (may be empty)
        play(decoder.flush())              # the rest, at the end of the stream
    """

    def __init__(self, model, lookahead_frames: int | None = None, compiled: CompiledSteps | None = None,
                 graphs: GraphedSteps | None = None):
        """`compiled`, `graphs`: compiled steps (`CompiledSteps`, see `DecoderStreams.compile`)
        or CUDA graphs of steps (`GraphedSteps`, see `DecoderStreams.capture_graphs`) to run."""
        self.streams = DecoderStreams(model, lookahead_frames=lookahead_frames, compiled=compiled, graphs=graphs)
        self._ids: list[int] | None = None
        self._batched: bool | None = None
        self._closed = False

    @property
    def latency_frames(self) -> int:
        """Frames a sample waits for: ceil(latency_samples / hop)."""
        return -(-self.streams.latency_samples // self.streams.plan.hop)

    @property
    def latency_samples(self) -> int:
        return self.streams.latency_samples

    @property
    def latency_ms(self) -> float:
        return self.streams.latency_ms

    @property
    def frames_received(self) -> int:
        return 0 if self._ids is None else self.streams.frames_decoded(self._ids[0])

    @property
    def samples_emitted(self) -> int:
        return 0 if self._ids is None else self.streams.samples_emitted(self._ids[0])

    def push(self, codes) -> torch.Tensor:
        """Add code frames `[n_q, k]` or `[batch, n_q, k]`; return the audio now final
        (`[samples]` or `[batch, samples]`, possibly empty)."""
        if self._closed:
            raise RuntimeError("this stream was flushed; start a new StreamingDecoder")
        codes = torch.as_tensor(codes)
        if codes.dim() not in (2, 3):
            raise ValueError(f"push codes of shape [n_q, frames] or [batch, n_q, frames], got {tuple(codes.shape)}")
        batched = codes.dim() == 3
        if self._batched is not None and batched != self._batched:
            raise ValueError("mixing batched and unbatched pushes in one stream")
        items = codes if batched else codes[None]
        if self._ids is not None and len(items) != len(self._ids):
            raise ValueError(f"pushed a batch of {len(items)}; this stream has {len(self._ids)}")
        new = self._ids is None
        ids = self._ids if not new else [self.streams.add() for _ in items]
        try:  # all or nothing: a refused push changes nothing
            self.streams.push_batch(ids, items)
        except Exception:
            if new:
                for stream_id in ids:
                    self.streams.remove(stream_id)
            raise
        self._ids, self._batched = ids, batched
        return self._collect(self.streams.step())

    def flush(self) -> torch.Tensor:
        """End the stream: the audio of every frame not yet given out."""
        if self._ids is None:
            raise RuntimeError("nothing was pushed")
        if self._closed:
            raise RuntimeError("this stream was flushed; start a new StreamingDecoder")
        for stream_id in self._ids:
            self.streams.end(stream_id)
        audio = self._collect(self.streams.step())
        self._closed = True
        return audio

    def _collect(self, out: dict[int, torch.Tensor]) -> torch.Tensor:
        # A batch moves in lockstep, so every item has as many new samples.
        audio = torch.stack([out.get(i, torch.zeros(0)) for i in self._ids])
        return audio if self._batched else audio[0]


def decode_in_chunks(model, codes: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """`decode` of `[batch, n_q, frames]` fed `chunk_frames` at a time: the one-shot audio
    `[batch, frames * hop]`, in memory bounded by the chunk."""
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    stream = StreamingDecoder(model)
    pieces = [stream.push(codes[..., i : i + chunk_frames]) for i in range(0, codes.shape[-1], chunk_frames)]
    pieces.append(stream.flush())
    return torch.cat(pieces, dim=-1)
