"""What a server may take: every input is bounded here, and the defaults suit a small machine."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_streams: int = 16  # open decode streams; one more is refused, not queued
    max_batch: int = 8  # encode requests sharing one masked batch
    max_wait_ms: float = 10.0  # how long an encode request waits for others to batch with
    max_upload_mb: float = 50.0  # request bodies
    max_audio_seconds: float = 600.0  # audio to encode, and audio that codes to decode make
    max_frames_per_message: int = 250  # code frames in one stream message (10 s)
    max_frames_per_step: int = 25  # frames a stream advances by in one tick (bounds a tick)
    max_frames_waiting: int = 1000  # a stream's frames sent but not yet decoded (40 s): more closes it
    stream_idle_seconds: float = 30.0  # a stream that sends nothing for this long is closed
    max_pending_requests: int = 64  # encode and decode requests queued; more get 503
    max_connections: int = 256  # open connections (streams, requests, idle ones); more get 503 at once
    compiled_step_streams: int = 0  # decoder steps of 1 to this many streams compiled at start (0: none)
    graphed_step_streams: int = 0  # ... captured as CUDA graphs at start (0: none; a CUDA model only)

    def __post_init__(self):
        for name in ("max_streams", "max_batch", "max_frames_per_message", "max_frames_per_step", "max_frames_waiting",
                     "max_pending_requests", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_audio_seconds", "stream_idle_seconds"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms < math.inf:
            raise ValueError(f"max_wait_ms must be at least 0 and finite, got {self.max_wait_ms}")
        for name in ("compiled_step_streams", "graphed_step_streams"):
            if not 0 <= getattr(self, name) <= self.max_streams:
                raise ValueError(f"{name} must be from 0 to max_streams ({self.max_streams}), got {getattr(self, name)}")
        if self.max_connections <= self.max_streams:
            raise ValueError(f"max_connections ({self.max_connections}) must be more than max_streams ({self.max_streams}): "
                             "a stream past max_streams is told so (1013) on a connection of its own")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {self.port}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
