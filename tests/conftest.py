"""Fixtures only; helpers live in helpers.py."""

import os

import pytest
import torch
from helpers import FIXTURE_NAMES, audio_file

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=FIXTURE_NAMES)
def fixture_name(request):
    return request.param


@pytest.fixture(scope="session")
def short_recordings(tmp_path_factory):
    """The first 1.5 s of each shared recording, in its own rate and channel count (fast to encode)."""
    import soundfile as sf

    directory = tmp_path_factory.mktemp("short")
    out = {}
    for name in ("en_man.wav", "belinda.wav", "mabel.wav", "old_man.wav"):
        data, rate = sf.read(audio_file(name), always_2d=True, dtype="int16")
        path = directory / name
        sf.write(path, data[: int(1.5 * rate)], rate, subtype="PCM_16")
        out[name] = path
    return out
