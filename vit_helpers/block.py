"""A pre-norm transformer encoder block (Xiong et al., 2020, "On Layer Normalization in the Transformer")."""
from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention
from .config import ModelArgs


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016, arXiv:1603.09382): while training, drop a residual branch for
    a random fraction `p` of the images in the batch and scale the kept ones by 1 / (1 - p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *(1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AttentionBlock(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)). The block owns its norms.

    drop_path: this block's stochastic-depth rate (the model sets it per block from ModelArgs.drop_path).
    """

    def __init__(self, args: ModelArgs, drop_path: float = 0.0):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(args.dim)
        self.attn = MultiHeadAttention(args)
        self.layer_norm_2 = nn.LayerNorm(args.dim)
        self.ffn = nn.Sequential(
            nn.Linear(args.dim, args.hidden_dim),
            nn.GELU(),
            nn.Dropout(args.dropout),
            nn.Linear(args.hidden_dim, args.dim),
            nn.Dropout(args.dropout),
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """x: (B, N, D) -> (B, N, D); with return_attn also the weights (B, H, N, N)."""
        if return_attn:
            a, attn = self.attn(self.layer_norm_1(x), return_attn=True)
            x = x + self.drop_path(a)
            x = x + self.drop_path(self.ffn(self.layer_norm_2(x)))
            return x, attn
        x = x + self.drop_path(self.attn(self.layer_norm_1(x)))
        x = x + self.drop_path(self.ffn(self.layer_norm_2(x)))
        return x
