"""mae_core: MAE pretraining and the framework-agnostic ViT backbone. Imports neither Detectron2
nor MMSegmentation; the `detection` and `segmentation` packages adapt it to them."""

from .mae import MaskedAutoencoder, create_mae, patchify, unpatchify
from .vit import VIT_ARCHS, VisionTransformer, get_arch

__all__ = [
    "VIT_ARCHS",
    "MaskedAutoencoder",
    "VisionTransformer",
    "create_mae",
    "get_arch",
    "patchify",
    "unpatchify",
]
