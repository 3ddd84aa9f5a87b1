"""A pre-norm transformer encoder block (Xiong et al., 2020, "On Layer Normalization in the Transformer")."""
from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention
from .config import ModelArgs


class AttentionBlock(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)). The block owns its norms."""

    def __init__(self, args: ModelArgs):
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

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """x: (B, N, D) -> (B, N, D); with return_attn also the weights (B, H, N, N)."""
        if return_attn:
            a, attn = self.attn(self.layer_norm_1(x), return_attn=True)
            x = x + a
            x = x + self.ffn(self.layer_norm_2(x))
            return x, attn
        x = x + self.attn(self.layer_norm_1(x))
        x = x + self.ffn(self.layer_norm_2(x))
        return x
