"""The codec server, as a client sees it: a real server process on 127.0.0.1 and real
HTTP and WebSocket clients. Results equal the library's; each bad input gets its error
and the server goes on serving; SIGTERM lets requests in flight finish."""

import asyncio
import contextlib
import io
import json
import signal
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import websockets
from helpers import ServerProcess, assert_audio_close, audio_file, fixture_dir, load_model
from test_streaming import STREAM_TOL

from higgs_tokenizer.codes_file import load_codes_bytes
from higgs_tokenizer.tokenizer import HiggsAudioTokenizer

STOPPED = (0,)  # SIGTERM: a graceful shutdown, status 0
LIMITS = ["--max-streams", "3", "--max-upload-mb", "1", "--max-audio-seconds", "15", "--stream-idle-seconds", "2",
          "--max-wait-ms", "200"]


@pytest.fixture(scope="module")
def server():
    process = ServerProcess(fixture_dir("tiny-24k"), *LIMITS)
    yield process
    assert process.stop() in STOPPED, process.log()


@pytest.fixture(scope="module")
def tokenizer():
    return HiggsAudioTokenizer(load_model("tiny-24k"), name=str(fixture_dir("tiny-24k")))


@pytest.fixture(scope="module")
def speech():
    samples, rate = sf.read(audio_file("en_woman.wav"), dtype="float32")
    return samples, rate


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def healthy(server) -> bool:
    return httpx.get(server.url + "/health").json()["status"] == "ok"


# ----------------------------------------------------------------------------- encode and decode
def test_encode_equals_the_library(server, tokenizer, speech):
    samples, rate = speech
    expected = tokenizer.encode((samples, rate))
    # A file as the body, as a multipart field, and as raw PCM with its rate.
    as_body = httpx.post(server.url + "/v1/encode", content=wav_bytes(samples, rate))
    as_field = httpx.post(server.url + "/v1/encode", files={"file": ("speech.wav", wav_bytes(samples, rate))})
    assert as_body.status_code == as_field.status_code == 200, (as_body.text, as_field.text)
    for response in (as_body, as_field):
        body = response.json()
        assert torch.equal(torch.tensor(body["codes"]), expected)
        assert body["num_samples"] == round(len(samples) * 24000 / rate)
        assert (body["frame_rate"], body["sample_rate"], body["num_quantizers"]) == (25, 24000, 8)
        assert body["model"]["codebooks_sha256"] == tokenizer.identity.codebooks_sha256
    pcm16 = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
    raw = httpx.post(server.url + "/v1/encode", params={"format": "pcm_s16le", "sample_rate": rate}, content=pcm16.tobytes())
    assert raw.status_code == 200, raw.text
    assert torch.equal(torch.tensor(raw.json()["codes"]), tokenizer.encode((pcm16, rate)))
    # Fewer quantizers at a lower bandwidth; a codes file when asked for one.
    low = httpx.post(server.url + "/v1/encode", params={"bandwidth": 1}, content=wav_bytes(samples, rate))
    assert torch.equal(torch.tensor(low.json()["codes"]), tokenizer.encode((samples, rate), bandwidth=1))
    hac = httpx.post(server.url + "/v1/encode", headers={"Accept": "application/x-higgs-audio-codes"},
                     content=wav_bytes(samples, rate))
    assert hac.headers["content-type"] == "application/x-higgs-audio-codes"
    encoded = load_codes_bytes(hac.content)
    assert torch.equal(encoded.codes, expected) and encoded.num_samples == as_body.json()["num_samples"]


