"""The HTTP and WebSocket front of the codec server (Starlette on uvicorn).

    POST /v1/encode          audio (a file in any format the file API reads, as the body
                             or a multipart field "file"; or raw PCM with ?format=pcm_s16le
                             &sample_rate=...) → codes as JSON, or a .hac file when
                             Accept: application/x-higgs-audio-codes (or ?as=hac)
    POST /v1/decode          codes as JSON or a .hac file → WAV (or ?format=flac,
                             pcm_s16le, pcm_f32le, or by Accept), cut to num_samples when known
    WS   /v1/decode/stream   code frames in, PCM chunks out as soon as they are final
    GET  /health, /metrics, /v1/info, and / (the playground page)

The model work happens in `engine.Engine`'s two workers; handlers only read, check,
submit and answer. Every input is bounded by `ServeSettings`; a bad request gets a 4xx
with the reason and touches nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from importlib import resources

import numpy as np
import torch
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..audio import AudioDecodeError, AudioTooLongError, load_audio_bytes
from ..codes_file import SUFFIX, CodesFileError, load_codes_bytes
from ..version import __version__
from .engine import Busy, Engine
from .metrics import Metrics
from .settings import ServeSettings
from .wire import (
    CODES_MEDIA_TYPE,
    BadRequest,
    audio_format,
    audio_media_type,
    codes_from_json,
    encode_audio,
    multipart_fields,
    pcm_samples,
    stream_frames,
)

log = logging.getLogger("higgs_tokenizer.serve")

MAX_QUEUED_SECONDS = 120  # a stream's audio made and not yet sent
MAX_PREBUFFER_MS = 2000  # a stream's first audio held back until there is this much
WS_MAX_MESSAGE_BYTES = 1 << 20  # a stream message: at most max_frames_per_message frames, as JSON
# WebSocket close codes (RFC 6455 and the IANA registry).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_AGAIN = 1000, 1001, 1008, 1011, 1013


def create_app(tokenizer, settings: ServeSettings | None = None) -> Starlette:
    settings = settings or ServeSettings()
    metrics = Metrics()
    engine = Engine(tokenizer, settings, metrics)
    server = _Handlers(tokenizer, settings, metrics, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start(live_in_this_process_main_thread=app.state.live_on_main_thread)
        log.info("serving %s (%s, %s) on %s threads", tokenizer.name, tokenizer.model.device, tokenizer.model.dtype,
                 torch.get_num_threads())
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    static = resources.files("higgs_tokenizer.serve") / "static"
    app = Starlette(
        routes=[
            Route("/", server.index),
            Route("/health", server.health),
            Route("/metrics", server.metrics_text),
            Route("/v1/info", server.info),
            Route("/v1/encode", server.encode, methods=["POST"]),
            Route("/v1/decode", server.decode, methods=["POST"]),
            WebSocketRoute("/v1/decode/stream", server.stream),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(_AccessLog, metrics=metrics)
    app.state.engine = engine
    app.state.live_on_main_thread = False  # `run` sets it: it runs the live worker there
    return app


class _AccessLog:
    """One log line and the request metrics per HTTP request (streams log their own)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
            self.metrics.requests.inc(endpoint=endpoint, status=str(status[0]))
            self.metrics.latency.observe(seconds, endpoint=endpoint)
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.1f ms', client[0], scope["method"], scope["path"], status[0], 1000 * seconds)


_ENDPOINTS = frozenset({"/", "/health", "/metrics", "/v1/info", "/v1/encode", "/v1/decode", "/v1/decode/stream"})


