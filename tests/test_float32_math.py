"""The process-wide TF32 flags under `float32_math`: full float32 while any block needs it,
TF32 while only TF32 blocks are inside, the flags as they were once all have left. The
flags exist without a GPU, so the rules are checked here; `cuda` is only a device name."""

import threading

import torch

from higgs_tokenizer.runtime import float32_math

CUDA = torch.device("cuda")


def flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_each_mode_sets_both_flags_and_restores_them():
    before = flags()
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
        with float32_math(CUDA, torch.float32, tf32=False):
            assert flags() == (False, False)
        assert flags() == (True, False)
        torch.backends.cudnn.allow_tf32 = False  # a process that turned TF32 off: "tf32" still means TF32
        with float32_math(CUDA, torch.float32, tf32=True):
            assert flags() == (True, True)
        assert flags() == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_full_float32_wins_while_any_block_needs_it():
    before = flags()
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        exact = float32_math(CUDA, torch.float32, tf32=False)
        fast = float32_math(CUDA, torch.float32, tf32=True)
        fast.__enter__()
        assert flags() == (True, True)
        exact.__enter__()
        assert flags() == (False, False)  # the exact block's codes come first
        fast.__exit__(None, None, None)
        assert flags() == (False, False)
        fast = float32_math(CUDA, torch.float32, tf32=True)
        fast.__enter__()
        exact.__exit__(None, None, None)
        assert flags() == (True, True)  # only TF32 blocks are left
        fast.__exit__(None, None, None)
        assert flags() == (True, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_other_devices_and_dtypes_leave_the_flags():
    before = flags()
    for device, dtype in ((torch.device("cpu"), torch.float32), (CUDA, torch.bfloat16)):
        for tf32 in (False, True):
            with float32_math(device, dtype, tf32=tf32):
                assert flags() == before


def test_threads_in_full_float32_share_the_setting():
    before = flags()
    inside, release = threading.Barrier(4), threading.Event()
    seen = []

    def worker():
        with float32_math(CUDA, torch.float32, tf32=False):
            inside.wait()
            release.wait()
            seen.append(flags())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait()
    assert flags() == (False, False)
    release.set()
    for t in threads:
        t.join()
    assert seen == [(False, False)] * 3 and flags() == before