def test_decode_equals_the_library(server, tokenizer, speech):
    samples, rate = speech
    encoded = tokenizer.encode_to_result((samples, rate))
    expected = tokenizer.decode(encoded)  # cut to the recording's length
    as_json = httpx.post(server.url + "/v1/decode", json={"codes": encoded.codes.tolist(), "num_samples": encoded.num_samples})
    as_file = httpx.post(server.url + "/v1/decode", content=encoded.to_bytes(),
                         headers={"Content-Type": "application/x-higgs-audio-codes"})
    for response in (as_json, as_file):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "audio/wav"
        audio, audio_rate = sf.read(io.BytesIO(response.content), dtype="float32")
        assert audio_rate == 24000 and np.array_equal(audio, expected.numpy())
    # No num_samples: every frame's audio. Other formats, by parameter or Accept.
    whole = httpx.post(server.url + "/v1/decode", params={"format": "pcm_f32le"}, json={"codes": encoded.codes.tolist()})
    assert np.array_equal(np.frombuffer(whole.content, "<f4"), tokenizer.decode(encoded.codes).numpy())
    flac = httpx.post(server.url + "/v1/decode", headers={"Accept": "audio/flac"}, json={"codes": encoded.codes.tolist()})
    assert flac.headers["content-type"] == "audio/flac"
    assert np.abs(sf.read(io.BytesIO(flac.content), dtype="float32")[0] - np.clip(tokenizer.decode(encoded.codes).numpy(), -1, 1)).max() < 2**-22
    pcm16 = httpx.post(server.url + "/v1/decode", params={"format": "pcm_s16le"}, json={"codes": encoded.codes.tolist()})
    assert pcm16.headers["content-type"].startswith("audio/L16;rate=24000")
    assert len(pcm16.content) == 2 * encoded.num_frames * 960


