"""Streamed decoding: the incremental engine (per-layer state) against re-decoding windows.

    python benchmarks/streaming.py push --frames 125               # time per push, old vs new
    python benchmarks/streaming.py streams --frames 40          # streams held in real time
    python benchmarks/streaming.py push --frames 125 --compile     # ... and the compiled step
    python benchmarks/streaming.py streams --frames 40 --compile   # streams held, compiled steps
    python benchmarks/streaming.py lookahead                       # error of lower latency
    python benchmarks/streaming.py overhead --model ../shared/fixtures/tiny-24k --frames 40   # host time per stream
    python benchmarks/streaming.py streams --device cuda --counts 1 64 256 1024 --graphs   # on a GPU

The model is the benchmarks' full-size one with seeded random weights (common.py), or
`--model DIR`. "Old" is the engine this project shipped before: every push decodes the
new frames with 10 frames of context on each side and keeps only the final ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from common import prepare_model_and_inputs, recordings

from higgs_tokenizer import HiggsAudioV2TokenizerModel, causal_layers, streaming
from higgs_tokenizer.decoder_streams import DecoderStreams
from higgs_tokenizer.streaming import decoder_context


class WindowedStream:
    """The previous engine, for comparison: re-decode a window around the new frames."""

    def __init__(self, model):
        self.model, (self.left, self.right) = model, decoder_context(model)
        self.hop, self.codes, self.emitted = model.config.hop_length, None, 0

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=-1)
        until = self.codes.shape[-1] - self.right
        if until <= self.emitted:
            return torch.zeros(0)
        start = max(0, self.emitted - self.left)
        window = self.codes[:, start : until + self.right]
        audio = self.model.decode(window[None]).audio_values[0, 0]
        out = audio[(self.emitted - start) * self.hop : (until - start) * self.hop]
        self.emitted = until
        return out


def speech_codes(model, frames: int) -> torch.Tensor:
    """Codes of real speech (the shared recordings) from this model: `[8, frames]`."""
    audio = recordings()[: frames * model.config.hop_length]
    with torch.inference_mode():
        return model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0]


def time_stream(push_fn, codes: torch.Tensor, push: int) -> tuple[list[float], list[torch.Tensor]]:
    times, pieces = [], []
    for f in range(0, codes.shape[-1], push):
        _sync()
        started = time.perf_counter()
        pieces.append(push_fn(codes[:, f : f + push]))
        _sync()
        times.append(time.perf_counter() - started)
    return times, pieces


def new_stream(model, lookahead_frames: int | None = None, compiled_frames: int | None = None):
    """A stream's push and finish functions, and its DecoderStreams; with `compiled_frames`,
    steps of that many frames run compiled."""
    streams = DecoderStreams(model, lookahead_frames=lookahead_frames)
    if compiled_frames is not None:
        started = time.perf_counter()
        streams.compile(batch_sizes=(1,), frames=(compiled_frames,))
        print(f"(compiled the {compiled_frames}-frame step in {time.perf_counter() - started:.0f} s)", flush=True)
    stream_id = streams.add()

    def push(codes):
        streams.push(stream_id, codes)
        return streams.step()[stream_id]

    def finish():
        streams.end(stream_id)
        return streams.step()[stream_id]

    return push, finish, streams


@torch.inference_mode()
def bench_push(args, model):
    codes = speech_codes(model, args.frames)
    frame_ms = 1000 / model.config.frame_rate
    model.decode(codes[None, :, :30])  # warm-up
    one_shot = min(_timed(lambda: model.decode(codes[None])) for _ in range(3))
    reference = model.decode(codes[None]).audio_values[0, 0]
    per_frame = one_shot / codes.shape[-1]
    print(f"one-shot decode of {codes.shape[-1]} frames: {one_shot:.2f} s = {1000 * per_frame:.1f} ms per frame "
          f"(real-time factor {1000 * per_frame / frame_ms:.3f})")
    push_fn, finish, streams = new_stream(model)
    latency = streams.latency_samples
    print(f"latency: new {latency} samples = {streams.latency_ms:.1f} ms; old 10 frames = 400 ms; plus compute")
    print("| frames per push | engine | ms per push (median) | one-shot ms per frame, then | x one-shot cost per frame | real-time factor | max error / peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    engines = ("old", "new", "new, compiled") if args.compile else ("old", "new")
    for push in args.push:
        for name in engines:
            # One-shot decoding timed again next to each row: this machine's speed drifts
            # over a run, and a ratio to a figure from minutes before would carry the drift.
            per_frame = min(_timed(lambda: model.decode(codes[None])) for _ in range(2)) / codes.shape[-1]
            if name == "old":
                old = WindowedStream(model)
                times, pieces = time_stream(old.push, codes, push)
                tail = model.decode(old.codes[None, :, max(0, old.emitted - old.left) :]).audio_values[0, 0]
                pieces.append(tail[(old.emitted - max(0, old.emitted - old.left)) * old.hop :])
            else:
                push_fn, finish, _ = new_stream(model, compiled_frames=push if name == "new, compiled" else None)
                times, pieces = time_stream(push_fn, codes, push)
                pieces.append(finish())
            audio = torch.cat(pieces)
            error = float((audio - reference).abs().max() / reference.abs().max())
            steady = statistics.median(times[len(times) // 4 :])  # past the start-up pushes
            print(f"| {push} | {name} | {1000 * steady:.1f} | {1000 * per_frame:.2f} | {steady / (push * per_frame):.2f} | "
                  f"{1000 * steady / (push * frame_ms):.3f} | {error:.1e} |", flush=True)
    _, _, streams = new_stream(model)
    print(f"state per stream: {streams.state(streams.stream_ids[0]).nbytes / 2**20:.2f} MiB")


@torch.inference_mode()
def bench_streams(args, model):
    """Streams stepped together, each pushing the same number of frames per step: the time
    of a step, its pushes included, and whether it keeps up with real time (a step must
    take less than the audio its frames make). The counts take turns for `--rounds` rounds of `--frames` frames, so a
    slow spell of a shared machine does not fall on one count; a count's figure is the
    median step over its rounds (past each round's first quarter). With `--graphs`, the
    same steps captured as CUDA graphs take turns with the eager ones. With `--push-batch`,
    each step's frames are pushed with one `push_batch`, as a language model generating for
    the streams together would, rather than one `push` a stream."""
    frame_ms = 1000 / model.config.frame_rate
    kinds = ("eager", "graphed") if args.graphs else ("compiled",) if args.compile else ("eager",)
    print(f"| streams | frames per push | {' | '.join(f'ms per step, {kind} (median, pushes included)' for kind in kinds)} "
          "| audio ms per step | real time |")
    print("| --- | --- | " + "--- | " * len(kinds) + "--- | --- |")
    for push in args.push:
        engines = {(count, kind): DecoderStreams(model) for count in args.counts for kind in kinds}
        started = time.perf_counter()
        for (count, kind), streams in list(engines.items()):
            if kind == "compiled":
                streams.compile(batch_sizes=(count,), frames=(push,))
            elif kind == "graphed":
                try:
                    streams.capture_graphs(batch_sizes=(count,), frames=(push,))
                except Exception as error:  # the eager figures still stand: say why, and go on without
                    print(f"(the {push}-frame step of {count} streams could not be captured: {error!r})", flush=True)
                    engines[count, kind] = DecoderStreams(model)
        if kinds != ("eager",):
            print(f"(made the {push}-frame steps in {time.perf_counter() - started:.0f} s)", flush=True)
        times: dict[tuple[int, str], list[float]] = {key: [] for key in engines}
        for _ in range(args.rounds):
            for key, streams in engines.items():
                count = key[0]
                ids = [streams.add() for _ in range(count)]
                codes = torch.stack([torch.randint(0, 1024, (8, args.frames), generator=torch.Generator().manual_seed(i))
                                     for i in range(count)])
                steps = []
                for f in range(0, args.frames, push):
                    def pushes_and_step():  # a live stream pays for both
                        if args.push_batch:
                            streams.push_batch(ids, codes[:, :, f : f + push])
                        else:
                            for i, stream_id in enumerate(ids):
                                streams.push(stream_id, codes[i, :, f : f + push])
                        streams.step()

                    steps.append(_timed(pushes_and_step))
                times[key] += steps[len(steps) // 4 :]
                for stream_id in ids:
                    streams.remove(stream_id)
        held = dict.fromkeys(kinds, 0)
        for count in sorted(args.counts):
            medians = {kind: statistics.median(times[count, kind]) for kind in kinds}
            for kind, step in medians.items():
                keeps_up = 1000 * step < push * frame_ms
                if keeps_up and held[kind] == max([0] + [c for c in args.counts if c < count]):
                    held[kind] = count
            fastest = min(medians.values())
            cells = " | ".join(f"{1000 * step:.1f}" for step in medians.values())
            print(f"| {count} | {push} | {cells} | {push * frame_ms:.0f} | "
                  f"{'yes' if 1000 * fastest < push * frame_ms else 'no'} |", flush=True)
        cells = " | ".join(f"**{held[kind]}**" for kind in kinds)
        print(f"| most in real time | {push} | {cells} | | every count up to it keeps up |")
    if args.graphs:
        for (count, kind), streams in engines.items():
            if kind == "graphed" and streams.graphs.steps_run == 0:
                print(f"(the graphs of {count} streams never ran)")


@torch.inference_mode()
def bench_overhead(args, model):
    """The engine's host time per stream, apart from the decoder's layers: what a step of
    many streams costs however fast the device is (checking and queueing pushes, stacking
    states, handing out audio). The layers are stood in for by copies of the histories and
    silent audio, so this measures everything a step does but their arithmetic. Pushes are
    timed both ways: one `push` a stream, and one `push_batch` for the step's streams (which
    the steps then take). With `--sit-out P`, each stream skips a step's push with
    probability P (as streams of a server do): the steps then gather and copy the states of
    streams that join and leave."""

    def no_layers(layers, step, x):
        for name, history in step.buffers.items():
            step.buffers[name] = history.clone()
        return torch.zeros(x.shape[0], x.shape[-1] * model.config.hop_length, dtype=x.dtype, device=x.device)

    streaming.decoder_layers = no_layers  # decode_step looks it up on each call
    print("| streams | one push a stream, µs per stream | push_batch, µs per stream | step ms (no layers) | µs per stream |")
    print("| --- | --- | --- | --- | --- |")
    for count in args.counts:
        each, batch = DecoderStreams(model), DecoderStreams(model)
        ids = [each.add() for _ in range(count)]
        if [batch.add() for _ in range(count)] != ids:
            raise RuntimeError("the two engines numbered their streams differently")
        codes = torch.randint(0, 1024, (count, 8, args.frames), generator=torch.Generator().manual_seed(0))
        rng = np.random.default_rng(0)
        pushes, batched, steps = [], [], []
        for f in range(args.frames):
            pushing = [i for i in ids if rng.random() >= args.sit_out]
            pushes.append(_timed(lambda: [each.push(i, codes[i, :, f : f + 1]) for i in pushing]) / max(1, len(pushing)))
            each.step()
            batched.append(_timed(lambda: batch.push_batch(pushing, codes[pushing, :, f : f + 1])) / max(1, len(pushing)))
            steps.append(_timed(batch.step))
        push, push_batch = statistics.median(pushes[args.frames // 4 :]), statistics.median(batched[args.frames // 4 :])
        step = statistics.median(steps[args.frames // 4 :])
        print(f"| {count} | {1e6 * push:.1f} | {1e6 * push_batch:.1f} | {1000 * step:.2f} | {1e6 * step / count:.1f} |", flush=True)


@torch.inference_mode()
def bench_lookahead(args, model):
    """Provisional audio from fewer future frames, against the exact audio, on speech."""
    codes = speech_codes(model, args.frames)
    reference = model.decode(codes[None]).audio_values[0, 0]
    print("| lookahead frames | latency ms | SNR against exact (dB) | max error / peak | ms per 1-frame push (median) |")
    print("| --- | --- | --- | --- | --- |")
    for lookahead in args.lookaheads:
        push_fn, finish, streams = new_stream(model, lookahead)
        times, pieces = time_stream(push_fn, codes, 1)
        pieces.append(finish())
        audio = torch.cat(pieces)
        noise = (audio - reference).norm()
        snr = float("inf") if noise == 0 else float(20 * torch.log10(reference.norm() / noise))
        error = float((audio - reference).abs().max() / reference.abs().max())
        steady = statistics.median(times[len(times) // 4 :])
        print(f"| {lookahead} | {streams.latency_ms:.0f} | {snr:.1f} | {error:.1e} | {1000 * steady:.1f} |", flush=True)


def _sync() -> None:
    """Wait for the GPU's queued work, so that a time covers it (nothing on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    started = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["push", "streams", "lookahead", "overhead"])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: full size, random weights)")
    ap.add_argument("--frames", type=int, default=125, help="code frames per stream (125 = 5 s)")
    ap.add_argument("--push", type=int, nargs="+", default=None, help="frames per push")
    ap.add_argument("--counts", type=int, nargs="+", default=None,
                    help="streams: 1 2 4 5 6 7 8 10 by default; overhead: 1 16 64 256 1024")
    ap.add_argument("--rounds", type=int, default=3, help="streams: turns each count takes")
    ap.add_argument("--lookaheads", type=int, nargs="+", default=list(range(11)))
    ap.add_argument("--compile", action="store_true", help="push: also the compiled step; streams: compiled steps only")
    ap.add_argument("--graphs", action="store_true", help="streams: eager steps and steps captured as CUDA graphs")
    ap.add_argument("--sit-out", type=float, default=0.0, help="overhead: chance a stream skips a step's push")
    ap.add_argument("--push-batch", action="store_true", help="streams: each step's frames in one push_batch")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--precision", default="float32", help="float32 (default), tf32, bfloat16 or float16")
    ap.add_argument("--unfolded-elements", type=int, default=None,
                    help="on a GPU, a step's conv runs as a matrix product while its unfolded input has at most "
                         f"this many elements (default causal_layers.GPU_UNFOLDED_ELEMENTS, {causal_layers.GPU_UNFOLDED_ELEMENTS})")
    args = ap.parse_args()
    if args.unfolded_elements is not None:
        causal_layers.GPU_UNFOLDED_ELEMENTS = args.unfolded_elements  # `_as_product` reads it on each call
    if args.counts is None:
        args.counts = [1, 16, 64, 256, 1024] if args.section == "overhead" else [1, 2, 4, 5, 6, 7, 8, 10]
    if args.push is None:
        args.push = [1, 2, 5, 25] if args.section == "push" else [1, 5]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {device}, {args.precision}, model: {args.model or 'full size, random weights'}, "
          f"GPU products up to {causal_layers.GPU_UNFOLDED_ELEMENTS} unfolded elements")
    model = HiggsAudioV2TokenizerModel.from_pretrained(args.model or prepare_model_and_inputs()[0], device=args.device,
                                                       precision=args.precision)
    np.random.seed(0)
    sections = {"push": bench_push, "streams": bench_streams, "lookahead": bench_lookahead, "overhead": bench_overhead}
    sections[args.section](args, model)


if __name__ == "__main__":
    main()
