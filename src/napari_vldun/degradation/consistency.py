"""Known-operator data consistency: project a real image estimate onto measured k-space.

The forward model is ``k = M . F(x)`` with a real image ``x`` (the simulated acquisitions of this
package). A real image has a Hermitian spectrum, ``F(x)(-f) = conj(F(x)(f))``, so a sample at ``f``
also fixes ``-f``: the measurement determines ``F(x)`` on the mirrored support ``S = M or M(-f)``.
Data consistency replaces the estimate's spectrum there:

    x_dc = F^-1((1 - S) . F(x) + S . k_S),   k_S(f) = mean of k(f) and conj(k(-f)) where sampled

which is the orthogonal projection of a real ``x`` onto the real images consistent with the
measurement. The true image lies in that set, so for noise-free data ``||x_dc - x_true|| <=
||x - x_true||``: data consistency never makes an estimate worse, is idempotent, and is the identity
for an all-zero mask (nothing measured).
"""

from __future__ import annotations

import torch

from .fft import fft2c, ifft2c

__all__ = ["measure", "data_consistency", "mirror"]


def measure(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Simulated measurement ``M . F(x)``: ``x`` (..., H, W) real image, ``mask`` (..., H, W)
    {0, 1} (broadcast) -> complex64 centred k-space of ``x``'s shape (zeros where not sampled)."""
    x = torch.as_tensor(x)
    mask = torch.as_tensor(mask, dtype=torch.float32, device=x.device)
    return fft2c(x.to(torch.complex64)) * mask


def reflect(t: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Reflection about the centred origin along ``dims`` of (..., H, W): index ``i -> (2 (N // 2) - i) mod N``.

    In this package's centred convention (:mod:`~napari_vldun.degradation.fft`) it commutes with the FFT:
    ``fft2c(reflect(x, d)) == reflect(fft2c(x), d)``, so an image, its k-space and its mask reflected alike stay
    one measurement (for test-time flips). An involution; ``dims=()`` returns ``t``."""
    for d in dims:
        n = t.shape[d]
        t = t.index_select(d, (2 * (n // 2) - torch.arange(n, device=t.device)) % n)
    return t


def mirror(t: torch.Tensor) -> torch.Tensor:
    """``t(-f)`` for centred k-space arrays (..., H, W): :func:`reflect` along both axes."""
    return reflect(t, (-2, -1))


def data_consistency(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Projection of the real estimate ``x`` onto the real images consistent with ``kspace`` (see the
    module docstring), differentiable in ``x``.

    ``x`` (B, C, H, W) real; ``kspace`` complex, ``mask`` real {0, 1}, both broadcastable to ``x``
    (values of ``kspace`` outside the mask are ignored). Returns a real tensor of ``x``'s shape and dtype.
    """
    if kspace.shape[-2:] != x.shape[-2:] or mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"k-space {tuple(kspace.shape)} / mask {tuple(mask.shape)} do not match the image "
                         f"{tuple(x.shape)} in their last two dimensions")
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    m = (mask.to(device=x.device) > 0).to(x.dtype)
    k = kspace.to(device=x.device, dtype=cdtype) * m
    m_r = mirror(m)
    support = torch.maximum(m, m_r)
    k_sym = (k + mirror(k).conj()) / (m + m_r).clamp(min=1)
    kx = fft2c(x.to(cdtype))
    return ifft2c(kx + support * (k_sym - kx)).real.to(x.dtype)