def test_concurrent_encodes_share_a_batch_and_each_gets_its_codes(server, tokenizer, speech):
    samples, rate = speech
    clips = [samples[: rate * (2 + i)] for i in range(4)]  # lengths differ: a padded, masked batch
    before = _metric(server, "higgs_encode_batch_size_count")
    results = [None] * len(clips)

    def post(i):
        results[i] = httpx.post(server.url + "/v1/encode", content=wav_bytes(clips[i], rate), timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = _metric(server, "higgs_encode_batch_size_count") - before
    assert calls < len(clips), "the requests were not batched"
    for clip, response in zip(clips, results):
        assert response.status_code == 200, response.text
        codes, alone = torch.tensor(response.json()["codes"]), tokenizer.encode((clip, rate))
        assert codes.shape == alone.shape and (codes == alone).float().mean() >= 0.99  # exact up to near ties


# ----------------------------------------------------------------------------- streams
async def _stream(server, frames: list, fmt: str = "pcm_f32le", query: str = "", pace_seconds: float = 0.0,
                  sizes: list | None = None) -> tuple[np.ndarray, list, tuple]:
    """Send each message of `frames` (bytes or JSON-able), `pace_seconds` apart, then the end;
    (audio, texts, close). `sizes` gets the samples of each audio message."""
    dtype = "<f4" if fmt == "pcm_f32le" else "<i2"
    async with websockets.connect(f"{server.ws_url}/v1/decode/stream?format={fmt}{query}") as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["sample_rate"] == 24000
        chunks, texts = [], []

        async def read():
            async for message in ws:
                if isinstance(message, bytes):
                    chunks.append(np.frombuffer(message, dtype))
                    if sizes is not None:
                        sizes.append(len(chunks[-1]))
                else:
                    texts.append(json.loads(message))

        reader = asyncio.create_task(read())
        for message in frames:
            await ws.send(message if isinstance(message, bytes) else json.dumps(message))
            await asyncio.sleep(pace_seconds)
        await ws.send(json.dumps({"type": "end"}))
        await reader
        return np.concatenate(chunks) if chunks else np.zeros(0), texts, (ws.close_code, ws.close_reason)


def _frames_binary(codes: torch.Tensor, size: int) -> list[bytes]:
    return [codes[:, f : f + size].T.numpy().astype("<i2").tobytes() for f in range(0, codes.shape[1], size)]


def test_streamed_audio_equals_one_shot_decode(server, tokenizer, speech):
    samples, rate = speech
    codes = tokenizer.encode((samples[: 3 * rate], rate))
    expected = tokenizer.decode(codes)
    audio, texts, close = asyncio.run(_stream(server, _frames_binary(codes, 1)))
    assert close == (1000, "") and texts == [{"type": "end", "samples": len(expected)}]
    assert_audio_close(torch.from_numpy(audio.copy()), expected, tol=STREAM_TOL)
    # JSON frames, several per message, and int16 audio.
    messages = [{"type": "codes", "frames": codes[:, f : f + 7].T.tolist()} for f in range(0, codes.shape[1], 7)]
    audio16, _, close = asyncio.run(_stream(server, messages, fmt="pcm_s16le"))
    assert close[0] == 1000 and len(audio16) == len(expected)
    error = np.abs(audio16 / 32767 - np.clip(expected.numpy(), -1, 1)).max()
    assert error <= 1 / 32767 + STREAM_TOL * float(expected.abs().max())


def test_prebuffer_holds_a_streams_first_audio_until_there_is_enough(server, tokenizer, speech):
    """`prebuffer_ms`: the first message carries at least that much audio (a player that
    starts with it has that margin), the rest comes as it is made, and nothing is lost."""
    samples, rate = speech
    codes = tokenizer.encode((samples[: 3 * rate], rate))
    sizes = []
    frames = _frames_binary(codes, 1)
    audio, _, close = asyncio.run(_stream(server, frames, query="&prebuffer_ms=500", pace_seconds=0.01, sizes=sizes))
    assert close == (1000, "") and sizes[0] >= 12000 and len(sizes) > 1  # 500 ms at 24 kHz, then the rest as made
    assert_audio_close(torch.from_numpy(audio.copy()), tokenizer.decode(codes), tol=STREAM_TOL)
    # A stream shorter than its prebuffer gets all of its audio when it ends.
    sizes = []
    audio, texts, close = asyncio.run(_stream(server, frames[:20], query="&prebuffer_ms=2000", sizes=sizes))
    expected = tokenizer.decode(codes[:, :20])
    assert close == (1000, "") and sizes == [len(expected)] and texts == [{"type": "end", "samples": len(expected)}]
    assert_audio_close(torch.from_numpy(audio.copy()), expected, tol=STREAM_TOL)

    async def refused(value: str):
        async with websockets.connect(f"{server.ws_url}/v1/decode/stream?prebuffer_ms={value}") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason

    for bad in ("-1", "2001", "soon"):
        code, reason = asyncio.run(refused(bad))
        assert code == 1008 and "prebuffer_ms" in reason, (code, reason)


def test_bad_stream_messages_are_refused_and_the_stream_goes_on(server, tokenizer, speech):
    samples, rate = speech
    codes = tokenizer.encode((samples[: 2 * rate], rate))
    good = _frames_binary(codes, 5)
    bad = [
        np.full((1, 8), 1024, "<i2").tobytes(),  # out of range (an LM's end token, say)
        b"\x00\x01\x02",  # not whole frames
        {"type": "codes", "frames": [[1] * 7]},  # wrong quantizer count
        {"type": "codes", "frames": [[1.5] * 8]},  # not integers
        {"type": "nonsense"},
        np.zeros((300, 8), "<i2").tobytes(),  # more frames than a message may hold
    ]
    audio, texts, close = asyncio.run(_stream(server, good[:2] + bad + good[2:]))
    errors = [t for t in texts if t["type"] == "error"]
    assert len(errors) == len(bad), texts
    assert close[0] == 1000
    assert_audio_close(torch.from_numpy(audio.copy()), tokenizer.decode(codes), tol=STREAM_TOL)


def test_stream_limits_idle_streams_and_clients_that_leave(server, tokenizer):
    async def scenario():
        # A client leaves mid-stream: its state is freed.
        ws = await websockets.connect(f"{server.ws_url}/v1/decode/stream")
        await ws.recv()
        await ws.send(np.zeros((3, 8), "<i2").tobytes())
        await ws.close()
        await asyncio.to_thread(_wait_for_no_streams, server)
        # At the limit (3 here) a new stream is refused with a reason, not queued.
        open_streams = [await websockets.connect(f"{server.ws_url}/v1/decode/stream") for _ in range(3)]
        for ws in open_streams:
            await ws.recv()
        refused = await websockets.connect(f"{server.ws_url}/v1/decode/stream")
        with pytest.raises(websockets.ConnectionClosed):
            await refused.recv()
        assert refused.close_code == 1013 and "streams are open" in refused.close_reason
        # Idle streams (2 s here) are closed, which frees their places.
        for ws in open_streams:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008 and "no message" in ws.close_reason
        # Bad parameters close with the reason.
        bad = await websockets.connect(f"{server.ws_url}/v1/decode/stream?num_quantizers=9")
        with pytest.raises(websockets.ConnectionClosed):
            await bad.recv()
        assert bad.close_code == 1008 and "num_quantizers" in bad.close_reason

    asyncio.run(scenario())
    _wait_for_no_streams(server)
    assert healthy(server)


def _wait_for_no_streams(server, seconds: float = 10) -> None:
    """Every stream's state freed (the server learns of a client leaving a moment later)."""
    deadline = time.monotonic() + seconds
    while _metric(server, "higgs_active_streams") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "higgs_active_streams") == 0


