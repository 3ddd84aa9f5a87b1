"""A small convolutional network for CIFAR-10: the teacher for distillation, and the "basic CNN" the article compares with.

The layout is ResNet-9 from Myrtle.ai's "How to train your ResNet" (D. Page, 2018; the DAWNBench CIFAR-10 winner),
with the stage order of K. Jordan's airbench (arXiv:2404.00498): a 3x3 convolution-BatchNorm-GELU stem, then stages
of convolution -> 2x2 max-pool -> BatchNorm -> GELU, some followed by a residual pair of convolutions, then a global
max-pool and a linear head whose logits are scaled down.

Why it learns CIFAR-10 from 45,000 images where a ViT of the same size struggles: its inductive bias. A convolution
looks only at a 3x3 neighbourhood (locality) and applies the same weights at every position (translation
equivariance); pooling adds a little translation invariance. A ViT compares every patch with every other from the
first layer and must learn both properties from data. DeiT (Touvron et al., 2021, arXiv:2012.12877) hands this bias
to a ViT by distillation from a CNN teacher (notebook 09; `TrainConfig.distill`).

The weights are kept channels-last (N, H, W, C in memory), the layout tensor-core convolutions run fastest in.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import CNNArgs, ModelArgs


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias: the BatchNorm after it has one), BatchNorm, GELU; keeps H and W."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


class Stage(nn.Module):
    """Convolution, max-pool (halves H and W), BatchNorm, GELU; then, if `residual`, x + two more conv_bn layers."""

    def __init__(self, c_in: int, c_out: int, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)  # pooling before the norm: BatchNorm and GELU then run on a quarter of the pixels
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()
        self.residual = nn.Sequential(conv_bn(c_out, c_out), conv_bn(c_out, c_out)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.pool(self.conv(x))))  # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        return x if self.residual is None else x + self.residual(x)


class ConvNet(nn.Module):
    """ResNet-9-style CNN; takes the same normalised (B, C, H, W) images as the ViT, any H, W divisible by 2**stages."""

    def __init__(self, args: CNNArgs = CNNArgs()):
        super().__init__()
        self.args = args
        self.stem = conv_bn(args.n_channels, args.stem_width)
        widths = (args.stem_width, *args.widths)
        self.stages = nn.Sequential(*[Stage(a, b, r) for a, b, r in zip(widths, widths[1:], args.residual)])
        self.head = nn.Linear(widths[-1], args.n_classes, bias=False)
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # the layout the weights are in (a no-op if it is already)
        x = self.stages(self.stem(x))  # (B, C, H, W) -> (B, D, H / 2**stages, W / 2**stages)
        return x.amax(dim=(2, 3))  # global max-pool: (B, D)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.args.logit_scale  # (B, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(args: ModelArgs | CNNArgs) -> nn.Module:
    """The model a recipe's config describes: a VisionTransformer for ModelArgs, a ConvNet for CNNArgs."""
    from .model import VisionTransformer

    return ConvNet(args) if isinstance(args, CNNArgs) else VisionTransformer(args)
