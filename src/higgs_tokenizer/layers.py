"""Small building blocks shared by the acoustic and semantic models."""

from __future__ import annotations

import torch
from torch import nn


class Snake1d(nn.Module):
    """Snake activation x + sin²(αx)/α with one learned α per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same operation order as the reference, so results agree to the last bit
        # where the backend allows; the 1e-9 keeps α = 0 finite.
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


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
def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`x` `[batch, channels, time]` with every frame at or past its item's length set to zero."""
    if lengths is None:
        return x
    keep = torch.arange(x.shape[-1], device=x.device) < lengths.to(x.device)[:, None]
    return torch.where(keep[:, None, :], x, torch.zeros((), dtype=x.dtype, device=x.device))


def conv_lengths(conv: nn.Module, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """Each item's valid output length after `conv` (a Conv1d or ConvTranspose1d)."""
    if lengths is None:
        return None
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    if isinstance(conv, nn.ConvTranspose1d):
        return (lengths - 1) * s - 2 * p + d * (k - 1) + conv.output_padding[0] + 1
    return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


def masked_conv(conv: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None):
    """`conv` applied as if each item were alone: returns the output and its valid lengths."""
    return conv(zero_padding(x, lengths)), conv_lengths(conv, lengths)