# ----------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("case", [
    "empty", "garbage", "too_large", "too_long", "pcm_without_rate", "pcm_odd_bytes", "bad_bandwidth",
    "pcm_nan", "multipart_without_file",
])
def test_bad_encode_requests_get_their_error(server, speech, case):
    samples, rate = speech
    url = server.url + "/v1/encode"
    request = {
        "empty": lambda: httpx.post(url, content=b""),
        "garbage": lambda: httpx.post(url, content=b"this is not audio" * 100),
        "too_large": lambda: httpx.post(url, content=b"\0" * (1 << 20 | 1)),
        "too_long": lambda: httpx.post(url, params={"format": "pcm_s16le", "sample_rate": 8000},
                                       content=np.zeros(16 * 8000, "<i2").tobytes()),
        "pcm_without_rate": lambda: httpx.post(url, params={"format": "pcm_s16le"}, content=b"\0\0" * 100),
        "pcm_odd_bytes": lambda: httpx.post(url, params={"format": "pcm_s16le", "sample_rate": 16000}, content=b"\0" * 101),
        "bad_bandwidth": lambda: httpx.post(url, params={"bandwidth": 3}, content=wav_bytes(samples, rate)),
        "pcm_nan": lambda: httpx.post(url, params={"format": "pcm_f32le", "sample_rate": 16000},
                                      content=np.full(1600, np.nan, "<f4").tobytes()),
        "multipart_without_file": lambda: httpx.post(url, files={"audio": ("a.wav", wav_bytes(samples, rate))}),
    }[case]
    expected = {"garbage": 422, "too_large": 413, "too_long": 413}.get(case, 400)
    response = request()
    assert response.status_code == expected, response.text
    assert response.json()["error"]
    assert healthy(server)


@pytest.mark.parametrize("case", ["not_json", "out_of_range", "too_many_quantizers", "ragged", "floats", "garbage_file",
                                  "too_many_frames", "bad_format", "json_too_long"])
def test_bad_decode_requests_get_their_error(server, case):
    url = server.url + "/v1/decode"
    ok_codes = [[1] * 10] * 8
    request = {
        "not_json": lambda: httpx.post(url, content=b"{", headers={"Content-Type": "application/json"}),
        "out_of_range": lambda: httpx.post(url, json={"codes": [[1024] * 10] * 8}),
        "too_many_quantizers": lambda: httpx.post(url, json={"codes": [[1] * 10] * 9}),
        "ragged": lambda: httpx.post(url, json={"codes": [[1] * 10] * 7 + [[1] * 9]}),
        "floats": lambda: httpx.post(url, json={"codes": [[1.0] * 10] * 8}),
        "garbage_file": lambda: httpx.post(url, content=b"not a codes file" * 10),
        "too_many_frames": lambda: httpx.post(url, json={"codes": [[1] * (15 * 25 + 1)] * 8}),
        "bad_format": lambda: httpx.post(url, params={"format": "mp3"}, json={"codes": ok_codes}),
        # longer than any codes this server takes can be (refused before it is parsed)
        "json_too_long": lambda: httpx.post(url, json={"codes": ok_codes, "padding": [0] * 100_000}),
    }[case]
    response = request()
    assert response.status_code == {"garbage_file": 422, "json_too_long": 413}.get(case, 400), response.text
    assert response.json()["error"]
    assert healthy(server)


