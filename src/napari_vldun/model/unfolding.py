"""One proximal-gradient stage of VL-DUN: AMGDM (gradient step) + MDPMM (proximal map).

PGD on ``min_x 1/2 ||y - Phi x||^2 + lambda R(x)`` (Sec. 3.4.1) unrolled in feature space:

    v_k = z_{k-1} - rho_k * Phi^T (Phi z_{k-1} - y)      (AMGDM, Sec. 3.4.2 / App. E.1)
    z_k = prox(v_k)                                      (MDPMM, Eq. 4 / App. E.2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import GDFN, LayerNorm2d, PriorCrossAttention, band_split
from .ssm import BiMamba2d


@dataclass(frozen=True)
class StageSettings:
    """What every stage of one network shares (from :class:`~napari_vldun.model.config.VLDUNConfig`)."""

    prior_dim: int
    heads: int
    d_state: int
    headdim: int
    gdfn_expansion: float
    freq_decoupling: bool = True
    scaled_phi_t: bool = False

    @classmethod
    def from_config(cls, cfg) -> "StageSettings":
        return cls(cfg.prior_dim, cfg.attn_heads, cfg.d_state, cfg.headdim, cfg.gdfn_expansion,
                   cfg.freq_decoupling, cfg.scaled_phi_t)


@dataclass
class BandFeatures:
    """Feature maps of the last MDPMM block of a stage, (B, C, H, W) each (low band upsampled)."""

    low: torch.Tensor
    high: torch.Tensor


class ScaledAdjoint(nn.Module):
    """``Phi^T`` that is scale-equivariant in the residual: ``r -> s * f(r / s)``, ``s`` = RMS of ``r``
    over (C, H, W) per sample, ``f`` a Bi-Mamba without input norm. So ``Phi^T(0) = 0`` and
    ``Phi^T(a r) = a Phi^T(r)`` for ``a > 0``: the step shrinks as the data term is satisfied.
    (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, d_state: int, expand: float, headdim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.f = BiMamba2d(channels, d_state=d_state, expand=expand, headdim=headdim, input_norm=False)
        self.eps = eps

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        s = r.float().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().to(r.dtype)
        return s * self.f(r / (s + self.eps))


class AMGDM(nn.Module):
    """Attention-Mamba gradient descent module.

    ``Phi z`` is estimated as a 1x1 projection of z modulated by cross-attention to the
    vision-language prior tokens; the residual ``Phi z - y`` is carried back by a Bi-Mamba layer
    that plays ``Phi^T`` (:class:`ScaledAdjoint` with ``scaled_phi_t``); the step size ``rho`` is
    learned (kept positive by softplus). ``z``, ``y`` (B, C, H, W), ``tokens`` (B, T, P) -> (B, C, H, W).
    """

    def __init__(self, channels: int, expand: float, s: StageSettings) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.phi = nn.Conv2d(channels, channels, 1, bias=False)
        self.attn = PriorCrossAttention(channels, s.prior_dim, s.heads)
        self.phi_t = (ScaledAdjoint(channels, s.d_state, expand, s.headdim) if s.scaled_phi_t
                      else BiMamba2d(channels, d_state=s.d_state, expand=expand, headdim=s.headdim))
        self.rho = nn.Parameter(torch.tensor(-0.5))  # softplus(-0.5) ~ 0.47

    def forward(self, z: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = self.norm(z)
        phi_z = self.phi(n) + self.attn(n, tokens)
        grad = self.phi_t(phi_z - y)
        return z - F.softplus(self.rho) * grad


class MDPMM(nn.Module):
    """Mamba-GDFN proximal map with frequency decoupling (Eq. 4).

    Low band (2x2 AvgPool, processed at half resolution) -> GDFN; high band (x - low) -> Bi-Mamba;
    the two are fused by a 1x1 convolution and added to the input. With ``freq_decoupling=False``
    (paper's "w/o FD") both branches see the full-band input at full resolution.
    ``x`` (B, C, H, W), H and W even -> (B, C, H, W), plus the band features for the stage viewer.
    """

    def __init__(self, channels: int, expand: float, s: StageSettings) -> None:
        super().__init__()
        self.freq_decoupling = s.freq_decoupling
        self.norm = LayerNorm2d(channels)
        self.low = GDFN(channels, s.gdfn_expansion)
        self.high = BiMamba2d(channels, d_state=s.d_state, expand=expand, headdim=s.headdim)
        self.fuse = nn.Conv2d(2 * channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, BandFeatures]:
        n = self.norm(x)
        if self.freq_decoupling:
            low, high = band_split(n)
            low = F.interpolate(self.low(low), scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            low, high = self.low(n), n
        high = self.high(high)
        return x + self.fuse(torch.cat([low, high], dim=1)), BandFeatures(low=low, high=high)


class UnfoldingStage(nn.Module):
    """One unfolded PGD iteration: an AMGDM step followed by ``blocks`` MDPMM proximal blocks."""

    def __init__(self, channels: int, blocks: int, expand: float, s: StageSettings) -> None:
        super().__init__()
        self.gradient = AMGDM(channels, expand, s)
        self.prox = nn.ModuleList(MDPMM(channels, expand, s) for _ in range(blocks))

    def forward(self, z: torch.Tensor, y: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, BandFeatures]:
        z = self.gradient(z, y, tokens)
        bands = None
        for block in self.prox:
            z, bands = block(z)
        return z, bands
