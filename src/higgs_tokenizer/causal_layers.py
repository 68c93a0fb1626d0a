"""The acoustic decoder's layers as a streaming step runs them: causally, each over the
inputs it kept from earlier steps (`Histories`), its output lagging its input by its
padding (`streaming` has the timing).

A step's layers are records (`DecoderLayers`) that hold what each layer reads: its
weights as the step's products and convs take them (packed into oneDNN's layouts on the
CPU), Snake's 1 / α, the names of its histories. An eager step takes them made once per
state of the decoder's weights (`eager_layers`); looking them up through the modules and
their caches on every step (a 1-frame step runs about 70 layers) cost about 0.6 ms of a
1-frame step's 11 ms at full size on the 2-core CPU (docs/streaming.md). A compiled step (`compiled_steps`) makes them from
the modules inside the traced function, so that the weights it reads are the program's
parameters, which inductor freezes.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    inverse_alpha,
    onednn_linear,
    packed_conv1d,
    packed_conv_weight,
    packed_linear,
    packed_matrix,
    packs_linear_weight,
    runs_on_onednn,
    snake_inference,
    unfolded_columns,
)
from .weights_key import DecoderWeights


class Histories:
    """The inputs each stateful layer keeps from earlier steps, for a batch of streams.

    By itself it runs a steady step: one where every value of every layer stands inside
    its stream's signal, so nothing needs zeroing (`settle`)."""

    def __init__(self, buffers: dict[str, torch.Tensor], time_major: bool):
        self.buffers, self.time_major = buffers, time_major

    def history(self, name: str, x: torch.Tensor, keep: int) -> torch.Tensor:
        """`x` after the inputs kept from earlier steps; keeps the last `keep` for the next."""
        if not self.time_major:
            full = torch.cat([self.buffers[name], x], dim=-1)
            # A copy: a view would keep the whole of `full` alive with each stream's state.
            self.buffers[name] = full[..., full.shape[-1] - keep :].clone()
            return full
        full = torch.cat([self.buffers[name].transpose(1, 2), x.transpose(1, 2)], dim=1)  # [B, T, C]
        self.buffers[name] = full[:, full.shape[1] - keep :].clone(memory_format=torch.contiguous_format).transpose(1, 2)
        return full.transpose(1, 2)

    def settle(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """Layer `name`'s output `y` with its values outside its signal zeroed: none here."""
        return y


def decoder_layers(layers: "DecoderLayers", step: Histories, x: torch.Tensor) -> torch.Tensor:
    """The decoder's layers run causally over latents `x` `[B, C, k]` past `step`'s histories:
    audio `[B, k * hop]`, lagging the latents by the decoder's latency."""
    x = step.settle(layers.conv1.name, layers.conv1(step, x))
    for block in layers.blocks:
        x = step.settle(block.upsample.name, block.upsample(step, block.snake(x)))
        for unit in block.units:
            x = step.settle(unit.name, unit(step, x))
    return layers.conv2(step, layers.snake(x))[:, 0]


def steady_layers(layers: "DecoderLayers", buffers: dict[str, torch.Tensor], x: torch.Tensor, time_major: bool):
    """A steady step as a function of tensors (what `CompiledSteps` compiles and `GraphedSteps`
    captures): the audio, and the buffers after it."""
    step = Histories(dict(buffers), time_major)
    return decoder_layers(layers, step, x), step.buffers


class DecoderLayers:
    """The decoder's layers as a step runs them (see the module's docstring). `eager`: with
    weights packed for eager kernels and cached; else as a traced program reads them."""

    def __init__(self, decoder: nn.Module, eager: bool):
        self.conv1 = _CausalConv.same_padded("conv1", decoder.conv1, eager)
        self.blocks = [_Block(f"block.{i}", block, eager) for i, block in enumerate(decoder.block)]
        self.snake = _Snake(decoder.snake1, eager)
        self.conv2 = _CausalConv.same_padded("conv2", decoder.conv2, eager)

    def histories(self):
        """(name, channels, length) of every history a stream keeps, in the order of the step."""
        yield self.conv1.history
        for block in self.blocks:
            yield block.upsample.phases.history
            for unit in block.units:
                yield from unit.histories()
        yield self.conv2.history


# The eager layers of each decoder: (its weights' watch, their key when the layers were made, the layers).
_EAGER: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def eager_layers(decoder: nn.Module) -> DecoderLayers:
    """The decoder's layers for eager steps, made anew when one of its weights is replaced,
    moved, cast, modified in place or loaded, or a submodule is replaced (`DecoderWeights`)."""
    watcher, made_for, layers = _EAGER.get(decoder) or (DecoderWeights(decoder), None, None)
    key = watcher.key()
    if made_for != key:
        _EAGER[decoder], layers = (watcher, None, None), None  # the old layers' packed weights go first
        with torch.no_grad():
            layers = DecoderLayers(decoder, eager=True)
        # One assignment, and the layers made here returned: a step in another thread may be
        # making them too.
        _EAGER[decoder] = (watcher, key, layers)
    return layers


class _Block:
    """Snake, the upsampling transposed conv, then three residual units."""

    def __init__(self, name: str, block: nn.Module, eager: bool):
        self.snake = _Snake(block.snake1, eager)
        self.upsample = _Upsampling(f"{name}.conv_t1", block.conv_t1, eager)
        units = (block.res_unit1, block.res_unit2, block.res_unit3)
        self.units = [_ResidualUnit(f"{name}.res_unit{j + 1}", unit, eager) for j, unit in enumerate(units)]


class _Snake:
    def __init__(self, module: nn.Module, eager: bool):
        self.module, self.alpha = module, module.alpha
        self.inverse = inverse_alpha(module.alpha) if eager else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverse is None or self.module.kernel is not None:
            return self.module(x)  # traced (the reference's expression, fused), or the model's compiled kernel
        return snake_inference(x, self.alpha, self.inverse)


class _CausalConv:
    """A conv run causally: it keeps its last `keep` inputs for the next step, and its output
    lags its input by `delay`. Its weight `[out, in, K]` is the module's or derived from it;
    packed ones are made on first use."""

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, keep: int, eager: bool,
                 delay: int = 0):
        self.name, self.keep, self.delay, self.eager = name, keep, delay, eager
        # Weights and tensors made from them, not views of them: a view would keep a weight's
        # storage after `model.to(...)` gives the module a new one.
        self.weight, self.bias, self.dilation = weight, bias, dilation
        self._packed_matrix: torch.Tensor | None = None
        self._packed_weight: torch.Tensor | None = None

    @classmethod
    def same_padded(cls, name: str, conv: nn.Conv1d, eager: bool) -> "_CausalConv":
        """A 'same'-padded conv: its output lags its input by its padding p; it keeps 2p inputs."""
        padding = _symmetric_padding(conv)
        return cls(name, conv.weight, conv.bias, conv.dilation[0], 2 * padding, eager, delay=padding)

    @property
    def history(self) -> tuple[str, int, int]:
        """(name, channels, length) of the inputs it keeps."""
        return self.name, self.weight.shape[1], self.keep

    def __call__(self, step: Histories, x: torch.Tensor) -> torch.Tensor:
        return self.unpadded(step.history(self.name, x, keep=self.keep))

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The conv without padding: `x` `[B, C, L]` → `[B, out, L - dilation * (K - 1)]`."""
        out_channels, channels, taps = self.weight.shape
        width = x.shape[-1] - self.dilation * (taps - 1)
        if taps > 1 and not _as_product(x, width, channels * taps):
            return self._conv(x)
        columns = unfolded_columns(x, taps, self.dilation)
        matrix = self.weight.reshape(out_channels, -1)
        if not self.eager:
            out = packed_linear(columns, matrix, self.bias)  # packs it once, for a compiled program
        elif packs_linear_weight(columns):
            if self._packed_matrix is None:
                self._packed_matrix = packed_matrix(matrix)
            out = onednn_linear(columns, self._packed_matrix, self.bias)
        else:
            out = onednn_linear(columns, matrix, self.bias)
        return out.view(x.shape[0], width, out_channels).transpose(1, 2)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if not self.eager:
            # A plain 2-D conv, which inductor hands to oneDNN with the weight packed once (freezing).
            return F.conv2d(x[:, :, None], self.weight[:, :, None], self.bias, dilation=(1, self.dilation))[:, :, 0]
        if not runs_on_onednn(x):
            return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)
        if self._packed_weight is None:
            self._packed_weight = packed_conv_weight(self.weight, self.dilation, tuple(x.shape))
        return packed_conv1d(x, self._packed_weight, self.bias, self.dilation)


class _Upsampling:
    """The transposed conv as two-tap phase convs over [previous frame, new frames]
    (`UpsamplingConv1d.phase_weight`); cropping its padding p makes its output lag by p."""

    def __init__(self, name: str, conv: nn.Module, eager: bool):
        self.name, self.stride, self.padding, self.out_channels = name, conv.stride[0], conv.padding[0], conv.out_channels
        self.phases = _CausalConv(name, conv.phase_weight(), conv.phase_bias(), 1, keep=1, eager=eager)

    def __call__(self, step: Histories, x: torch.Tensor) -> torch.Tensor:
        phases = self.phases(step, x)  # [B, (phase, out), frames]
        # Frame q's phase r is sample q * stride + r: in time-major memory, already in place.
        batch, frames = x.shape[0], x.shape[-1]
        return phases.transpose(1, 2).reshape(batch, frames * self.stride, self.out_channels).transpose(1, 2)


class _ResidualUnit:
    """x + branch(x), the skip delayed as much as the branch's conv delays it.

    The skip keeps a FIFO of its own rather than reading x from the conv's history: that
    history is of Snake(x), and recomputing Snake over it costs more than the FIFO.
    """

    def __init__(self, name: str, unit: nn.Module, eager: bool):
        self.name, self.eager = name, eager
        self.snake1, self.snake2 = _Snake(unit.snake1, eager), _Snake(unit.snake2, eager)
        self.conv1 = _CausalConv.same_padded(f"{name}.conv1", unit.conv1, eager)
        self.skip_name, self.delay = f"{name}.skip", self.conv1.delay  # the unit's output lags by its conv's delay
        self.conv2 = _CausalConv(f"{name}.conv2", unit.conv2.weight, unit.conv2.bias, 1, keep=0, eager=eager)

    def histories(self):
        yield self.conv1.history
        yield self.skip_name, self.conv1.weight.shape[1], self.delay

    def __call__(self, step: Histories, x: torch.Tensor) -> torch.Tensor:
        skip = step.history(self.skip_name, x, keep=self.delay)[..., : x.shape[-1]]
        branch = self.snake2(self.conv1(step, self.snake1(x)))
        if branch.shape[0] * branch.shape[-1] <= MATMUL_COLUMNS or not self.eager:
            return skip + self.conv2.unpadded(branch)
        # MKL's batched product costs the least at these sizes, and takes the skip as its addend
        # (time-major: [B, samples, channels]).
        weight = self.conv2.weight[..., 0].t().expand(branch.shape[0], -1, -1)
        out = torch.baddbmm(skip.transpose(1, 2), branch.transpose(1, 2), weight)
        return (out.add_(self.conv2.bias) if self.conv2.bias is not None else out).transpose(1, 2)


def _symmetric_padding(conv: nn.Conv1d) -> int:
    """A stride-1 conv's 'same' padding p, which streaming takes as a delay of p."""
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    if conv.stride[0] != 1 or 2 * p != d * (k - 1):
        raise ValueError(f"streaming needs stride-1 convs with symmetric 'same' padding, got {conv}")
    return p


