"""The DAC-style acoustic encoder and decoder.

Module and attribute names mirror the transformers checkpoint keys
(`acoustic_encoder.block.0.res_unit1.conv1.weight`, ...), so a state dict
loads without renaming.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import AcousticConfig
from .layers import DecoderConv1d, Snake1d, UpsamplingConv1d, masked_conv, zero_padding_

RESIDUAL_DILATIONS = (1, 3, 9)


class AcousticResidualUnit(nn.Module):
    """Snake → dilated conv (k=7) → Snake → 1×1 conv, added to the input."""

    def __init__(self, channels: int, dilation: int, conv=nn.Conv1d):
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = conv(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = conv(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`x` past each item's length may hold anything: only the values inside reach the
        output's values inside (the output's past it are not zero).

        Snake(0) = 0 exactly, so zeroing Snake's output past each item is zeroing the dilated
        conv's input there, as if each item were alone, without a copy of `x`; and the sum is
        made in the branch's tensor (x + branch, the same bits). At most three tensors as
        large as `x` are alive at once, which bounds the encoder's peak memory (the first
        block's, at 24 kHz).
        """
        branch = self.snake2(self.conv1(zero_padding_(self.snake1(x), lengths)))
        return self.conv2(branch).add_(x)


class AcousticEncoderBlock(nn.Module):
    """Three residual units, then a strided conv that doubles the channels."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = (AcousticResidualUnit(channels, d) for d in RESIDUAL_DILATIONS)
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """Returns the output and each item's output length."""
        for unit in self.units:
            x = unit(x, lengths)
        return self.downsample(x, lengths)

    @property
    def units(self) -> tuple[AcousticResidualUnit, ...]:
        return self.res_unit1, self.res_unit2, self.res_unit3

    def downsample(self, x: torch.Tensor, lengths: torch.Tensor | None):
        """The strided conv after the units: its output and each item's output length."""
        return masked_conv(self.conv1, self.snake1(x), lengths, in_place=True)


class AcousticEncoder(nn.Module):
    """Waveform `[B, 1, N]` → acoustic embeddings `[B, hidden_size, frames]`."""

    def __init__(self, config: AcousticConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.conv1 = nn.Conv1d(1, width, kernel_size=7, padding=3)
        blocks = []
        for stride in config.downsampling_ratios:
            blocks.append(AcousticEncoderBlock(width, stride))
            width *= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(width)
        self.conv2 = nn.Conv1d(width, config.hidden_size, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: each item's valid samples in a padded batch (None: all full)."""
        x, lengths = masked_conv(self.conv1, x, lengths)
        for block in self.block:
            # The block's steps one by one (`block(x)` does the same): a call of the block would
            # keep its input alive here until it returned, a tensor as large as the first
            # block's every activation (64 channels at 24 kHz) beside its three. So hooks or
            # wrappers on a block itself (not on its units and layers) do not run here.
            for unit in block.units:
                x = unit(x, lengths)
            x, lengths = block.downsample(x, lengths)
        return masked_conv(self.conv2, self.snake1(x), lengths, in_place=True)[0]


class AcousticDecoderBlock(nn.Module):
    """Snake, a transposed conv that upsamples by `stride` and halves the channels, three residual units."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.snake1 = Snake1d(channels)
        # output_padding = stride % 2 makes every block produce exactly stride × its input length
        # (Higgs' change to DAC; the transformers DAC port has no output padding).
        self.conv_t1 = UpsamplingConv1d(
            channels,
            channels // 2,
            kernel_size=2 * stride,
            stride=stride,
            padding=math.ceil(stride / 2),
            output_padding=stride % 2,
        )
        self.res_unit1, self.res_unit2, self.res_unit3 = (
            AcousticResidualUnit(channels // 2, d, conv=DecoderConv1d) for d in RESIDUAL_DILATIONS
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """Returns the output and each item's output length."""
        x, lengths = self.upsample(x, lengths)
        for unit in self.units:
            x = unit(x, lengths)
        return x, lengths

    @property
    def units(self) -> tuple[AcousticResidualUnit, ...]:
        return self.res_unit1, self.res_unit2, self.res_unit3

    def upsample(self, x: torch.Tensor, lengths: torch.Tensor | None):
        """The transposed conv before the units: its output and each item's output length."""
        return masked_conv(self.conv_t1, self.snake1(x), lengths, in_place=True)


class AcousticDecoder(nn.Module):
    """Acoustic latents `[B, hidden_size, frames]` → waveform `[B, 1, frames * hop]` (no final tanh)."""

    def __init__(self, config: AcousticConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.conv1 = DecoderConv1d(config.hidden_size, width, kernel_size=7, padding=3)
        blocks = []
        for stride in config.upsampling_ratios:
            blocks.append(AcousticDecoderBlock(width, stride))
            width //= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(width)
        self.conv2 = DecoderConv1d(width, 1, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: each item's valid frames in a padded batch (None: all full)."""
        x, lengths = masked_conv(self.conv1, x, lengths)
        for block in self.block:  # step by step, as the encoder does (no block's input kept alive through it; no block hooks)
            x, lengths = block.upsample(x, lengths)
            for unit in block.units:
                x = unit(x, lengths)
        return masked_conv(self.conv2, self.snake1(x), lengths, in_place=True)[0]
