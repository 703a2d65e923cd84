"""A plain 2-D U-Net: the segmentation baseline VL-DUN is compared with (issue: "vs a plain U-Net").

nnU-Net's 2-D shape at a CPU budget: per level two 3x3 conv -> InstanceNorm -> LeakyReLU, strided-conv
down, transposed-conv up, skip concatenation, one 1x1 classifier. It segments the degraded image directly
(no restoration). Checkpoints: ``NAME.safetensors`` + ``NAME.json`` with ``{"kind": "unet", ...}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io.atomic import write_json
from .blocks import UNetTrunk
from .config import LABEL_SETS
from .checkpoint import atomic_write

__all__ = ["UNetConfig", "UNet", "save_unet", "load_unet"]


@dataclass
class UNetConfig:
    widths: tuple = (16, 32, 64, 128)
    #: label set name -> class names (background first); one head, the first label set's.
    label_set: str = "acdc"
    classes: list = field(default_factory=lambda: list(LABEL_SETS["acdc"]))


class UNet(UNetTrunk):
    """(B, 1, H, W) in [0, 1] -> logits (B, n_classes, H, W); any H, W (padded to a multiple of 2^levels)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__(tuple(cfg.widths), 1)
        self.cfg = cfg
        self.head = nn.Conv2d(cfg.widths[0], len(cfg.classes), 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        m = 2 ** (len(self.cfg.widths) - 1)
        ph, pw = (-h) % m, (-w) % m
        z = F.pad(y, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate") if ph or pw else y
        return self.head(self.trunk(z))[..., :h, :w]


def save_unet(model: UNet, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``path.safetensors`` + ``path.json`` (atomic, strict JSON)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(state, tmp))
    write_json(path.with_suffix(".json"), {"kind": "unet", "config": asdict(model.cfg), "meta": meta or {}},
               overwrite=True)
    return path


def load_unet(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Load a :func:`save_unet` checkpoint; ValueError when ``path.json`` is not a U-Net's."""
    from safetensors.torch import load_file

    path = Path(path)
    cpath = path.with_suffix(".json")
    if not cpath.is_file():
        raise ValueError(f"U-Net checkpoint {cpath} not found")
    doc = json.loads(cpath.read_text())
    if doc.get("kind") != "unet":
        raise ValueError(f"{cpath} is not a U-Net checkpoint (kind {doc.get('kind')!r})")
    c = doc["config"]
    model = UNet(UNetConfig(tuple(c["widths"]), c["label_set"], list(c["classes"])))
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    return model.to(device).eval(), doc.get("meta", {})