def test_a_body_that_stops_coming_and_an_overlong_close_reason(server):
    """A body that stops arriving gets 408 once no part of it came for --stream-idle-seconds
    (2 here), freeing its place; a close reason over a close frame's 123 bytes of UTF-8
    is cut to them, so the client still gets the code and the reason."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 10)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
            part = slow.recv(4096)  # the head and the body may come in separate reads
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 408") and b"no part of the body came for 2 s" in answer, answer
    assert 1.5 < time.monotonic() - started < 20

    async def refused():
        ws = await websockets.connect(f"{server.ws_url}/v1/decode/stream?format=" + "é" * 200)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return ws.close_code, ws.close_reason

    code, reason = asyncio.run(refused())
    assert code == 1008 and reason.startswith("format must be pcm_s16le or pcm_f32le") and len(reason.encode()) <= 123
    assert healthy(server)


def _content_length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_compiled_steps_give_the_same_audio(tokenizer, speech):
    """`--compile-steps`: compiled before serving, the steps of a stream fed at its pace run
    compiled, and its audio is one-shot decoding's."""
    samples, rate = speech
    codes = tokenizer.encode((samples[: 2 * rate], rate))
    expected = tokenizer.decode(codes)
    process = ServerProcess(fixture_dir("tiny-24k"), "--compile-steps", "1", startup_seconds=300)
    try:
        assert "compiled the decoder's 1-frame steps of 1 to 1 streams" in process.log()
        audio, texts, close = asyncio.run(_stream(process, _frames_binary(codes, 1), pace_seconds=0.03))
        assert close == (1000, "") and texts == [{"type": "end", "samples": len(expected)}]
        assert_audio_close(torch.from_numpy(audio.copy()), expected, tol=STREAM_TOL)
        assert _metric(process, "higgs_stream_compiled_steps_total") >= 10
    finally:
        assert process.stop() in STOPPED, process.log()


def test_graph_steps_need_a_cuda_model():
    """`--graph-steps` on a CPU model: the server does not start, and says why."""
    with pytest.raises(RuntimeError, match="exited with 2(.|\n)*CUDA graphs need a model on a CUDA device"):
        ServerProcess(fixture_dir("tiny-24k"), "--graph-steps", "1", startup_seconds=60)


def test_health_and_metrics(server, tokenizer, speech):
    samples, rate = speech  # an encode and a stream of its own: histograms appear once observed
    assert httpx.post(server.url + "/v1/encode", content=wav_bytes(samples[:rate], rate)).status_code == 200
    asyncio.run(_stream(server, _frames_binary(tokenizer.encode((samples[:rate], rate)), 5)))
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "version": httpx.get(server.url + "/v1/info").json()["version"],
                                                       "model": str(fixture_dir("tiny-24k"))}
    text = httpx.get(server.url + "/metrics").text
    for name in ("higgs_requests_total", "higgs_request_seconds_bucket", "higgs_encode_batch_size_bucket",
                 "higgs_stream_step_streams_bucket", "higgs_active_streams", "higgs_audio_seconds_in_total",
                 "higgs_audio_seconds_out_total"):
        assert f"\n{name}" in text, name
    assert 'higgs_requests_total{endpoint="/v1/encode",status="200"}' in text
    assert "\n127.0.0.1" in "\n" + server.log() or '"GET /health" 200' in server.log()


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ----------------------------------------------------------------------------- shutdown
def test_sigterm_lets_requests_in_flight_finish(speech):
    samples, rate = speech
    # Encode requests wait 1.5 s for others to batch with: in flight when SIGTERM comes.
    process = ServerProcess(fixture_dir("tiny-24k"), "--max-wait-ms", "1500")
    results = []

    def post():
        results.append(httpx.post(process.url + "/v1/encode", content=wav_bytes(samples, rate), timeout=60))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    process.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert process.stop() in STOPPED, process.log()
    assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    with pytest.raises(httpx.TransportError):
        httpx.get(process.url + "/health", timeout=2)


