"""HuBERT-base, the semantic teacher, in inference form.

Attribute names mirror the checkpoint keys under `semantic_model.` (the same in
both checkpoint formats). Weight norm of the positional conv is folded at load
time, so the module holds a plain `weight`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import HubertConfig
from .layers import conv_lengths, zero_padding


class FeatureEncoderLayer(nn.Module):
    """Strided conv → (group norm on the first layer only) → GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel, stride=stride, bias=bias)
        # Named layer_norm in the checkpoints, but it is a GroupNorm with one group per
        # channel: it normalises each channel over the whole clip.
        self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True) if group_norm else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """Returns the output and each item's output length. These convs have no
        padding, so a valid output frame only ever reads valid input frames."""
        x, lengths = self.conv(x), conv_lengths(self.conv, lengths)
        if self.layer_norm is not None:
            if lengths is None or (x.shape[0] == 1 and int(lengths[0]) == x.shape[-1]):  # nothing padded
                x = self.layer_norm(x)
            else:
                # Normalise each item over its own frames only, exactly as it would be alone,
                # into one output (the first layer's is HuBERT's largest activation: 512
                # channels at 3.2 kHz), past each item's frames zero.
                normalised = torch.zeros_like(x)
                for i, n in enumerate(lengths.tolist()):
                    normalised[i, :, :n] = self.layer_norm(x[i : i + 1, :, :n])[0]
                x = normalised
        if torch.is_grad_enabled() and x.requires_grad:
            return F.gelu(x), lengths
        return torch.ops.aten.gelu_(x), lengths  # the same bits, in the conv's (or norm's) own tensor


class FeatureEncoder(nn.Module):
    """Raw 16 kHz waveform `[B, N]` → conv features `[B, C, frames]` (stride 320, receptive field 400)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        in_channels = (1,) + config.conv_dim[:-1]
        self.conv_layers = nn.ModuleList(
            FeatureEncoderLayer(i, o, k, s, config.conv_bias, group_norm=(n == 0))
            for n, (i, o, k, s) in enumerate(zip(in_channels, config.conv_dim, config.conv_kernel, config.conv_stride))
        )

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None):
        x = waveform[:, None]
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths)
        return x, lengths


class FeatureProjection(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(features))


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time whose output is added to the features (HuBERT's relative positions)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        k = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, kernel_size=k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        # With an even kernel, "same" padding yields one frame too many; the last is dropped.
        self.num_pad_remove = 1 if k % 2 == 0 else 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.conv(hidden.transpose(1, 2))
        if self.num_pad_remove:
            x = x[:, :, : -self.num_pad_remove]
        return F.gelu(x).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`key_mask` `[B, 1, 1, T]`: True where a frame may be attended to (padding excluded)."""
        b, t, d = hidden.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(hidden)), heads(self.k_proj(hidden)), heads(self.v_proj(hidden))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=self.scaling)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(hidden)))


class TransformerLayer(nn.Module):
    """Post-norm transformer layer (HuBERT-base)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.layer_norm(hidden + self.attention(hidden, key_mask))
        return self.final_layer_norm(hidden + self.feed_forward(hidden))


class TransformerEncoder(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every hidden state: the embedding output, then each layer's output."""
        return list(self.hidden_states(hidden, lengths))

    def hidden_states(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """The hidden states one at a time, so a caller that reduces them need not hold all 13."""
        key_mask = None
        if lengths is not None:
            # The positional conv must see zeros past each item, and attention must not see them at all.
            hidden = zero_padding(hidden.transpose(1, 2), lengths).transpose(1, 2)
            key_mask = (torch.arange(hidden.shape[1], device=hidden.device) < lengths.to(hidden.device)[:, None])
            key_mask = key_mask[:, None, None, :]
        hidden = self.layer_norm(hidden + self.pos_conv_embed(hidden))
        yield hidden
        for layer in self.layers:
            hidden = layer(hidden, key_mask)
            yield hidden


class HubertModel(nn.Module):
    """16 kHz waveform `[B, N]` → the `num_hidden_layers + 1` hidden states, each `[B, frames, hidden]`."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = TransformerEncoder(config)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Hidden states, and each item's valid frames when `lengths` (valid samples per item) is given."""
        embedded, lengths = self._embed(waveform, lengths)
        return self.encoder(embedded, lengths), lengths

    def _embed(self, waveform: torch.Tensor, lengths: torch.Tensor | None):
        """The transformer's input `[B, frames, hidden]` and each item's valid frames."""
        features, lengths = self.feature_extractor(waveform, lengths)
        return self.feature_projection(features.transpose(1, 2)), lengths

    def mean_hidden_state(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None, frame_step: int = 1):
        """The mean of all hidden states at every `frame_step`-th frame, `[B, frames, hidden]`, and
        each item's valid (full-rate) frames; bit for bit `torch.stack(states, 1).mean(1)[:, ::frame_step]`
        (a running sum divided by the count adds in the same order as that mean)."""
        embedded, lengths = self._embed(waveform, lengths)
        # Half-precision means accumulate in float32, as torch.mean does.
        accumulate = torch.float32 if waveform.dtype in (torch.float16, torch.bfloat16) else waveform.dtype
        total, count = None, 0
        for state in self.encoder.hidden_states(embedded, lengths):
            state = state[:, ::frame_step]
            total = state.to(accumulate, copy=True) if total is None else total.add_(state)
            count += 1
        return (total / count).to(waveform.dtype), lengths
