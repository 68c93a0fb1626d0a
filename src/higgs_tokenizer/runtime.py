"""Process-level settings that make inference fast, and the model's precision modes.

The codec's activations are large (10 s of audio through the first acoustic
block is 64 channels × 240 000 samples = 61 MB per tensor). glibc's malloc
serves every block above its mmap threshold (at most 32 MB by default) with a
fresh mmap and returns it on free, so each such tensor costs tens of
thousands of page faults and a zeroing of its pages by the kernel, on every
layer of every call. Measured on a 2-core EPYC: a 10 s encode takes 3.3 s
with the default allocator and 2.2 s when freed blocks are kept for reuse
(the same for the reference implementation, which is why the benchmark runs
each implementation in its own process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading

import torch

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and are reused after free; larger ones are
# mapped afresh each time (slower, but they leave no hole behind). 1 GiB by default;
# HIGGS_TOKENIZER_MMAP_MB lowers it (256 bounds the peak of one-shot calls on long audio:
# docs/performance.md has the measured trade-off).
_ENV_THRESHOLD = "HIGGS_TOKENIZER_MMAP_MB"
MMAP_THRESHOLD = 1 << 30
# Free memory at the top of the heap is kept up to this much (the largest mallopt takes).
TRIM_THRESHOLD = (1 << 31) - 1

_ENV_OPT_OUT = "HIGGS_TOKENIZER_KEEP_MALLOC"
_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Have glibc keep freed large blocks for reuse instead of unmapping them.

    Affects the whole process, once: memory freed after a call stays with the
    process (its resident size stays at the peak of its largest call) and is
    reused by the next. Called when a model is loaded onto the CPU; set the
    environment variable HIGGS_TOKENIZER_KEEP_MALLOC=1 to leave the allocator
    alone, or HIGGS_TOKENIZER_MMAP_MB to lower the size of the blocks kept.
    Returns whether the setting is in effect (False off glibc).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    threshold = _mmap_threshold()
    _tuned = False
    if os.environ.get(_ENV_OPT_OUT, "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


def _mmap_threshold() -> int:
    text = os.environ.get(_ENV_THRESHOLD)
    if not text:
        return MMAP_THRESHOLD
    try:
        threshold = int(float(text) * 2**20)
    except ValueError:
        raise ValueError(f"{_ENV_THRESHOLD} must be a number of MiB, got {text!r}") from None
    if not 0 < threshold <= MMAP_THRESHOLD:
        raise ValueError(f"{_ENV_THRESHOLD} must be between 1 and {MMAP_THRESHOLD >> 20} MiB, got {text}")
    return threshold


_float32_math_lock = threading.Lock()
_float32_math_users = {False: 0, True: 0}  # blocks inside, by whether they allow TF32
_saved_tf32: tuple | None = None  # `_tf32_flags()` before the first block


@contextlib.contextmanager
def float32_math(device: torch.device, dtype: torch.dtype, tf32: bool):
    """Within the block, float32 convs and matrix products on a GPU use TF32 if `tf32`, else
    full float32, whatever the process's flags were.

    PyTorch lets cuDNN run float32 convs in TF32 (10-bit mantissa) by default, and its
    matrix products not; full float32 keeps the reference's codes, TF32 moves about 1.5 %
    of a random-weight model's codes (the benchmark, on an H200). The flags are
    process-wide, so blocks in several threads at once (a server's workers) share one
    setting: full float32 while any block needs it (exact codes come first), else TF32
    while any block asks for it, and when the last block leaves, what was there before.
    """
    global _saved_tf32
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    with _float32_math_lock:
        if not any(_float32_math_users.values()):
            _saved_tf32 = _tf32_flags()
        _float32_math_users[tf32] += 1
        _apply_float32_math()
    try:
        yield
    finally:
        with _float32_math_lock:
            _float32_math_users[tf32] -= 1
            _apply_float32_math()


def _apply_float32_math() -> None:
    """The settings for the blocks inside now (under the lock), or, with none, those saved."""
    if any(_float32_math_users.values()):
        _set_tf32_flags(*_tf32_setting(not _float32_math_users[False]))
    else:
        _set_tf32_flags(*_saved_tf32)


# PyTorch 2.9 on sets TF32 per operator (`fp32_precision`) and refuses a read of the old
# flags once that is used; the old flags are all that earlier versions have.
_PER_OPERATOR_TF32 = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _tf32_flags() -> tuple:
    """The process's TF32 settings for convs and matrix products, to restore later."""
    if _PER_OPERATOR_TF32:
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def _tf32_setting(on: bool) -> tuple:
    """TF32 on or off for both convs and matrix products, as `_tf32_flags` gives settings."""
    value = ("tf32" if on else "ieee") if _PER_OPERATOR_TF32 else on
    return value, value


def _set_tf32_flags(convs, products) -> None:
    if _PER_OPERATOR_TF32:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = convs, products
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = convs, products


# The numeric modes a model runs in: (dtype of the weights and activations, whether float32
# convs and products may use TF32). TF32 changes anything only on NVIDIA GPUs (Ampere on);
# elsewhere "tf32" computes exactly what "float32" does. docs/precision.md has the table.
PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {
    "float32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bfloat16": (torch.bfloat16, False),
    "float16": (torch.float16, False),
}


def precision_settings(precision: str) -> tuple[torch.dtype, bool]:
    """(dtype, allow_tf32) of a precision mode's name."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}") from None


def precision_name(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The precision mode of a dtype and TF32 setting (a dtype's name for other dtypes)."""
    for name, settings in PRECISIONS.items():
        if settings == (dtype, allow_tf32 and dtype == torch.float32):
            return name
    return str(dtype).removeprefix("torch.")