class _Handlers:
    def __init__(self, tokenizer, settings: ServeSettings, metrics: Metrics, engine: Engine):
        self.tokenizer, self.settings, self.metrics, self.engine = tokenizer, settings, metrics, engine
        self.max_frames = int(settings.max_audio_seconds * tokenizer.frame_rate)
        # Encode and decode requests in flight (being read, decoded or waiting for the model):
        # each holds its body and audio, so their number bounds the memory they take.
        self.max_in_flight = 2 * settings.max_batch
        self.in_flight = 0
        self.exact_lookahead = tokenizer.stream_decoder().latency_frames

    # ------------------------------------------------------------------ small pages
    async def index(self, request: Request) -> Response:
        return FileResponse(str(resources.files("higgs_tokenizer.serve") / "static" / "index.html"))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "model": self.tokenizer.name})

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def info(self, request: Request) -> Response:
        config, identity = self.tokenizer.config, self.tokenizer.identity
        return JSONResponse({
            "version": __version__,
            "model": {"name": identity.name, "config_sha256": identity.config_sha256, "codebooks_sha256": identity.codebooks_sha256},
            "sample_rate": config.sample_rate,
            "frame_rate": config.frame_rate,
            "hop_length": config.hop_length,
            "num_quantizers": config.num_quantizers,
            "codebook_size": config.codebook_size,
            "bandwidths": list(config.target_bandwidths),
            "limits": {
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_audio_seconds": self.settings.max_audio_seconds,
                "max_streams": self.settings.max_streams,
                "max_frames_per_message": self.settings.max_frames_per_message,
                "stream_idle_seconds": self.settings.stream_idle_seconds,
            },
        })

    # ------------------------------------------------------------------ encode
    async def encode(self, request: Request) -> Response:
        return await self._bounded(self._encode, request)

    async def _encode(self, request: Request) -> Response:
        body = await self._body(request)
        params = dict(request.query_params)
        content_type = request.headers.get("content-type", "")
        data, name = body, "upload"
        if content_type.lower().startswith("multipart/form-data"):
            fields = multipart_fields(body, content_type)
            if "file" not in fields:
                raise BadRequest('multipart body without a "file" field')
            filename, data = fields.pop("file")
            name = filename or name
            params.update({k: v.decode("utf-8", "replace") for k, (_, v) in fields.items()})
        bandwidth = _number(params, "bandwidth", float)
        clip = await asyncio.to_thread(self._clip, data, name, params)
        started = time.perf_counter()
        codes = await asyncio.wrap_future(self.engine.encode(clip, bandwidth))
        seconds = time.perf_counter() - started
        encoded = self.tokenizer.as_encoded_audio(codes, len(clip), source=name)
        headers = {"X-Encode-Seconds": f"{seconds:.4f}"}
        if params.get("as") == "hac" or CODES_MEDIA_TYPE in request.headers.get("accept", ""):
            headers["Content-Disposition"] = f'attachment; filename="codes{SUFFIX}"'
            return Response(encoded.to_bytes(), media_type=CODES_MEDIA_TYPE, headers=headers)
        header = encoded.header()
        return JSONResponse({
            "codes": codes.tolist(),
            "num_samples": encoded.num_samples,
            "num_quantizers": encoded.num_quantizers,
            "num_frames": encoded.num_frames,
            "frame_rate": encoded.frame_rate,
            "sample_rate": encoded.sample_rate,
            "model": {"name": header["model_name"], "config_sha256": header["model_config_sha256"],
                      "codebooks_sha256": header["codebooks_sha256"]},
        }, headers=headers)

    def _clip(self, data: bytes, name: str, params: dict) -> np.ndarray:
        """The upload as mono float32 at the model's rate (in a worker thread: decoding and
        resampling take CPU time)."""
        rate = self.tokenizer.sample_rate
        fmt = params.get("format")
        if fmt:
            source_rate = _number(params, "sample_rate", int)
            if source_rate is None or not 1000 <= source_rate <= 384_000:
                raise BadRequest("raw PCM needs ?sample_rate= from 1000 to 384000")
            channels = pcm_samples(data, fmt, _number(params, "channels", int) or 1)
            if channels.shape[1] > self.settings.max_audio_seconds * source_rate:
                raise AudioTooLongError(f"{name}: longer than the {self.settings.max_audio_seconds:g} s allowed")
            return self.tokenizer.load((channels, source_rate))
        samples, _ = load_audio_bytes(data, rate, name=name, max_seconds=self.settings.max_audio_seconds)
        return samples

    # ------------------------------------------------------------------ decode
    async def decode(self, request: Request) -> Response:
        return await self._bounded(self._decode, request)

    async def _bounded(self, handler, request: Request) -> Response:
        """`handler(request)` in one of `max_in_flight` places (else 503); any error becomes
        its answer."""
        try:
            if self.in_flight >= self.max_in_flight:
                raise Busy(f"{self.in_flight} requests are in flight, the most this server takes; try again later")
            self.in_flight += 1
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1
        except Exception as err:
            return _error_response(err)

    async def _decode(self, request: Request) -> Response:
        fmt = audio_format(request.query_params.get("format"), request.headers.get("accept", ""))
        body = await self._body(request)
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/form-data"):
            fields = multipart_fields(body, request.headers["content-type"])
            if "file" not in fields:
                raise BadRequest('multipart body without a "file" field')
            body, content_type = fields["file"][1], CODES_MEDIA_TYPE
        if content_type.startswith("application/json"):
            codes, num_samples = codes_from_json(body, self.max_frames, self.tokenizer.num_quantizers)
            self.tokenizer.model.check_codes(codes[None], to_device=False)
            item = codes
        else:
            encoded = await asyncio.to_thread(load_codes_bytes, body, "the uploaded codes file")
            if encoded.num_frames > self.max_frames:
                raise BadRequest(f"{encoded.num_frames} frames; at most {self.max_frames}", 413)
            item, num_samples = encoded, encoded.num_samples
        started = time.perf_counter()
        audio = await asyncio.wrap_future(self.engine.decode(item))
        seconds = time.perf_counter() - started
        if num_samples is not None:
            audio = audio[:num_samples]
        self.metrics.audio_seconds_out.inc(len(audio) / self.tokenizer.sample_rate)
        data = await asyncio.to_thread(encode_audio, audio, self.tokenizer.sample_rate, fmt)
        return Response(data, media_type=audio_media_type(fmt, self.tokenizer.sample_rate),
                        headers={"X-Decode-Seconds": f"{seconds:.4f}", "X-Num-Samples": str(len(audio))})

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) past `max_upload_bytes` without reading it all, and
        (408) when none of it comes for `stream_idle_seconds`: a body that never ends would
        hold one of the places in flight for good."""
        limit, idle = self.settings.max_upload_bytes, self.settings.stream_idle_seconds
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise BadRequest(f"body of {declared} bytes; at most {limit}", 413)
        chunks, size = [], 0
        stream = request.stream()
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), idle)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise BadRequest(f"no part of the body came for {idle:g} s", 408) from None
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"body larger than {limit} bytes", 413)
            chunks.append(chunk)
        if not size:
            raise BadRequest("empty body")
        return b"".join(chunks)

    # ------------------------------------------------------------------ streams
    async def stream(self, websocket: WebSocket) -> None:
        """See docs/serving.md for the protocol."""
        started = time.perf_counter()
        params = websocket.query_params
        await websocket.accept()
        try:
            fmt = params.get("format", "pcm_s16le")
            if fmt not in ("pcm_s16le", "pcm_f32le"):
                raise BadRequest(f"format must be pcm_s16le or pcm_f32le, got {fmt!r}")
            num_quantizers = _number(params, "num_quantizers", int) or self.tokenizer.num_quantizers
            if not 1 <= num_quantizers <= self.tokenizer.num_quantizers:
                raise BadRequest(f"num_quantizers must be from 1 to {self.tokenizer.num_quantizers}")
            lookahead = _number(params, "lookahead_frames", int)
            if lookahead is not None and not 0 <= lookahead <= self.exact_lookahead:
                raise BadRequest(f"lookahead_frames must be from 0 to {self.exact_lookahead}")
            prebuffer_ms = _number(params, "prebuffer_ms", int) or 0
            if not 0 <= prebuffer_ms <= MAX_PREBUFFER_MS:
                raise BadRequest(f"prebuffer_ms must be from 0 to {MAX_PREBUFFER_MS}")
        except BadRequest as err:
            return await self._close(websocket, CLOSE_POLICY, str(err), started)
        sink = _QueueSink(asyncio.get_running_loop(), self.tokenizer.sample_rate)
        try:
            stream_id = self.engine.open_stream(sink, lookahead)
        except Busy as err:
            return await self._close(websocket, CLOSE_TRY_AGAIN, str(err), started)
        prebuffer = prebuffer_ms * self.tokenizer.sample_rate // 1000
        sender = asyncio.create_task(self._send_audio(websocket, sink, fmt, prebuffer))
        try:
            await self._send_json(websocket, {
                "type": "ready", "sample_rate": self.tokenizer.sample_rate, "frame_rate": self.tokenizer.frame_rate,
                "num_quantizers": num_quantizers, "format": fmt,
            })
            code, reason = await self._receive_frames(websocket, stream_id, num_quantizers, sender)
            if code == CLOSE_NORMAL:  # the end message: the last audio, then the end
                code, reason = await sender
        except WebSocketDisconnect:
            code, reason = CLOSE_GOING_AWAY, "client left"
        except asyncio.TimeoutError:
            code, reason = CLOSE_POLICY, "the client does not read its messages"
        finally:
            sender.cancel()
            self.engine.close(stream_id)  # frees the state unless the stream ended already
        await self._close(websocket, code, reason, started)

    async def _receive_frames(self, websocket: WebSocket, stream_id: int, num_quantizers: int, sender) -> tuple[int, str]:
        """Frames from the client into the engine until the end message; (close code, reason)."""
        while True:
            receive = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, sender}, timeout=self.settings.stream_idle_seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            if sender in done:  # the stream failed in the engine, or the client went away
                receive.cancel()
                return sender.result()
            if not done:
                receive.cancel()
                return CLOSE_POLICY, f"no message for {self.settings.stream_idle_seconds:g} s"
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", CLOSE_GOING_AWAY))
            payload = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            try:
                codes = stream_frames(payload, num_quantizers, self.settings.max_frames_per_message)
                if codes is None:
                    self.engine.end(stream_id)
                    return CLOSE_NORMAL, ""
                self.tokenizer.model.check_codes(codes[None], to_device=False)
            except (BadRequest, ValueError, TypeError) as err:
                # Refused whole; the stream goes on (an LM's end token, say, must not cost the audio in flight).
                await self._send_json(websocket, {"type": "error", "message": str(err)})
                continue
            try:
                self.engine.push(stream_id, codes)
            except Busy as err:
                return CLOSE_POLICY, str(err)

    async def _send_audio(self, websocket: WebSocket, sink: "_QueueSink", fmt: str, prebuffer: int) -> tuple[int, str]:
        """The stream's audio to the client as it comes, the first `prebuffer` samples in one
        message; (close code, reason) at its end. A client that takes longer than
        `stream_idle_seconds` to take one message in, or lets its audio pile up past
        `MAX_QUEUED_SECONDS`, is cut off."""
        deadline = self.settings.stream_idle_seconds
        held: list[np.ndarray] | None = []  # the first audio, until there is `prebuffer` of it
        held_samples = 0

        async def send(samples: np.ndarray) -> None:
            await asyncio.wait_for(websocket.send_bytes(encode_audio(samples, self.tokenizer.sample_rate, fmt)), deadline)

        try:
            while True:
                kind, value = await sink.queue.get()
                if kind == "audio":
                    sink.taken(len(value))
                    if held is not None:
                        held.append(value)
                        held_samples += len(value)
                        if held_samples < prebuffer:
                            continue
                        value, held = np.concatenate(held), None
                    await send(value)
                    continue
                if held and kind in ("finished", "failed"):  # a stream shorter than the prebuffer
                    await send(np.concatenate(held))
                if kind == "finished":
                    await self._send_json(websocket, {"type": "end", "samples": value})
                    return CLOSE_NORMAL, ""
                if kind == "overflow":
                    return CLOSE_POLICY, "the client does not read its audio"
                log.error("stream failed: %s", value)
                return CLOSE_ERROR, f"decoding failed: {value}"
        except asyncio.TimeoutError:
            return CLOSE_POLICY, "the client does not read its audio"
        except (WebSocketDisconnect, OSError, RuntimeError):
            return CLOSE_GOING_AWAY, "client left"

    async def _send_json(self, websocket: WebSocket, message: dict) -> None:
        """A message to the client, which must take it in within `stream_idle_seconds`
        (asyncio.TimeoutError): a client that never reads would otherwise hold its stream,
        and its place among `max_streams`, for good."""
        await asyncio.wait_for(websocket.send_json(message), self.settings.stream_idle_seconds)

    async def _close(self, websocket: WebSocket, code: int, reason: str, started: float) -> None:
        # A close frame's reason has at most 123 bytes of UTF-8; the close, a deadline like
        # any message (past it the handler ends, and the connection goes when the client does).
        reason = reason.encode()[:123].decode(errors="ignore")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code, reason), self.settings.stream_idle_seconds)
        seconds = time.perf_counter() - started
        self.metrics.requests.inc(endpoint="/v1/decode/stream", status=str(code))
        self.metrics.latency.observe(seconds, endpoint="/v1/decode/stream")
        client = websocket.client or ("-", 0)
        log.info('%s "WS /v1/decode/stream" %d %.1f s%s', client[0], code, seconds, f" ({reason})" if reason else "")


class _QueueSink:
    """A stream's audio handed from the live worker's thread to the event loop. A client
    that does not read its audio would make the queue grow without end: past
    `MAX_QUEUED_SECONDS` of audio the stream is closed instead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sample_rate: int):
        self.loop, self.queue = loop, asyncio.Queue()
        self.limit = int(MAX_QUEUED_SECONDS * sample_rate)
        self.queued = 0  # samples handed over and not yet taken by the sender
        self.overflowed = False
        self._lock = threading.Lock()

    def _put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def audio(self, samples: torch.Tensor) -> None:
        with self._lock:
            if self.overflowed:
                return
            self.overflowed = self.queued + len(samples) > self.limit
            if not self.overflowed:
                self.queued += len(samples)
        self._put(("overflow", None) if self.overflowed else ("audio", samples.numpy()))

    def taken(self, samples: int) -> None:
        with self._lock:
            self.queued -= samples

    def finished(self, samples: int) -> None:
        self._put(("finished", samples))

    def failed(self, error: Exception) -> None:
        self._put(("failed", error))


