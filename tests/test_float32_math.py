"""The process-wide TF32 settings under `float32_math`: full float32 while any block needs
it, TF32 while only TF32 blocks are inside, the settings as they were once all have left.
The settings exist without a GPU, so the rules are checked here; `cuda` is only a device
name. PyTorch from 2.9 sets TF32 per operator (`fp32_precision`), earlier ones by two
flags: the tests read whichever the library uses."""

import threading

import pytest
import torch

from higgs_tokenizer.runtime import float32_math

CUDA = torch.device("cuda")
PER_OPERATOR = hasattr(torch.backends.cuda.matmul, "fp32_precision")
ON, OFF = ("tf32", "ieee") if PER_OPERATOR else (True, False)


def settings():
    """(convs, matrix products)."""
    if PER_OPERATOR:
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def set_settings(convs, products):
    if PER_OPERATOR:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = convs, products
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = convs, products


@pytest.fixture(autouse=True)
def pytorch_defaults():
    """Each test starts from PyTorch's defaults (TF32 convs, full float32 products) and
    leaves the process as it found it."""
    before = settings()
    set_settings(ON, OFF)
    yield
    set_settings(*before)


def test_each_mode_sets_both_and_restores_them():
    with float32_math(CUDA, torch.float32, tf32=False):
        assert settings() == (OFF, OFF)
    assert settings() == (ON, OFF)
    set_settings(OFF, OFF)  # a process that turned TF32 off: "tf32" still means TF32
    with float32_math(CUDA, torch.float32, tf32=True):
        assert settings() == (ON, ON)
    assert settings() == (OFF, OFF)


def test_an_error_in_the_block_restores_them():
    with pytest.raises(KeyError), float32_math(CUDA, torch.float32, tf32=False):
        raise KeyError("in the block")
    assert settings() == (ON, OFF)


def test_full_float32_wins_while_any_block_needs_it():
    exact = float32_math(CUDA, torch.float32, tf32=False)
    fast = float32_math(CUDA, torch.float32, tf32=True)
    fast.__enter__()
    assert settings() == (ON, ON)
    exact.__enter__()
    assert settings() == (OFF, OFF)  # the exact block's codes come first
    fast.__exit__(None, None, None)
    assert settings() == (OFF, OFF)
    fast = float32_math(CUDA, torch.float32, tf32=True)
    fast.__enter__()
    exact.__exit__(None, None, None)
    assert settings() == (ON, ON)  # only TF32 blocks are left
    fast.__exit__(None, None, None)
    assert settings() == (ON, OFF)


def test_other_devices_and_dtypes_leave_them():
    for device, dtype in ((torch.device("cpu"), torch.float32), (CUDA, torch.bfloat16)):
        for tf32 in (False, True):
            with float32_math(device, dtype, tf32=tf32):
                assert settings() == (ON, OFF)


@pytest.mark.skipif(not PER_OPERATOR, reason="PyTorch before 2.9 has only the two flags")
def test_a_process_that_set_tf32_per_operator():
    """Once `fp32_precision` is set, PyTorch refuses a read of the old flags: the block must
    neither read them nor lose the per-operator settings."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with float32_math(CUDA, torch.float32, tf32=False):
        assert settings() == ("ieee", "ieee")
    assert settings() == (ON, "tf32")


def test_threads_in_full_float32_share_the_setting():
    inside, release = threading.Barrier(4, timeout=10), threading.Event()
    seen, errors = [], []

    def worker():
        try:
            with float32_math(CUDA, torch.float32, tf32=False):
                inside.wait()
                release.wait(10)
                seen.append(settings())
        except Exception as error:  # reported by the main thread, which must not hang
            errors.append(error)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        inside.wait()
        assert settings() == (OFF, OFF)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert not errors
    assert seen == [(OFF, OFF)] * 3 and settings() == (ON, OFF)
