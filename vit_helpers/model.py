"""The Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929)."""
from __future__ import annotations

import torch
from torch import nn

from .block import AttentionBlock
from .config import ModelArgs
from .patching import ShiftedPatchTokenization, img_to_patch


class VisionTransformer(nn.Module):
    """Patches -> linear embedding -> [CLS] + positions -> blocks -> norm -> head on [CLS]."""

    def __init__(self, args: ModelArgs = ModelArgs()):
        super().__init__()
        self.args = args
        self.patch_size = args.patch_size
        if args.spt:  # Shifted Patch Tokenization (Lee et al., 2021): patches of the image and its diagonal shifts
            self.input_layer = ShiftedPatchTokenization(args.n_channels, args.patch_size, args.dim)
        else:
            self.input_layer = nn.Linear(args.n_channels * args.patch_size**2, args.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, args.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1 + args.n_patches, args.dim))
        self.dropout = nn.Dropout(args.dropout)
        # Stochastic depth grows linearly with depth (DeiT's rule): early blocks are kept more often.
        rates = [args.drop_path * i / max(1, args.n_layers - 1) for i in range(args.n_layers)]
        self.transformer = nn.ModuleList(AttentionBlock(args, rate) for rate in rates)
        self.norm = nn.LayerNorm(args.dim)  # the article's mlp[0]
        self.head = nn.Linear(args.dim, args.n_classes)  # the article's mlp[1]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small truncated-normal init as in ViT/timm; the article's N(0, 1) positions swamp the
        # patch embeddings (std ~0.6) at the start of training.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def check_input(self, x: torch.Tensor) -> None:
        a = self.args
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"expected floating-point images, got dtype {x.dtype}; convert uint8 images with "
                f"x.float() / 255 (and normalise) before the model"
            )
        weight_dtype = self.pos_embedding.dtype
        if x.dtype == torch.float64 and weight_dtype != torch.float64:
            raise TypeError(f"expected float32 images (the model's weights are {weight_dtype}), got "
                            f"dtype {x.dtype}; convert them with x.float() (or the model with model.double())")
        if x.dim() != 4:
            raise ValueError(f"expected images shaped (B, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        if x.shape[1] != a.n_channels:
            raise ValueError(f"expected {a.n_channels} channels (B, {a.n_channels}, H, W), got {x.shape[1]} in shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (a.image_size, a.image_size):
            raise ValueError(
                f"this model's positional embedding was built for {a.image_size}x{a.image_size} images "
                f"({a.n_patches} patches), got {x.shape[-2]}x{x.shape[-1]}; resize the images or build "
                f"the model with ModelArgs(image_size=...)"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> token sequence (B, 1+N, D) with [CLS] first and positions added."""
        self.check_input(x)
        if self.args.spt:
            x = self.input_layer(x)  # (B, C, H, W) -> (B, N, D)
        else:
            x = self.input_layer(img_to_patch(x, self.patch_size))  # (B, N, C*P*P) -> (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding  # (B, 1+N, D)
        if self.training and self.args.patch_dropout:
            x = self.drop_patches(x)  # (B, 1+K, D)
        return self.dropout(x)

    def drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """PatchDropout (Liu et al., 2022): keep a random args.kept_patches of each image's patch tokens, [CLS] first.

        Their positions are already added, so the blocks still know where each kept token came from; fewer tokens
        make a cheaper step. Training only: evaluation sees every patch."""
        B, T, D = x.shape
        keep = torch.rand(B, T - 1, device=x.device).argsort(dim=1)[:, : self.args.kept_patches] + 1  # (B, K), in 1..N
        return torch.cat([x[:, :1], x.gather(1, keep.unsqueeze(-1).expand(-1, -1, D))], dim=1)

    def forward_features(self, x: torch.Tensor, return_attn: bool = False):
        """Images -> normalised tokens (B, 1+N, D); with return_attn also a list of (B, H, 1+N, 1+N) per layer."""
        x = self.embed(x)
        maps = []
        for block in self.transformer:
            if return_attn:
                x, attn = block(x, return_attn=True)
                maps.append(attn)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, maps) if return_attn else x

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, 1+N, D) -> class logits (B, n_classes), read from [CLS]."""
        return self.head(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, n_classes: int) -> None:
        """A fresh classifier for a task with `n_classes` classes (the config follows)."""
        self.args = self.args.replace(n_classes=n_classes)
        self.head = nn.Linear(self.args.dim, n_classes, device=self.head.weight.device)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer's attention weights, stacked: (L, B, H, 1+N, 1+N). Token 0 is [CLS]."""
        _, maps = self.forward_features(x, return_attn=True)
        return torch.stack(maps)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_table(model: VisionTransformer) -> list[tuple[str, int]]:
    """Parameters per part of the model, in forward order."""
    parts = [
        ("patch embedding (input_layer)", model.input_layer),
        ("cls_token", model.cls_token),
        ("pos_embedding", model.pos_embedding),
        *[(f"block {i}", b) for i, b in enumerate(model.transformer)],
        ("final norm", model.norm),
        ("head", model.head),
    ]
    return [(name, p.numel() if isinstance(p, nn.Parameter) else count_parameters(p)) for name, p in parts]


def flops_per_image(args: ModelArgs, training: bool = False) -> int:
    """Forward-pass floating-point operations for one image (2 per multiply-add; matmuls only).

    Norms, softmax, GELU and additions are left out: they are under 1% of the total here.
    Training costs about three times this (forward, plus backward for inputs and weights).
    training=True counts the tokens a training step keeps (args.patch_dropout leaves some out after the embedding).
    """
    T = (args.kept_patches if training else args.n_patches) + 1
    D, Hd = args.dim, args.hidden_dim
    embed = 2 * args.n_patches * (args.n_channels * args.patch_size**2) * D * (5 if args.spt else 1)  # SPT: 5 images' pixels
    qkvo = 2 * T * D * D * 4
    scores_and_mix = 2 * T * T * D * 2  # Q K^T and attn @ V, summed over heads
    mlp = 2 * T * D * Hd * 2
    head = 2 * D * args.n_classes
    return embed + args.n_layers * (qkvo + scores_and_mix + mlp) + head