def _number(params, name: str, kind):
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        number = kind(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if isinstance(number, float) and not np.isfinite(number):
        raise BadRequest(f"{name} must be finite, got {value!r}")
    return number


def _error_response(err: Exception) -> Response:
    if isinstance(err, ClientDisconnect):  # the client left mid-upload: nobody reads this answer
        return JSONResponse({"error": "the client disconnected"}, status_code=400)
    if isinstance(err, BadRequest):
        status = err.status
    elif isinstance(err, AudioTooLongError):
        status = 413
    elif isinstance(err, Busy):
        return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": "1"})
    elif isinstance(err, (AudioDecodeError, CodesFileError, ValueError, TypeError)):
        status = 400 if not isinstance(err, (AudioDecodeError, CodesFileError)) else 422
    else:
        log.exception("internal error", exc_info=err)
        return JSONResponse({"error": f"internal error: {type(err).__name__}"}, status_code=500)
    return JSONResponse({"error": str(err)}, status_code=status)


def run(tokenizer, settings: ServeSettings) -> int:
    """Serve until SIGINT or SIGTERM; requests in flight finish first. Returns the exit status.

    uvicorn serves from a thread, and the live worker runs on the main thread, where
    PyTorch's small parallel regions cost least (see `Engine.start`); the signals, which
    only the main thread receives, tell uvicorn to shut down gracefully."""
    import signal
    import threading

    import uvicorn

    from .connections import protocol_with_request_deadline, websocket_protocol_with_close_deadline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = create_app(tokenizer, settings)
    if settings.compiled_step_streams:
        started = time.perf_counter()
        app.state.engine.compile_steps()
        log.info("compiled the decoder's 1-frame steps of 1 to %d streams in %.0f s",
                 settings.compiled_step_streams, time.perf_counter() - started)
    if settings.graphed_step_streams:
        started = time.perf_counter()
        app.state.engine.capture_graphs()
        log.info("captured the decoder's 1-frame steps of 1 to %d streams as CUDA graphs in %.0f s",
                 settings.graphed_step_streams, time.perf_counter() - started)
    app.state.live_on_main_thread = True
    # What is alive now (PyTorch, the model, the app: 180 thousand objects) lives until the
    # end: kept out of the collector's full passes, which walked it in 72-84 ms each while
    # holding the GIL (measured here), a stall of every stream. The garbage of start-up
    # (a compile's) is collected first, or it would be kept for good.
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=60, ws_max_size=WS_MAX_MESSAGE_BYTES, ws_per_message_deflate=False,
        http=protocol_with_request_deadline(settings.stream_idle_seconds, settings.max_connections),
        ws=websocket_protocol_with_close_deadline(settings.stream_idle_seconds) or "auto",
    ))

    def shut_down(signum, frame):
        server.force_exit = server.should_exit  # a second signal: stop waiting for requests
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, shut_down)
    serving = threading.Thread(target=server.run, name="uvicorn")

    def watch():  # however uvicorn ends (shut down, or unable to start), the live worker ends too
        serving.join()
        app.state.engine.stop()

    serving.start()
    threading.Thread(target=watch, name="higgs-watch", daemon=True).start()
    app.state.engine.run_live()
    serving.join()
    return 0 if server.started else 1
