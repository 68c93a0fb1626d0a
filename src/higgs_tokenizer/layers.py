"""Small building blocks shared by the acoustic and semantic models."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn


# Elements per slice of the in-place Snake on the CPU: small enough that its five
# passes stay in the core's L2 cache, large enough to keep the per-op overhead small.
SNAKE_SLICE_ELEMENTS = 1 << 18


# The caches live beside the modules, not in them, so that copying or pickling a module
# leaves them behind (some are oneDNN's opaque tensors, which cannot be copied).
_DERIVED_TENSORS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _forget_derived_tensors(module: nn.Module, *load_state_dict_args) -> None:
    _DERIVED_TENSORS.get(module, {}).clear()


def derived_tensor(owner: nn.Module, name: str, sources: list[torch.Tensor], make) -> torch.Tensor:
    """`make()`, a tensor computed from `sources` (weights of `owner`), cached for `owner` until
    one of them changes: is replaced, moved, cast or modified in place.

    For inference: the result is a plain tensor (even when made under inference mode, so it
    may later meet autograd) and carries no gradient.
    """
    # Inference tensors keep no version counter; their storage identifies them. So a weight
    # made under inference mode and changed in place there is not seen, unless by
    # `load_state_dict`, which empties the module's cache first.
    key = tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device) for t in sources)
    cache = _DERIVED_TENSORS.get(owner)
    if cache is None:
        cache = _DERIVED_TENSORS[owner] = {}
        owner.register_load_state_dict_pre_hook(_forget_derived_tensors)
    cached = cache.get(name)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            cached = cache[name] = (key, make())
    return cached[1]


class Snake1d(nn.Module):
    """Snake activation x + sin²(αx)/α with one learned α per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        # A compiled `snake_reference` (one fused kernel) when set by `compile_kernels`.
        self.kernel = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x, self.alpha)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad)):
            return snake_reference(x, self.alpha)  # one fused kernel when compiled
        inverse = derived_tensor(self, "inverse_alpha", [self.alpha], lambda: inverse_alpha(self.alpha))
        return snake_inference(x, self.alpha, inverse)


def snake_reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # The reference's expression; the 1e-9 keeps α = 0 finite.
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def inverse_alpha(alpha: torch.Tensor) -> torch.Tensor:
    return (alpha + 1e-9).reciprocal()  # the 1e-9 keeps α = 0 finite, as in the reference


def snake_inference(x: torch.Tensor, alpha: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """`snake_reference` bit for bit, computed in one output buffer (`inverse`: 1 / (α + 1e-9)).

    The reference allocates four temporaries as large as `x`; on the CPU each
    fresh large buffer costs page faults, and its five passes over memory are
    bandwidth-bound. Here every pass works in place on a slice of the output
    that fits in cache. The same elementwise operations in the same order give
    the same bits (products and sums commute exactly).
    """
    if inverse is None:
        inverse = inverse_alpha(alpha)
    out = torch.empty_like(x)
    width = x.shape[-1]
    step = width if x.device.type != "cpu" else max(1, SNAKE_SLICE_ELEMENTS * width // max(1, x.numel()))
    if step >= width:  # one slice: no views to make
        torch.mul(alpha, x, out=out)
        return out.sin_().pow_(2).mul_(inverse).add_(x)
    for start in range(0, width, step):
        x_part, part = x[..., start : start + step], out[..., start : start + step]
        torch.mul(alpha, x_part, out=part)
        part.sin_().pow_(2).mul_(inverse).add_(x_part)
    return out


def onednn_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0, dilation: int = 1):
    """`F.conv1d` (stride 1), on the CPU in float32 always by oneDNN.

    PyTorch sends a batch of one with few channels x samples (under 20480) to a slower
    im2col kernel, which also sums in another order than oneDNN does for larger inputs.
    The decoder runs every conv here, so that its output does not depend on how much is
    decoded at once: a stream decoded frame by frame gets the bits of one-shot decoding.
    """
    if runs_on_onednn(x):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [padding], [1], [dilation], 1)
    return F.conv1d(x, weight, bias, padding=padding, dilation=dilation)


def unfolded_columns(x: torch.Tensor, taps: int, dilation: int = 1, stride: int = 1) -> torch.Tensor:
    """The input columns of an unpadded conv over `x` `[B, C, L]`, one row per output sample:
    `[B * width, C * taps]` (im2col), so that the conv is one matrix product with its weight
    as `[out, C * taps]`."""
    channels = x.shape[1]
    if taps == 1 and stride == 1:
        return x.transpose(1, 2).reshape(-1, channels)
    columns = x.unfold(-1, dilation * (taps - 1) + 1, stride)[..., ::dilation]  # [B, C, width, K]
    return columns.permute(0, 2, 1, 3).reshape(-1, channels * taps)


