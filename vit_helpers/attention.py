"""Multi-head self-attention (Vaswani et al., 2017), the plain way and the fused way.

Locality Self-Attention (Lee, Lee and Song, 2021, arXiv:2112.13492, sec. 3.2; `ModelArgs(lsa=True)`) changes two
things: the softmax temperature is learned (a per-head scale instead of the fixed 1/sqrt(head_dim)), and each token's
score with itself is masked out, so attention goes to other tokens and can sharpen instead of flattening out.

The article's version merged the heads with `out.view(b, seq_len, -1)` straight from
(B, H, N, hd). That reads the memory in head-major order, so token slot i receives pieces of
other tokens. Here the head axis is moved back next to the channels first (`transpose(1, 2)`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs


class MultiHeadAttention(nn.Module):
    """Self-attention over a token sequence, with the article's names (wq, wk, wv, wo; no biases)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.dim = args.dim
        self.head_dim = args.head_dim
        self.wq = nn.Linear(self.dim, self.dim, bias=False)
        self.wk = nn.Linear(self.dim, self.dim, bias=False)
        self.wv = nn.Linear(self.dim, self.dim, bias=False)
        self.wo = nn.Linear(self.dim, self.dim, bias=False)
        # True: F.scaled_dot_product_attention (fused kernels); False: the plain math below.
        self.fused = True
        self.lsa = args.lsa
        if self.lsa:  # a log, so the learned scale stays positive; it starts at the usual 1/sqrt(head_dim)
            self.log_scale = nn.Parameter(torch.full((self.n_heads,), -0.5 * math.log(self.head_dim)))

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.head_dim).transpose(1, 2)  # (B, N, D) -> (B, H, N, hd)

    def merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, H, N, hd = t.shape
        return t.transpose(1, 2).reshape(B, N, H * hd)  # (B, H, N, hd) -> (B, N, H, hd) -> (B, N, D)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """x: (B, N, D). Returns (B, N, D), or ((B, N, D), weights (B, H, N, N)) with return_attn."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected tokens shaped (B, N, {self.dim}), got {tuple(x.shape)}")
        q, k, v = self.split_heads(self.wq(x)), self.split_heads(self.wk(x)), self.split_heads(self.wv(x))
        scale, mask = 1 / math.sqrt(self.head_dim), None
        if self.lsa:  # the learned temperature goes into q, so the fused kernel can take it (with scale 1)
            q, scale = q * self.log_scale.exp().view(1, -1, 1, 1).to(q.dtype), 1.0
            mask = ~torch.eye(x.shape[1], dtype=torch.bool, device=x.device)  # (N, N): False on the diagonal, never attended
        if self.fused and not return_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, H, N, hd)
            return self.wo(self.merge_heads(out))
        scores = q @ k.transpose(-2, -1) * scale  # (B, H, N, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attn = scores.softmax(dim=-1)  # each row: how much a token reads from every token
        out = self.wo(self.merge_heads(attn @ v))  # (B, H, N, hd) -> (B, N, D)
        return (out, attn) if return_attn else out
