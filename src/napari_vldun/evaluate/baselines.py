"""Classical baselines: zero-filled input and TV-regularised reconstruction with data consistency.

``tv_reconstruction`` solves ``min_x 1/2 ||M F x - k||^2 + lam ||grad x||_{2,1}`` (isotropic TV) with the
Chambolle-Pock primal-dual algorithm. ``M F`` is orthonormal-FFT sampling, so the data-term prox is
exact in k-space: ``x = F^-1[(F v + tau M k) / (1 + tau M)]``. It sees the complex measured k-space
(the acquired data), which the networks do not (they see the magnitude zero-filled image).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..degradation import fft2c, ifft2c, measure


def _grad(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary: (H, W) -> (2, H, W)."""
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[:, :-1] = x[:, 1:] - x[:, :-1]
    gy[:-1, :] = x[1:, :] - x[:-1, :]
    return torch.stack([gx, gy])


def _div(p: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of :func:`_grad`: (2, H, W) -> (H, W)."""
    px, py = p[0], p[1]
    dx = torch.zeros_like(px)
    dy = torch.zeros_like(py)
    dx[:, 0] = px[:, 0]
    dx[:, 1:-1] = px[:, 1:-1] - px[:, :-2]
    dx[:, -1] = -px[:, -2]
    dy[0, :] = py[0, :]
    dy[1:-1, :] = py[1:-1, :] - py[:-2, :]
    dy[-1, :] = -py[-2, :]
    return dx + dy


@torch.no_grad()
def tv_reconstruction(kspace: torch.Tensor, mask: torch.Tensor, lam: float = 0.01, iters: int = 150) -> np.ndarray:
    """TV reconstruction from measured centred k-space.

    ``kspace`` (H, W) complex (zeros where not sampled), ``mask`` (H, W) {0, 1}. Returns the magnitude
    (H, W) float32 (in the units of the image whose k-space was measured; clip as needed).
    """
    k = torch.as_tensor(kspace).to(torch.complex64)
    m = torch.as_tensor(mask, dtype=torch.float32)
    tau = sigma = 1.0 / math.sqrt(8.0)
    x = ifft2c(k * m)
    x_bar = x.clone()
    p = torch.zeros((2, *x.shape), dtype=x.dtype)
    for _ in range(iters):
        p = p + sigma * _grad(x_bar)
        norm = torch.sqrt((p.abs() ** 2).sum(0, keepdim=True)).clamp(min=lam)
        p = p * (lam / norm)  # project onto {|p|_2 <= lam} per pixel
        v = x + tau * _div(p)
        x_new = ifft2c((fft2c(v) + tau * m * k) / (1.0 + tau * m))
        x_bar = 2 * x_new - x
        x = x_new
    return x.abs().float().numpy()


def tv_from_image(clean: np.ndarray, mask: torch.Tensor, lam: float = 0.01, iters: int = 150) -> np.ndarray:
    """Simulate the measurement of ``clean`` (H, W) with ``mask`` and reconstruct it with TV, in [0, 1]."""
    k = measure(torch.as_tensor(clean, dtype=torch.float32), mask)
    return np.clip(tv_reconstruction(k, mask, lam, iters), 0.0, 1.0)
