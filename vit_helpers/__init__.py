"""vit_helpers: the pieces of a Vision Transformer built from scratch, one home each.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021 (arXiv:2010.11929). The notebooks in `notebooks/` build each piece step by step.
"""
from .attention import MultiHeadAttention
from .block import AttentionBlock
from .config import MODEL_PRESETS, ModelArgs, model_preset
from .model import VisionTransformer, count_parameters, flops_per_image, parameter_table
from .patching import img_to_patch, patch_to_img

__all__ = [
    "ModelArgs", "MODEL_PRESETS", "model_preset", "img_to_patch", "patch_to_img", "MultiHeadAttention",
    "AttentionBlock", "VisionTransformer", "count_parameters", "parameter_table", "flops_per_image",
]
__version__ = "0.1.0"