class FrameRateConv1d(nn.Conv1d):
    """A conv over frame-rate features (the semantic encoder's), computed on a GPU as one
    matrix product over its unfolded input (`unfolded_columns`).

    cuDNN picks its float32 algorithm for these short sequences by heuristics, and on an
    H200 (torch 2.11), for a batch of 8 clips of 4.3 s, these convs allocated 74 GB and
    gave other codes than the CPU for 29 % of the batch's codes (1.2 % of a corpus mix's in
    batches of 8). With cuDNN off, the same call took 1.2 GB, ran faster and gave the
    CPU's codes. The product costs `kernel_size` copies of the input, small at the
    frame rate. The CPU keeps `F.conv1d` (oneDNN: the reference's sums, bit for bit).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return self.as_product(x)

    def as_product(self, x: torch.Tensor) -> torch.Tensor:
        """The conv as one matrix product (what a GPU runs; any device computes it)."""
        (padding,), (taps,), (dilation,), (stride,) = self.padding, self.kernel_size, self.dilation, self.stride
        width = (x.shape[-1] + 2 * padding - dilation * (taps - 1) - 1) // stride + 1
        padded = F.pad(x, (padding, padding)) if padding else x
        columns = unfolded_columns(padded, taps, dilation, stride)
        out = F.linear(columns, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(x.shape[0], width, self.out_channels).transpose(1, 2)


def runs_on_onednn(x: torch.Tensor) -> bool:
    return _HAS_ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu"


_HAS_ONEDNN = torch.backends.mkldnn.is_available()  # how PyTorch was built: fixed


# oneDNN packs a weight for `onednn_linear` for products of at least this many rows (and is
# told to expect as many, a hint for its choice of layout; the product is right for any
# number). Below it, its kernel for the plain layout reads the weight faster.
PACKED_LINEAR_ROWS = 4


def packs_linear_weight(x: torch.Tensor) -> bool:
    """Whether a product of `x` `[rows, in]` by a weight reads it faster packed (`packed_matrix`):
    on the CPU in float32, from `PACKED_LINEAR_ROWS` rows on. oneDNN otherwise repacks it on
    every call, a second pass over memory when a few rows meet a large weight (a streamed
    step's conv). Measured on the 2-core CPU with the weight out of cache: 8 rows against a
    512 x 3584 weight, 0.53 ms packed against 0.68 ms."""
    return x.shape[0] >= PACKED_LINEAR_ROWS and runs_on_onednn(x)


def packed_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """`matrix` `[out, in]` in oneDNN's layout for `onednn_linear` (told to expect twice the
    fewest rows it is packed for: a hint for the layout)."""
    return torch.ops.mkldnn._reorder_linear_weight(matrix, 2 * PACKED_LINEAR_ROWS)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear`, on the CPU in float32 by oneDNN's matmul: for a few rows against a large
    weight (a streamed step's conv) it reads the weight up to twice as fast as MKL's GEMM.
    `weight` may be packed by `packed_matrix`. A compiled program calls `packed_linear`
    instead: inductor would otherwise hand the product to MKL."""
    if runs_on_onednn(x):
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


_LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default if _HAS_ONEDNN else None


