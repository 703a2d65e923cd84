"""The heads on the unfolding network: segmentation (three variants) and the per-stage residual images.

* :class:`SegmentationHead` -- the paper's light CNN on the last stage (the first release).
* :class:`MultiScaleSegmentationHead` -- the last two decoder levels + the restored image (runs 10-17).
* :class:`SegmentationDecoder` -- a light top-down decoder over the last three levels (``seg_decoder_width``):
  a deviation for segmentation capacity, docs/architecture.md "Segmentation head".
* :class:`SegmentationUNet` -- a small U-Net on the restored image with the U's features added at their scales
  (``seg_unet_widths``): a deviation for capacity, docs/architecture.md "Segmentation head".
* :class:`GroupedSegmentationHeads` -- one head of the above per group of label sets (``seg_head_groups``), so
  that training one anatomy's classes does not move another's.
* :class:`StageImageHead` -- a stage's residual image (``stage_images`` configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import UNetTrunk, conv_norm_act

__all__ = ["GroupedSegmentationHeads", "SegmentationHead", "MultiScaleSegmentationHead", "SegmentationDecoder",
           "SegmentationUNet", "StageImageHead"]


def _classifiers(width: int, label_sets: dict[str, list[str]]) -> nn.ModuleDict:
    return nn.ModuleDict({name: nn.Conv2d(width, len(names), 1) for name, names in label_sets.items()})


class SegmentationHead(nn.Module):
    """Light CNN on the last stage's features and the restored image: two 3x3 conv + ReLU, then one
    1x1 classifier per label set. (B, C + 1, H, W) -> {name: (B, n_classes, H, W)}."""

    def __init__(self, in_channels: int, width: int, label_sets: dict[str, list[str]]) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.classifiers = _classifiers(width, label_sets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {name: head(h) for name, head in self.classifiers.items()}


class MultiScaleSegmentationHead(nn.Module):
    """Light CNN on the last two decoder levels' features (1x1 lateral convs, upsampled bilinearly) plus a
    3x3 conv of the restored image, summed, then two 3x3 conv + ReLU and one 1x1 classifier per label set.
    ``z0`` (B, C0, h0, w0), ``z1`` (B, C1, h1, w1), ``image`` (B, 1, H, W) -> {name: (B, n_classes, H, W)}."""

    def __init__(self, channels: tuple[int, int], in_channels: int, width: int,
                 label_sets: dict[str, list[str]]) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.image = nn.Conv2d(in_channels, width, 3, padding=1)
        self.trunk = nn.Sequential(
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.classifiers = _classifiers(width, label_sets)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        size = image.shape[-2:]
        h = self.image(image)
        for lat, z in zip(self.lateral, (z0, z1)):
            h = h + F.interpolate(lat(z), size=size, mode="bilinear", align_corners=False)
        h = self.trunk(h)
        return {name: head(h) for name, head in self.classifiers.items()}


class SegmentationDecoder(nn.Module):
    """A light top-down decoder (FPN-like) over the last three U levels and the restored image.

    ``feats`` [z0 (B, C0, h, w), z1 (B, C1, h/2, w/2), z2 (B, C2, h/4, w/4)] -- the refinement stage, the
    decoder stage above it and the one above that (or the bottleneck) -- and ``image`` (B, 1, H, W) with
    H = ``patch`` * h -> {name: (B, n_classes, H, W)}. Level 2 -> 1 -> 0: 1x1 laterals summed into the
    upsampled path, one conv-norm-act block at h/2 and two at h (where the image joins, pixel-unshuffled);
    then at H: the path (1x1 to ``width // 2``, upsampled) plus a 3x3 conv of the image, one 3x3 conv and a
    1x1 classifier per label set. ~0.5 GMAC at 256x256 for width 32 and patch 2.
    """

    takes_pyramid = True

    def __init__(self, channels: tuple[int, int, int], in_channels: int, patch: int, width: int,
                 label_sets: dict[str, list[str]]) -> None:
        super().__init__()
        self.patch = int(patch)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.mid = conv_norm_act(width, width)
        self.image_low = nn.Conv2d(in_channels * self.patch**2, width, 3, padding=1)
        self.low = nn.Sequential(conv_norm_act(width, width), conv_norm_act(width, width))
        half = max(width // 2, 1)
        self.to_full = nn.Conv2d(width, half, 1)
        self.image = nn.Conv2d(in_channels, half, 3, padding=1)
        self.full = nn.Sequential(nn.LeakyReLU(0.01), nn.Conv2d(half, half, 3, padding=1),
                                  nn.LeakyReLU(0.01, inplace=True))
        self.classifiers = _classifiers(half, label_sets)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        z0, z1, z2 = feats[0], feats[min(1, len(feats) - 1)], feats[min(2, len(feats) - 1)]
        t = self.lateral[2](z2)
        t = F.interpolate(t, size=z1.shape[-2:], mode="bilinear", align_corners=False) + self.lateral[1](z1)
        t = self.mid(t)
        low_image = F.pixel_unshuffle(image, self.patch) if self.patch > 1 else image
        t = (F.interpolate(t, size=z0.shape[-2:], mode="bilinear", align_corners=False) + self.lateral[0](z0)
             + self.image_low(low_image))
        t = self.to_full(self.low(t))
        if self.patch > 1:
            t = F.interpolate(t, size=image.shape[-2:], mode="bilinear", align_corners=False)
        h = self.full(t + self.image(image))
        return {name: head(h) for name, head in self.classifiers.items()}


class SegmentationUNet(UNetTrunk):
    """A small U-Net (:class:`~napari_vldun.model.blocks.UNetTrunk`, the plain U-Net baseline's trunk) on the
    restored image, with the unfolding U's features added where the resolutions meet.

    ``feats`` [z0 (B, C0, H/p, W/p), z1 (B, C1, H/2p, ...), ...] (the refinement stage, then the decoder stages
    and the bottleneck, as :meth:`VLDUN.unfold_images` returns them; p = ``patch``) and ``image`` (B, 1, H, W),
    H a multiple of 2^(len(widths) - 1) -> {name: (B, n_classes, H, W)}. U level j joins the head's encoder at
    level i = log2(p) + j through a zero-initialised 1x1 lateral, so a fresh head starts as a plain U-Net on the
    restored image and learns how much of the unfolding features to use. (16, 32, 64, 128): 0.63 M parameters,
    2.5 GMAC at 256x256 (the plain U-Net baseline's shape and cost).
    """

    takes_pyramid = True

    def __init__(self, widths: tuple[int, ...], feat_channels: tuple[int, ...], patch: int, in_channels: int,
                 label_sets: dict[str, list[str]]) -> None:
        if len(widths) < 2:
            raise ValueError(f"seg_unet_widths needs at least two levels, got {tuple(widths)}")
        super().__init__(tuple(widths), in_channels)
        w = list(widths)
        offset = int(patch).bit_length() - 1  # log2(patch)
        #: head encoder level -> U level whose features join there
        self.joins = {offset + j: j for j in range(len(feat_channels)) if offset + j < len(w)}
        self.lateral = nn.ModuleDict({str(i): nn.Conv2d(feat_channels[j], w[i], 1) for i, j in self.joins.items()})
        for conv in self.lateral.values():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.classifiers = _classifiers(w[0], label_sets)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(image, {i: self.lateral[str(i)](feats[j]) for i, j in self.joins.items()})
        return {name: head(z) for name, head in self.classifiers.items()}


class GroupedSegmentationHeads(nn.Module):
    """Segmentation heads of one kind, each for its own group of label sets, called alike: the same inputs ->
    the union of their ``{name: (B, n_classes, H, W)}``. The decoder is shared within a group only, so that
    fine-tuning one group (``train_only: ["seg_head.heads.1"]``) leaves the others' outputs exactly as they
    were (runs 22-24: a decoder shared by ACDC and BraTS gained on one and lost on the other)."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.takes_pyramid = bool(getattr(heads[0], "takes_pyramid", False))

    def forward(self, *inputs) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for head in self.heads:
            out.update(head(*inputs))
        return out


class StageImageHead(nn.Module):
    """A stage's residual image: 1x1 conv to ``patch**2`` channels, PixelShuffle(patch), bilinear upsampling
    by ``scale`` (the level's factor) to the padded input's size. (B, C, h, w) -> (B, 1, h * patch * scale, ...)."""

    def __init__(self, channels: int, patch: int, scale: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, patch * patch, 1)
        self.patch, self.scale = patch, scale
        nn.init.zeros_(self.proj.weight)  # training starts from x_k = y: every stage adds nothing yet
        nn.init.zeros_(self.proj.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._upsample(self.proj(z))

    def band(self, t: torch.Tensor) -> torch.Tensor:
        """The same linear map (no bias) on band features, for the stage viewer."""
        return self._upsample(F.conv2d(t, self.proj.weight))

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(x, self.patch) if self.patch > 1 else x
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
        return x