def test_a_stream_whose_client_does_not_read_is_cut_off():
    """Audio waiting for a client that does not read stops at MAX_QUEUED_SECONDS: the stream
    is closed (1008) rather than the server's memory growing without end; what the sender
    takes makes room again."""
    from higgs_tokenizer.serve.app import MAX_QUEUED_SECONDS, _QueueSink

    async def scenario():
        sink = _QueueSink(asyncio.get_running_loop(), 24000)
        second = torch.zeros(24000)
        for _ in range(MAX_QUEUED_SECONDS):
            sink.audio(second)
        sink.taken(24000)  # the sender took one second of it
        sink.audio(second)
        sink.audio(second)  # one second too many
        sink.audio(second)  # nothing more is queued after that
        await asyncio.sleep(0)
        kinds = [sink.queue.get_nowait()[0] for _ in range(sink.queue.qsize())]
        assert kinds == ["audio"] * (MAX_QUEUED_SECONDS + 1) + ["overflow"]

    asyncio.run(scenario())


def test_wire_bounds():
    """JSON stream messages hold up to max_frames frames (rows of codes), whatever the
    quantizer count; JSON nested too deeply is a 400, not a crash."""
    from higgs_tokenizer.serve.wire import BadRequest, codes_from_json, stream_frames

    codes = stream_frames(json.dumps({"type": "codes", "frames": [[1] * 8] * 200}), 8, 250)
    assert codes.shape == (8, 200)
    with pytest.raises(BadRequest, match="larger than this server takes"):
        stream_frames(json.dumps({"type": "codes", "frames": [[1] * 8] * 251}), 8, 250)
    with pytest.raises(BadRequest, match="nested too deeply"):
        codes_from_json(b"[" * 100_000 + b"]" * 100_000, 10_000)
    with pytest.raises(BadRequest, match="JSON body of 29697 bytes; codes of at most 100 frames need at most 29696") as refused:
        codes_from_json(b" " * 29697, 100, num_quantizers=8)  # refused unparsed
    assert refused.value.status == 413
    indented = json.dumps({"codes": [[1023] * 100] * 8}, indent=8).encode()  # the most there can be, spaced out
    assert codes_from_json(indented, 100, num_quantizers=8)[0].shape == (8, 100)
    with pytest.raises(BadRequest, match="nested too deeply"):
        stream_frames("[" * 100_000 + "]" * 100_000, 8, 250)


def test_a_full_queue_refuses_and_a_stopping_engine_takes_nothing(tokenizer, speech):
    """Beyond max_pending_requests a request is refused at once (503), never queued without
    end; once stopping, nothing new is taken, and the work queued is still done."""
    from higgs_tokenizer.serve.engine import Busy, Engine
    from higgs_tokenizer.serve.metrics import Metrics
    from higgs_tokenizer.serve.settings import ServeSettings

    samples, rate = speech
    clip = tokenizer.load((samples[:rate], rate))
    engine = Engine(tokenizer, ServeSettings(max_pending_requests=2, max_streams=1), Metrics())  # workers not started
    queued = [engine.encode(clip, None), engine.encode(clip, None)]
    with pytest.raises(Busy, match="2 requests are queued"):
        engine.encode(clip, None)
    # A stream may have at most max_frames_waiting frames not yet decoded.
    class Sink:  # the stream's audio goes nowhere
        def audio(self, samples): pass
        def finished(self, samples): pass
        def failed(self, error): pass

    stream = engine.open_stream(Sink(), None)
    engine.push(stream, torch.zeros(8, engine.settings.max_frames_waiting, dtype=torch.long))
    with pytest.raises(Busy, match="frames would wait to be decoded"):
        engine.push(stream, torch.zeros(8, 1, dtype=torch.long))
    engine.close(stream)
    engine.start()
    assert all(torch.equal(f.result(timeout=60), tokenizer.encode((samples[:rate], rate))) for f in queued)
    engine.stop()
    with pytest.raises(Busy, match="shutting down"):
        engine.decode(torch.zeros(8, 3, dtype=torch.long))
    with pytest.raises(Busy, match="shutting down"):
        engine.open_stream(None, None)


