"""Load on the codec server: live streams at real-time pace while other clients encode.

    python benchmarks/serve_load.py --streams 4 --encoders 1 --seconds 60

A real `higgs-tokenizer serve` process (the benchmarks' full-size model with random
weights, or `--model DIR`) on 127.0.0.1. Each stream client sends the codes of real
speech one frame per message, 25 messages a second, for `--seconds`, then the end
message; each encode client posts 5 s of speech, waits for the codes, and posts again.
Streams start at random phases within a frame, as independent clients would.

Reported:
- time to first audio: from a stream's first frame to its first audio (includes the
  decoder's inherent lookahead, 10 frames);
- added latency of each audio chunk beyond that lookahead: a sample is final once the
  frames 394 ms after it are sent, so a chunk is late by (arrival - the send time of
  the frame that made its last sample final);
- underruns: a player that starts at a stream's first chunk (no buffer of its own) finds
  a chunk arriving after the audio before it has finished playing; also counted for a
  player that starts 150 ms later (a 150 ms jitter buffer). With `--prebuffer-ms`, the
  server holds each stream's first audio until it has that much, then sends it as one
  chunk: the buffer is the server's, paid for in time to first audio;
- the server's resident memory, every second.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from common import prepare_model_and_inputs, recordings

FRAME_S = 0.04
HOP = 960
RATE = 24000


class Server:
    def __init__(self, model_dir: Path, extra: list[str]):
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.ws = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "higgs_tokenizer.cli", "serve", "--model", str(model_dir),
                   "--port", str(self.port), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 900  # --compile-steps compiles before serving
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


async def stream_client(server: Server, codes: np.ndarray, latency_samples: int, phase: float, prebuffer_ms: int,
                        results: list) -> None:
    import websockets

    await asyncio.sleep(phase)
    arrivals: list[tuple[float, int]] = []  # (time, samples so far) per audio chunk
    async with websockets.connect(f"{server.ws}/v1/decode/stream?format=pcm_s16le&prebuffer_ms={prebuffer_ms}", max_size=None) as ws:
        json.loads(await ws.recv())
        sent: list[float] = []

        async def receive():
            total = 0
            async for message in ws:
                if isinstance(message, bytes):
                    total += len(message) // 2
                    arrivals.append((time.perf_counter(), total))

        reader = asyncio.create_task(receive())
        start = time.perf_counter()
        for f in range(codes.shape[1]):
            await asyncio.sleep(max(0.0, start + f * FRAME_S - time.perf_counter()))
            sent.append(time.perf_counter())
            await ws.send(codes[:, f : f + 1].T.astype("<i2").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await reader
    # Chunks while frames were still coming (the end's flush has no frame to wait for).
    live = [(t, s) for t, s in arrivals if -(-(s + latency_samples) // HOP) <= len(sent)]
    added = [t - sent[-(-(s + latency_samples) // HOP) - 1] for t, s in live]
    first_time = live[0][0]
    underruns = {}
    for buffer in (0.0, 0.15):
        # A player that starts `buffer` after the first chunk and, when the next audio has
        # not come by the time it is due, stalls until it comes (counted once).
        count, stall = 0, 0.0
        for (t, total), (_, previous) in zip(live[1:], live[:-1]):
            due = first_time + buffer + stall + previous / RATE
            if t > due:
                count, stall = count + 1, stall + (t - due)
        underruns[buffer] = count
    results.append({"first_audio": first_time - sent[0], "added": added, "underruns": underruns, "chunks": len(live)})


async def encode_client(server: Server, clip: bytes, stop_at: float, results: list) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            response = await client.post(server.url + "/v1/encode", content=clip)
            response.raise_for_status()
            results.append(time.perf_counter() - started)
            await asyncio.sleep(0.5)


async def run(args, server: Server) -> None:
    import httpx

    speech = recordings()
    clip = io.BytesIO()
    sf.write(clip, speech[: 5 * RATE], RATE, format="WAV", subtype="FLOAT")
    encoded = httpx.post(server.url + "/v1/encode", content=clip.getvalue(), timeout=120).json()  # and a warm-up
    frames = int(args.seconds / FRAME_S)
    source = np.asarray(encoded["codes"])
    codes = np.tile(source, (1, frames // source.shape[1] + 1))[:, :frames]
    latency_samples = 9458 if args.latency_samples is None else args.latency_samples
    rss: list[tuple[float, float]] = []
    stream_results: list = []
    encode_times: list = []
    started = time.perf_counter()

    async def sample_rss():
        while True:
            rss.append((time.perf_counter() - started, server.rss_mib()))
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample_rss())
    rng = np.random.default_rng(0)
    tasks = [stream_client(server, codes, latency_samples, float(rng.uniform(0, FRAME_S)), args.prebuffer_ms, stream_results)
             for _ in range(args.streams)]
    tasks += [encode_client(server, clip.getvalue(), started + args.seconds, encode_times) for _ in range(args.encoders)]
    await asyncio.gather(*tasks)
    sampler.cancel()
    added = np.concatenate([r["added"] for r in stream_results])
    print(f"{args.streams} streams x {args.seconds:g} s at 25 frames/s (1 frame per message), "
          f"{args.encoders} encode clients (5 s clips): {len(encode_times)} encodes; "
          f"the server holds each stream's first {args.prebuffer_ms} ms of audio (prebuffer_ms)")
    print("| stream | time to first audio (ms) | chunks | added latency p50 (ms) | p99 (ms) | max (ms) | underruns, no buffer | underruns, 150 ms buffer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(stream_results):
        a = np.asarray(r["added"]) * 1000
        print(f"| {i} | {1000 * r['first_audio']:.0f} | {r['chunks']} | {np.percentile(a, 50):.0f} | "
              f"{np.percentile(a, 99):.0f} | {a.max():.0f} | {r['underruns'][0.0]} | {r['underruns'][0.15]} |")
    print(f"| all | {1000 * np.mean([r['first_audio'] for r in stream_results]):.0f} (mean) | "
          f"{sum(r['chunks'] for r in stream_results)} | {1000 * np.percentile(added, 50):.0f} | "
          f"{1000 * np.percentile(added, 99):.0f} | {1000 * added.max():.0f} | "
          f"{sum(r['underruns'][0.0] for r in stream_results)} | {sum(r['underruns'][0.15] for r in stream_results)} |")
    if encode_times:
        print(f"encode latency (5 s clips): median {1000 * np.median(encode_times):.0f} ms, "
              f"max {1000 * max(encode_times):.0f} ms")
    metrics = _metrics(httpx.get(server.url + "/metrics").text)
    steps = metrics.get("higgs_stream_step_seconds_count", 0)
    if steps:
        print(f"decoder steps: {steps:.0f}, {metrics['higgs_stream_step_streams_sum'] / steps:.2f} streams and "
              f"{1000 * metrics['higgs_stream_step_seconds_sum'] / steps:.1f} ms each on average, "
              f"{metrics.get('higgs_stream_compiled_steps_total', 0):.0f} of them compiled, "
              f"{metrics.get('higgs_stream_graphed_steps_total', 0):.0f} CUDA graphs")
    marks = [rss[0], *rss[len(rss) // 4 :: max(1, len(rss) // 4)], rss[-1]]
    print("server RSS (MiB) over time: " + ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in marks))


def _metrics(text: str) -> dict[str, float]:
    """The unlabelled series of a Prometheus text page."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: full size, random weights)")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--encoders", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--prebuffer-ms", type=int, default=0,
                    help="the streams' prebuffer_ms: the server sends their first audio when it has this much")
    ap.add_argument("--latency-samples", type=int, default=None, help="the model's decoder latency (default 9458)")
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="passed to higgs-tokenizer serve")
    args = ap.parse_args()
    model_dir = args.model or prepare_model_and_inputs()[0]
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, model: {'full size, random weights' if args.model is None else args.model}")
    server = Server(Path(model_dir), args.server_args)
    try:
        asyncio.run(run(args, server))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
