"""VL-DUN model: configs, priors, unfolding stages, Bi-Mamba scan. Imports no Qt."""

from .config import CONFIGS, DEGRADATIONS, PAPER_MODALITIES, ClipConfig, VLDUNConfig, get_config
from .vldun import VLDUN, StageMaps, VLDUNOutput, build_model

__all__ = [
    "CONFIGS", "DEGRADATIONS", "PAPER_MODALITIES", "ClipConfig", "VLDUNConfig", "get_config",
    "VLDUN", "StageMaps", "VLDUNOutput", "build_model",
]
