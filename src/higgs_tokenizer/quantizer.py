"""Residual vector quantization: each stage projects the residual to a small
space, picks the nearest codeword (Euclidean), and projects it back."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn


class EuclideanCodebook(nn.Module):
    """`codebook_size` codewords of `codebook_dim`. `embed` is all inference uses;
    `cluster_size`, `embed_avg` and `inited` are the EMA training state, kept so
    checkpoints round-trip."""

    def __init__(self, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, codebook_dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, codebook_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., dim]` → index of the nearest codeword `[...]`."""
        flat = x.reshape(-1, x.shape[-1])
        embed_t = self.embed.t()
        # ‖x‖² − 2x·e + ‖e‖², summed in this order as the reference does: near ties
        # then resolve the same way (‖x‖² does not change the argmin, but it does change rounding).
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed_t + embed_t.pow(2).sum(0, keepdim=True)
        return dist.argmin(dim=-1).view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)


class VectorQuantizer(nn.Module):
    def __init__(self, hidden_size: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.codebook = EuclideanCodebook(codebook_size, codebook_dim)
        self.project_in = nn.Linear(hidden_size, codebook_dim)
        self.project_out = nn.Linear(codebook_dim, hidden_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, hidden]` → codes `[B, T]`."""
        return self.codebook.encode(self.project_in(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, T]` → `[B, T, hidden]`."""
        return self.project_out(self.codebook.decode(codes))


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, num_quantizers: int, hidden_size: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantizer(hidden_size, codebook_size, codebook_dim) for _ in range(num_quantizers)
        )

    def encode(self, embeddings: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """`[B, T, hidden]` → codes `[B, num_quantizers, T]`."""
        residual = embeddings
        codes = []
        for quantizer in self.quantizers[:num_quantizers]:
            indices = quantizer.encode(residual)
            residual = residual - quantizer.decode(indices)
            codes.append(indices)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, n_q, T]` (any n_q up to the number of quantizers) → summed embeddings `[B, T, hidden]`."""
        total = self.quantizers[0].decode(codes[:, 0])
        for i in range(1, codes.shape[1]):
            total = total + self.quantizers[i].decode(codes[:, i])
        return total


def codebooks_sha256(codebooks) -> str:
    """SHA-256 of codebooks (`embed` tensors, in quantizer order) as float32 bytes.

    A model's identity in codes files. float32 holds every value of a float16,
    bfloat16 or float32 checkpoint exactly, so hashing the checkpoint's codebooks
    as stored gives one digest whatever dtype the model is then loaded in.
    """
    digest = hashlib.sha256()
    for embed in codebooks:
        digest.update(embed.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