def _packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` by `onednn_linear`, the weight packed once per tensor (until it
    changes): a product that a compiled program calls as it is, where inductor would pick
    MKL's, slower for the few rows of a streamed step (a 4-stream 1-frame step: 17.6 against
    22 ms, 2-core CPU)."""
    if x.shape[0] < PACKED_LINEAR_ROWS or not runs_on_onednn(x):
        return onednn_linear(x, weight, bias)
    key = (weight.data_ptr(), None if weight.is_inference() else weight._version)
    cached = _PACKED_WEIGHTS.get(id(weight))
    if cached is None or cached[0] != key:
        if cached is None:
            weakref.finalize(weight, _PACKED_WEIGHTS.pop, id(weight), None)
        with torch.inference_mode(False), torch.no_grad():
            cached = _PACKED_WEIGHTS[id(weight)] = (key, packed_matrix(weight))
    return _LINEAR_POINTWISE(x, cached[1], bias, "none", [], "")


# `packed_linear`'s packed weights, by the id of the tensor they pack (emptied when it goes).
_PACKED_WEIGHTS: dict[int, tuple] = {}


def _packed_linear_shape(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


def _packed_linear_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _packed_linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    return grad @ weight, grad.t() @ x, grad.sum(0) if ctx.has_bias else None


# The op is defined on a plain `torch.library.Library` rather than by `custom_op`, whose
# wrappers cost more per call (in a compiled 1-frame step, which makes 25 of these calls,
# the op's own time went from 21 to 15 µs a call). It has F.linear's gradients, so none is
# dropped silently; they cost nothing under inference mode, where streaming steps run. A
# second copy of this module (a reload) finds the op made and leaves it.
_OPS = torch.library.Library("higgs_tokenizer", "FRAGMENT")
if not hasattr(torch.ops.higgs_tokenizer, "packed_linear"):
    _OPS.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
    _OPS.impl("packed_linear", _packed_linear, "CompositeExplicitAutograd")
    torch.library.register_fake("higgs_tokenizer::packed_linear", _packed_linear_shape, lib=_OPS)
    torch.library.register_autograd("higgs_tokenizer::packed_linear", _packed_linear_backward,
                                    setup_context=_packed_linear_context, lib=_OPS)
packed_linear = torch.ops.higgs_tokenizer.packed_linear.default


def packed_conv_weight(weight: torch.Tensor, dilation: int, input_size: tuple[int, int, int]) -> torch.Tensor:
    """`weight` `[out, in, K]` in oneDNN's layout for `packed_conv1d` (CPU, float32), for
    inputs like `input_size` `[B, C, L]` (a hint for the layout; any size works)."""
    batch, channels, length = input_size
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight[:, :, None], [0, 0], [1, 1], [1, dilation], 1, [batch, channels, 1, length]
    )


def packed_conv1d(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """An unpadded stride-1 conv of `x` `[B, C, L]` by a weight packed by `packed_conv_weight`:
    oneDNN's 2-D conv, where its 1-D conv (`onednn_conv1d`) reorders the weight on every call,
    which costs more than the conv itself for the few columns of a streamed step (a 1-frame
    step is 5 % faster, 2-core CPU)."""
    return torch.ops.mkldnn._convolution_pointwise(
        x[:, :, None], packed, bias, [0, 0], [1, 1], [1, dilation], 1, "none", [], ""
    )[:, :, 0]


class DecoderConv1d(nn.Conv1d):
    """A stride-1 conv computed by `onednn_conv1d` (the acoustic decoder's convs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1 or self.groups != 1 or self.padding_mode != "zeros":
            return super().forward(x)
        return onednn_conv1d(x, self.weight, self.bias, self.padding[0], self.dilation[0])


class UpsamplingConv1d(nn.ConvTranspose1d):
    """A transposed conv with kernel 2 × stride, computed as an ordinary conv.

    Each output sample at phase r (position mod stride) is the sum of two
    input frames weighted by kernel taps r and r + stride. So one conv with
    kernel 2 and stride × out_channels outputs, whose phases are then
    interleaved, computes the same thing as a dense matrix product, where the
    CPU's transposed-conv kernels run at a third to two thirds of the speed on
    the decoder's layers (a GPU keeps cuDNN's transposed conv). The result equals
    `ConvTranspose1d` up to float rounding (the sums are ordered differently);
    the weights keep the checkpoint layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, p, k = self.stride[0], self.padding[0], self.kernel_size[0]
        out_pad = self.output_padding[0]
        # cuDNN's transposed convs are fast already; the rearrangement pays on the CPU.
        if x.device.type != "cpu" or k != 2 * s or out_pad > p or self.dilation[0] != 1 or self.groups != 1 or x.dim() != 3:
            return super().forward(x)
        batch, _, frames = x.shape
        phases = onednn_conv1d(x, self.phase_weight(), None, padding=1)  # [B, (phase, out), frames + 1]
        out = phases.view(batch, s, self.out_channels, frames + 1).permute(0, 2, 3, 1)
        out = out.reshape(batch, self.out_channels, (frames + 1) * s)
        del phases  # two tensors as large as the output alive at once, not three
        length = (frames - 1) * s - 2 * p + k + out_pad
        out = out[:, :, p : p + length]
        return out + self.bias[:, None] if self.bias is not None else out.contiguous()

    def phase_weight(self) -> torch.Tensor:
        """`[stride × out, in, 2]`: for phase r, tap 0 reads frame q - 1 with kernel tap r + stride
        and tap 1 frame q with tap r. Cached until the weight changes, unless it is being trained."""
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.weight.requires_grad):
            return self.rearranged_weight(self.weight)  # compiled: folded once by freezing
        return derived_tensor(self, "phase_weight", [self.weight], lambda: self.rearranged_weight(self.weight))

    def phase_bias(self) -> torch.Tensor | None:
        """The bias of each of `phase_weight`'s outputs: the layer's bias, once per phase."""
        if self.bias is None:
            return None
        if torch.compiler.is_compiling():
            return self.bias.repeat(self.stride[0])
        return derived_tensor(self, "phase_bias", [self.bias], lambda: self.bias.detach().repeat(self.stride[0]))

    def rearranged_weight(self, w: torch.Tensor) -> torch.Tensor:
        """`phase_weight` computed from `w`, the layer's weight."""
        s = self.stride[0]
        taps = torch.stack([w[:, :, s:], w[:, :, :s]], dim=-1)  # [in, out, phase, 2]
        return taps.permute(2, 1, 0, 3).reshape(s * self.out_channels, self.in_channels, 2).contiguous()


def conv_stack_output_length(module: nn.Module, length):
    """Output length of `module` for an input of `length` (an int, or a tensor of per-item lengths),
    from its Conv1d layers in order; 0 where the input is too short for any output.

    Valid for the feed-forward conv stacks of this model (HuBERT's feature
    encoder, the acoustic and semantic encoders), where every Conv1d sits on
    the main path and the residual ones preserve length.
    """
    lengths = torch.as_tensor(length)
    for conv in module.modules():
        if isinstance(conv, nn.Conv1d):
            lengths = conv_lengths(conv, lengths)
    lengths = lengths.clamp(min=0)
    return int(lengths) if not isinstance(length, torch.Tensor) else lengths


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight that weight norm represents, w = g · v / ‖v‖.

    The norm is taken over every axis but the one `g` keeps (axis 0 for the
    acoustic convs, axis 2 for HuBERT's positional conv); it is found from the
    shapes. The reference recomputes this on every forward pass with
    `torch._weight_norm`; folding it once at load gives the same tensor.
    """
    if g.dim() != v.dim():
        raise ValueError(f"weight norm: g {tuple(g.shape)} and v {tuple(v.shape)} differ in rank")
    candidates = [
        d for d in range(v.dim()) if all(g.shape[i] == (v.shape[d] if i == d else 1) for i in range(v.dim()))
    ]
    if not candidates:
        raise ValueError(f"weight norm: g {tuple(g.shape)} does not fit v {tuple(v.shape)}")
    dim = candidates[0]
    return torch._weight_norm(v.float(), g.float(), dim).to(v.dtype)


def split_weight_norm(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) with `fold_weight_norm(g, v)` equal to `weight` bit for bit.

    g is taken from the same norm kernel that folding divides by, so g / ‖v‖
    is exactly 1 and a save → load round trip changes nothing.
    """
    shape = [1] * weight.dim()
    shape[dim] = weight.shape[dim]
    _, norm = torch._weight_norm_interface(weight.float(), torch.ones(shape, device=weight.device), dim)
    return norm.reshape(shape).to(weight.dtype), weight


# Exact batching: a padded batch gives every item the result it would get alone
# when, before every conv that looks at neighbouring frames, each item's frames past
# its own length are zero, as its own zero padding would be. `lengths` ([batch],
# int64) tracks each item's valid length through the layers; None means every
# item fills the batch, and nothing needs masking.
def _frames_inside(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`[batch, 1, time]`: whether each frame of `x` `[batch, channels, time]` is before its item's length."""
    return (torch.arange(x.shape[-1], device=x.device) < lengths.to(x.device)[:, None])[:, None, :]


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`x` `[batch, channels, time]` with every frame at or past its item's length set to zero."""
    if lengths is None:
        return x
    return torch.where(_frames_inside(x, lengths), x, torch.zeros((), dtype=x.dtype, device=x.device))


def conv_lengths(conv: nn.Module, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """Each item's valid output length after `conv` (a Conv1d or ConvTranspose1d)."""
    if lengths is None:
        return None
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    if isinstance(conv, nn.ConvTranspose1d):
        return (lengths - 1) * s - 2 * p + d * (k - 1) + conv.output_padding[0] + 1
    return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


def zero_padding_(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`zero_padding` in place, for a tensor the caller has just made and nothing else reads:
    no copy as large as `x` (at 24 kHz, a copy is the size of a whole layer's output)."""
    if lengths is not None:
        x.masked_fill_(~_frames_inside(x, lengths), 0)
    return x


def masked_conv(conv: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, in_place: bool = False):
    """`conv` applied as if each item were alone: returns the output and its valid lengths.
    `in_place`: `x` is the caller's new tensor (a Snake's output), zeroed past each item in
    place rather than copied."""
    return conv((zero_padding_ if in_place else zero_padding)(x, lengths)), conv_lengths(conv, lengths)