def test_the_live_worker_pushes_a_tick_of_frames_as_one_batch(tokenizer, monkeypatch):
    """The frames that streams sent since the last tick are queued with one push_batch; when
    that batch is refused (here for a stream whose codes no check stopped), each stream is
    pushed on its own, and only the one that refuses fails."""
    from higgs_tokenizer.decoder_streams import DecoderStreams
    from higgs_tokenizer.serve.engine import Engine
    from higgs_tokenizer.serve.metrics import Metrics
    from higgs_tokenizer.serve.settings import ServeSettings

    batches, pushes = [], []
    real_batch, real_push = DecoderStreams.push_batch, DecoderStreams.push
    monkeypatch.setattr(DecoderStreams, "push_batch", lambda self, ids, codes: batches.append(len(ids)) or real_batch(self, ids, codes))
    monkeypatch.setattr(DecoderStreams, "push", lambda self, i, codes: pushes.append(i) or real_push(self, i, codes))

    class Sink:
        def __init__(self):
            self.pieces, self.done, self.error = [], threading.Event(), None
        def audio(self, samples): self.pieces.append(samples)
        def finished(self, samples): self.done.set()
        def failed(self, error): self.error = error; self.done.set()

    codes = [torch.randint(0, 1024, (8, 6), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    bad = codes[2].clone()
    bad[0, 0] = 5000  # out of range: as if the server's own check had let it through
    for third in (codes[2], bad):
        batches.clear(), pushes.clear()
        engine = Engine(tokenizer, ServeSettings(), Metrics())  # commands queue up until it starts
        sinks = [Sink() for _ in range(3)]
        ids = [engine.open_stream(sink, None) for sink in sinks]
        for stream_id, frames in zip(ids, (codes[0], codes[1], third)):
            engine.push(stream_id, frames)
        for stream_id in ids:
            engine.end(stream_id)
        engine.start()
        assert all(sink.done.wait(60) for sink in sinks)
        engine.stop()
        for sink, frames in zip(sinks[:2], codes):
            assert sink.error is None
            assert_audio_close(torch.cat(sink.pieces), tokenizer.model.decode(frames[None]).audio_values[0, 0], tol=STREAM_TOL)
        assert batches == [3]
        if third is bad:  # the batch refused, each stream pushed alone
            assert len(pushes) == 3 and "must lie in" in str(sinks[2].error)
        else:
            assert pushes == [] and sinks[2].error is None


def test_sigterm_with_a_stream_open_closes_it_and_exits():
    """Open streams do not hold a shutdown up: they are closed, and the server exits 0."""
    process = ServerProcess(fixture_dir("tiny-24k"))

    async def scenario():
        ws = await websockets.connect(f"{process.ws_url}/v1/decode/stream")
        await ws.recv()
        await ws.send(np.zeros((12, 8), "<i2").tobytes())
        process.process.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        return ws.close_code

    code = asyncio.run(scenario())
    assert code in (1001, 1012), code  # going away, or service restart (uvicorn's)
    assert process.stop(timeout=60) in STOPPED, process.log()


def test_a_connection_that_holds_no_request_is_closed(server, speech):
    """uvicorn keeps a connection open until its first request's head has come in; the
    server closes one that holds no request for --stream-idle-seconds (2 here), whether it
    sends nothing or trickles a request's head a byte at a time. A request in progress (a
    body that keeps coming, slowly) and a WebSocket stream are not cut at the deadline."""
    import select
    import socket

    def closed_after(connection: socket.socket, trickle: bytes = b"") -> float:
        started = time.monotonic()
        while time.monotonic() - started < 20:
            if select.select([connection], [], [], 0.3)[0]:
                try:
                    if connection.recv(4096) == b"":
                        return time.monotonic() - started
                except ConnectionResetError:
                    return time.monotonic() - started
            elif trickle:
                connection.sendall(trickle[:1])
                trickle = trickle[1:]
        raise AssertionError("the connection stayed open")

    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        assert 1.5 < closed_after(idle) < 10
    with socket.create_connection(("127.0.0.1", server.port)) as slow_head:
        assert 1.5 < closed_after(slow_head, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"x" * 100) < 10

    samples, rate = speech
    body = wav_bytes(samples[:rate], rate)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow_body:
        slow_body.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for part in range(4):  # 3 s in all, a part a second
            time.sleep(1)
            slow_body.sendall(body[part * len(body) // 4 : (part + 1) * len(body) // 4])
        assert slow_body.recv(4096).startswith(b"HTTP/1.1 200")

    async def stream() -> dict:
        async with websockets.connect(f"{server.ws_url}/v1/decode/stream") as ws:
            await ws.recv()  # ready
            for _ in range(12):  # 3 s in all
                await ws.send(np.zeros((1, 8), "<i2").tobytes())
                await asyncio.sleep(0.25)
            await ws.send(json.dumps({"type": "end"}))
            while True:
                message = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(message, str):
                    return json.loads(message)

    assert asyncio.run(stream())["type"] == "end"
    assert healthy(server)


def test_a_client_that_stops_reading_loses_its_connection_once_its_stream_ends(server):
    """A stream whose client stops reading is cut off (1008) within --stream-idle-seconds of a
    message not taken in; its connection then goes within the same deadline, although its
    write buffer will never drain (uvicorn alone would keep it, and its file descriptor, open
    until the client leaves)."""
    import base64
    import os
    import socket
    import struct

    def frame(payload: bytes, opcode: int = 2) -> bytes:  # a client's frame: masked
        mask = os.urandom(4)
        size = len(payload)
        length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
        return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    rng = np.random.default_rng(0)
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes little before it stops
        client.connect(("127.0.0.1", server.port))
        client.settimeout(10)  # a send that blocks this long: the server stopped reading too, still open
        key = base64.b64encode(os.urandom(16)).decode()
        client.sendall(f"GET /v1/decode/stream?format=pcm_f32le HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert client.recv(12) == b"HTTP/1.1 101"
        started, gone = time.monotonic(), None
        while time.monotonic() - started < 80:  # a second of codes every 0.1 s, never reading the audio
            try:
                client.sendall(frame(rng.integers(0, 1024, (25, 8)).astype("<i2").tobytes()))
            except (ConnectionResetError, BrokenPipeError):
                gone = time.monotonic() - started
                break
            except TimeoutError:
                break
            time.sleep(0.1)
    assert gone is not None, "the connection stayed open"
    # Cut off once the server's buffers are full (9 s here, with 4 MB for a socket's sending),
    # then the deadline twice.
    assert gone < 50, gone
    assert healthy(server)


def test_connections_past_the_limit_are_refused_at_once():
    """With --max-connections open (idle ones included), the next connection is answered 503
    and closed at once rather than held, and once one closes the server answers again.
    Clients that do not read their answers do not hold their places for good: a closing
    connection whose answer stops draining for --stream-idle-seconds is aborted."""
    import json
    import socket

    process = ServerProcess(fixture_dir("tiny-24k"), "--max-connections", "3", "--max-streams", "2",
                            "--stream-idle-seconds", "2")

    def refused() -> bool:
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as extra:
            answer = b""
            with contextlib.suppress(ConnectionResetError):  # the server may close before reading the request
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                while chunk := extra.recv(4096):  # up to the server's close
                    answer += chunk
        return answer.startswith(b"HTTP/1.1 503")

    def answered_within(seconds: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(process.url + "/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError(f"still refused after {seconds} s")

    try:
        held = [socket.create_connection(("127.0.0.1", process.port)) for _ in range(3)]
        time.sleep(0.5)  # the server has taken them all in
        assert refused()
        held.pop().close()
        answered_within(10)
        for connection in held:
            connection.close()

        # Three clients ask for 120 s of audio each and never read it.
        body = json.dumps({"codes": np.random.default_rng(0).integers(0, 1024, (8, 25 * 120)).tolist()}).encode()
        readers = []
        for _ in range(3):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", process.port))
            client.sendall(b"POST /v1/decode?format=pcm_f32le HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body)
            readers.append(client)
        time.sleep(1)
        assert refused()
        # Answered, kept for the deadline, closed, then aborted a deadline later: about 4 s.
        assert answered_within(30) < 20
        for client in readers:
            client.close()
    finally:
        assert process.stop() in STOPPED, process.log()