# Output columns (batch x samples) up to which a conv runs as one matrix product (oneDNN's,
# with a packed weight): a step gives the frame-rate layers few columns, where a conv is
# slower; past that, the product's input copy (K times the conv's) costs more than it saves.
# 64 to 512 were within 3 % of each other on the 2-core CPU; 128 was the fastest for 1- and
# 5-frame pushes and 4 streams.
MATMUL_COLUMNS = 128


# On a GPU, a conv runs as one matrix product while its unfolded columns take at most this
# many elements (128 MiB in float32). cuDNN's float32 convs over the short inputs of a
# step were slow on an H200: a 1-frame step of 256 streams took 71.4 ms with every conv
# past 128 columns run by cuDNN, 23.9 ms with them run as products (5-frame steps of 64
# streams: 108.7 against 15.0 ms).
GPU_UNFOLDED_ELEMENTS = 2**25


def _as_product(x: torch.Tensor, width: int, row: int) -> bool:
    """Whether a conv giving `width` outputs per batch row, each from `row` inputs, runs as
    a matrix product over unfolded columns rather than as a conv."""
    if x.device.type == "cpu":
        return x.shape[0] * width <= MATMUL_COLUMNS
    return x.shape[0] * width * row <= GPU_UNFOLDED_ELEMENTS
