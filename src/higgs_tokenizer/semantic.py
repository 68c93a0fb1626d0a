"""The semantic encoder (HuBERT features → semantic embeddings) and its
training-time decoder. Both are stacks of residual conv blocks with ELU."""

from __future__ import annotations

import torch
from torch import nn

from .config import HiggsAudioV2TokenizerConfig
from .layers import FrameRateConv1d, masked_conv, zero_padding


class SemanticResidualUnit(nn.Module):
    """ELU → conv (unit_kernel_size, dilated) → ELU → 1×1 conv, added to the input."""

    def __init__(self, config: HiggsAudioV2TokenizerConfig, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        k = config.unit_kernel_size
        self.conv1 = FrameRateConv1d(in_channels, out_channels, k, padding=((k - 1) // 2) * dilation, dilation=dilation, bias=False)
        self.conv2 = FrameRateConv1d(out_channels, out_channels, kernel_size=1, bias=False)
        self.activation = nn.ELU()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = zero_padding(x, lengths)  # ELU(0) = 0: the conv then sees zeros past each item
        return x + self.conv2(self.activation(self.conv1(self.activation(x))))


class SemanticEncoderBlock(nn.Module):
    def __init__(self, config: HiggsAudioV2TokenizerConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.res_units = nn.ModuleList(
            SemanticResidualUnit(config, in_channels, in_channels, d) for d in config.block_dilations
        )
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = FrameRateConv1d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        for unit in self.res_units:
            x = unit(x, lengths)
        return masked_conv(self.conv, x, lengths)


class SemanticEncoder(nn.Module):
    """HuBERT features `[B, C, T]` → semantic embeddings `[B, C', T']`."""

    def __init__(self, config: HiggsAudioV2TokenizerConfig):
        super().__init__()
        width = config.semantic_hidden_size
        k = config.kernel_size
        self.conv = FrameRateConv1d(width, width, k, padding=k // 2, bias=False)
        blocks, in_channels = [], width
        for ratio, stride in zip(config.channel_ratios, config.strides):
            out_channels = int(width * ratio)
            blocks.append(SemanticEncoderBlock(config, in_channels, out_channels, stride))
            in_channels = out_channels
        self.conv_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths`: each item's valid frames in a padded batch (None: all full)."""
        x, lengths = masked_conv(self.conv, x, lengths)
        for block in self.conv_blocks:
            x, lengths = block(x, lengths)
        return x


class SemanticDecoderBlock(nn.Module):
    def __init__(self, config: HiggsAudioV2TokenizerConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride == 1:
            self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        else:
            self.conv = nn.ConvTranspose1d(
                in_channels, out_channels, 2 * stride, stride, padding=(stride + 1) // 2, output_padding=stride % 2, bias=False
            )
        self.res_units = nn.ModuleList(
            SemanticResidualUnit(config, out_channels, out_channels, d) for d in config.block_dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for unit in self.res_units:
            x = unit(x)
        return x


class SemanticDecoder(nn.Module):
    """Quantized semantic latents → reconstructed HuBERT features (a training target; unused when decoding audio)."""

    def __init__(self, config: HiggsAudioV2TokenizerConfig):
        super().__init__()
        width = config.semantic_hidden_size
        k = config.kernel_size
        widths = [int(width * r) for r in config.channel_ratios] + [width]
        self.conv1 = nn.Conv1d(width, widths[0], k, padding=k // 2, bias=False)
        self.conv_blocks = nn.ModuleList(
            SemanticDecoderBlock(config, widths[i], widths[i + 1], stride) for i, stride in enumerate(config.strides)
        )
        self.conv2 = nn.Conv1d(width, width, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.conv_blocks:
            x = block(x)
        return self.conv2(x)
