"""Bidirectional Mamba-2 style (SSD, scalar decay per head) state-space layer.

Scan maths (per head ``h``, state ``S`` of shape (p, n))::

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t (outer) B_t
    y_t = S_t @ C_t + D * x_t

``ssd_scan_reference`` is a sequential loop (ground truth), ``ssd_scan_chunked`` the
pure-PyTorch chunked "state space duality" form, ``selective_scan`` dispatches to the
``mamba_ssm`` Triton kernel on CUDA when that optional package is installed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ssd_scan_reference",
    "ssd_scan_chunked",
    "selective_scan",
    "mamba_ssm_available",
    "scan_backend",
    "BiMamba",
    "BiMamba2d",
    "DEFAULT_CHUNK_SIZE",
    "CUDA_CHUNK_SIZE",
]

#: Fastest chunk length measured for the pure-PyTorch path on CPU (benchmarks/scan.py).
DEFAULT_CHUNK_SIZE = 32
#: Chunk length used on CUDA when none is given (Mamba-2's default for its kernels).
CUDA_CHUNK_SIZE = 256


def ssd_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor] = None) -> Tensor:
    """Sequential scan over time (slow ground truth).

    x (b, l, h, p); dt (b, l, h) > 0; A (h,) < 0; B, C (b, l, n); D (h,) or None.
    Returns y (b, l, h, p).
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    S = x.new_zeros(b, h, p, n)
    decay, dtx = torch.exp(dt * A), dt[..., None] * x                  # (b, l, h), (b, l, h, p)
    ys = []
    # blocks of unbind'ed steps: x[:, t] (or one l-way unbind/stack) makes autograd's
    # backward O(l^2); a two-level split keeps it linear.
    for blk in zip(*(t.split(256, dim=1) for t in (decay, dtx, B, C))):
        out = []
        for dA, dtx_t, Bt, Ct in zip(*(t.unbind(1) for t in blk)):
            S = dA[:, :, None, None] * S + dtx_t[..., None] * Bt[:, None, None, :]  # (b, h, p, n)
            out.append((S * Ct[:, None, None, :]).sum(-1))              # (b, h, p)
        ys.append(torch.stack(out, dim=1))
    y = torch.cat(ys, dim=1)
    if D is not None:
        y = y + D[:, None] * x
    return y


class _SegsumExp(torch.autograd.Function):
    """``L[..., i, j] = exp(cs_i - cs_j)`` for i >= j, else 0. cs (..., Q) -> (..., Q, Q).

    The upper triangle is set to -inf *before* the exp, so only exponents <= 0 (cs is a
    cumsum of non-positive terms) are ever evaluated. Hand-written backward
    ``dcs = rowsum(G*L) - colsum(G*L)`` saves several Q x Q temporaries vs autograd.
    """

    @staticmethod
    def forward(ctx, cs: Tensor) -> Tensor:  # type: ignore[override]
        Q = cs.shape[-1]
        upper = torch.ones(Q, Q, dtype=torch.bool, device=cs.device).triu(1)
        L = torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill_(upper, -math.inf))
        ctx.save_for_backward(L)
        return L

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (L,) = ctx.saved_tensors
        P = grad * L
        return P.sum(-1) - P.sum(-2)


class _DecayGram(torch.autograd.Function):
    """``M = L(cs) * G``: the in-chunk decay mask of :class:`_SegsumExp` times the Gram matrix ``G = C B^T``.

    cs (..., h, Q); G (..., 1, Q, Q), shared by the h heads -> M (..., h, Q, Q). One function instead of a
    mask and a broadcast product saves a Q x Q product and two temporaries in the backward:
    ``dG = sum_h g * L``, ``dcs = rowsum(g * M) - colsum(g * M)``.
    """

    @staticmethod
    def forward(ctx, cs: Tensor, G: Tensor) -> Tensor:  # type: ignore[override]
        Q = cs.shape[-1]
        upper = torch.ones(Q, Q, dtype=torch.bool, device=cs.device).triu(1)
        L = (cs[..., :, None] - cs[..., None, :]).masked_fill_(upper, -math.inf).exp_()
        ctx.save_for_backward(L, G)
        return L * G

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        L, G = ctx.saved_tensors
        gL = grad * L
        dG = gL.sum(-3, keepdim=True)
        P = gL.mul_(G)
        return P.sum(-1) - P.sum(-2), dG


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    Placed on the outputs of the scan's batched matmuls: their gradients arrive through transposes, and a
    CPU ``bmm`` on a non-contiguous batch falls back to one small GEMM per matrix (~10x slower at Q = 32;
    ``benchmarks/scan.py``)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


_contiguous_grad = _ContiguousGrad.apply


_SCAN_BLOCK = 32


def _decay_scan(g: Tensor, u: Tensor) -> Tensor:
    """Inclusive scan ``T_k = exp(g_k) T_{k-1} + u_k`` along dim 1 (chunk states).

    g (b, c, h) log-decays (<= 0); u (b, c, h, m). Returns T (b, c, h, m). Same SSD
    idea one level up: blocks of ``_SCAN_BLOCK`` use a decay-matrix matmul, block end
    states are scanned recursively (depth log_32 c), all exponents are <= 0.
    """
    b, c, h, m = u.shape
    K = _SCAN_BLOCK
    if c <= K:
        Lm = _SegsumExp.apply(torch.cumsum(g, 1).transpose(1, 2))       # (b, h, c, c)
        return (Lm @ u.transpose(1, 2)).transpose(1, 2)
    pad = (-c) % K
    if pad:
        g, u = F.pad(g, (0, 0, 0, pad)), F.pad(u, (0, 0, 0, 0, 0, pad))
    G = (c + pad) // K
    cs = torch.cumsum(g.view(b, G, K, h).transpose(2, 3), -1)           # (b, G, h, K)
    T = _SegsumExp.apply(cs) @ u.view(b, G, K, h, m).transpose(2, 3)    # (b, G, h, K, m)
    ends = _decay_scan(cs[..., -1], T[:, :, :, -1])                     # (b, G, h, m)
    carry = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], 1)  # entering each block
    T = T + torch.exp(cs)[..., None] * carry[:, :, :, None]
    return T.transpose(2, 3).reshape(b, G * K, h, m)[:, :c]


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Optional[Tensor] = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Chunked SSD scan, same maths/shapes as :func:`ssd_scan_reference`; differentiable.

    Within a chunk of length Q the output is a masked "attention" ``(L o C B^T) (dt x)``
    with ``L_ij = exp(cs_i - cs_j)`` for i >= j (cs = cumsum of dt*A inside the chunk).
    Chunk end-states are passed between chunks with :func:`_decay_scan`. Half/bfloat16
    inputs are upcast to float32 (cumulative sums, exponentials, masks) and the result cast back; under
    autocast the batched matmuls still run in bf16 (faster here than float32 at the shipped sizes; bf16 and
    fp32 training agree within 0.2 dB, BENCHMARKS.md "bf16 vs fp32 training" and "Selective scan").
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    out_dtype = x.dtype
    cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    Q = int(chunk_size)
    pad = (-l) % Q
    if pad:  # dt = 0 and x = 0 on padding: identity decay, no input -> no effect
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    c = (l + pad) // Q
    # layout (b, c, h, Q, .): heads next to chunks keeps broadcasts over h cheap on CPU
    dth = dt.view(b, c, Q, h).transpose(2, 3)                           # (b, c, h, Q)
    cs = torch.cumsum(dth * A[:, None], dim=-1)                         # (b, c, h, Q), <= 0
    xdt = (x.view(b, c, Q, h, p).transpose(2, 3) * dth[..., None]).contiguous()  # (b,c,h,Q,p)
    Bc = B.view(b, c, 1, Q, n)
    Cc = C.view(b, c, 1, Q, n)

    # 1) intra-chunk (diagonal blocks)
    cg = _contiguous_grad
    M = _DecayGram.apply(cs, cg(Cc @ Bc.transpose(-1, -2)))             # (b, c, h, Q, Q)
    y = cg(M @ xdt)                                                     # (b, c, h, Q, p)

    # 2) state at the end of every chunk from that chunk's inputs only
    w = torch.exp(cs[..., -1:] - cs)                                    # (b, c, h, Q)
    states = cg((xdt * w[..., None]).transpose(-1, -2) @ Bc)            # (b, c, h, p, n)

    # 3) pass states between chunks, 4) read them out with the in-chunk decay
    ends = _decay_scan(cs[..., -1], states.reshape(b, c, h, p * n))     # (b, c, h, p*n)
    S_in = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], 1).view(b, c, h, p, n)
    y = y + cg(Cc @ S_in.transpose(-1, -2)) * torch.exp(cs)[..., None]

    y = y.transpose(2, 3).reshape(b, c * Q, h, p)[:, :l]
    if D is not None:
        y = y + D.to(cdt)[:, None] * x[:, :l]
    return y.to(out_dtype)


@lru_cache(maxsize=1)
def _mamba_chunk_scan() -> Optional[Callable[..., Tensor]]:
    try:  # optional CUDA dependency; never let its absence (or breakage) break imports
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001
        return None
    return mamba_chunk_scan_combined


_BACKEND = {"name": "auto"}


@contextmanager
def scan_backend(name: str) -> Iterator[None]:
    """Force the scan backend inside a ``with`` block: ``"auto"`` (mamba-ssm on CUDA when installed)
    or ``"torch"`` (always the pure-PyTorch chunked scan). Used by ``benchmarks/gpu.py``."""
    if name not in ("auto", "torch"):
        raise ValueError(f"scan backend must be 'auto' or 'torch', got {name!r}")
    old, _BACKEND["name"] = _BACKEND["name"], name
    try:
        yield
    finally:
        _BACKEND["name"] = old


def mamba_ssm_available() -> bool:
    """True if ``mamba_ssm``'s Triton SSD kernel can be imported."""
    return _mamba_chunk_scan() is not None


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, chunk_size: Optional[int] = None) -> Tensor:
    """Dispatch: ``mamba_ssm`` kernel for CUDA tensors if installed, else chunked PyTorch.

    Shapes as :func:`ssd_scan_reference`; dt must already be positive (no bias/softplus).
    ``chunk_size=None`` picks the backend default: 256 on CUDA, ``DEFAULT_CHUNK_SIZE`` on CPU.
    """
    if chunk_size is None:
        chunk_size = CUDA_CHUNK_SIZE if x.is_cuda else DEFAULT_CHUNK_SIZE
    if x.is_cuda and _BACKEND["name"] == "auto":
        kernel = _mamba_chunk_scan()
        if kernel is not None:
            return kernel(x.contiguous(), dt.contiguous(), A, B.unsqueeze(2).contiguous(),
                          C.unsqueeze(2).contiguous(), chunk_size, D=D)
    return ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=chunk_size)


class _GatedRMSNorm(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Direction(nn.Module):
    """One scan direction: depthwise causal conv + SiLU and its own A_log, dt_bias, D."""

    def __init__(self, conv_dim: int, nheads: int, d_conv: int,
                 dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(1.0, 16.0)))
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(nheads))
        for prm in (self.A_log, self.D):
            prm._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, xBC: Tensor, dt_raw: Tensor, sizes: tuple[int, int, int, int],
                chunk_size: Optional[int]) -> Tensor:
        """xBC (B, L, conv_dim), dt_raw (B, L, nheads) -> y (B, L, d_inner)."""
        d_inner, d_state, nheads, headdim = sizes
        bsz, L, _ = xBC.shape
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2).contiguous())
        x, Bm, Cm = torch.split(xBC, [d_inner, d_state, d_state], dim=-1)
        dt = F.softplus(dt_raw + self.dt_bias)
        A = -torch.exp(self.A_log)
        y = selective_scan(x.reshape(bsz, L, nheads, headdim), dt, A, Bm, Cm, self.D,
                           chunk_size=chunk_size)
        return y.reshape(bsz, L, d_inner)


class BiMamba(nn.Module):
    """Bidirectional Mamba-2 (SSD) mixer: (B, L, dim) -> (B, L, dim).

    ``in_proj`` -> z, xBC, dt; forward and (flipped) backward directions each run a
    depthwise causal conv + selective scan; ``out_proj(norm((y_f + y_b) * silu(z)))``.
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2, headdim: int = 16,
                 d_conv: int = 4, chunk_size: Optional[int] = None) -> None:
        super().__init__()
        d_inner = int(expand * dim)
        d_inner = -(-d_inner // headdim) * headdim  # round up to a multiple of headdim
        self.dim, self.d_state, self.headdim, self.chunk_size = dim, d_state, headdim, chunk_size
        self.d_inner, self.nheads = d_inner, d_inner // headdim
        conv_dim = d_inner + 2 * d_state
        self.in_proj = nn.Linear(dim, 2 * d_inner + 2 * d_state + self.nheads, bias=False)
        self.fwd = _Direction(conv_dim, self.nheads, d_conv)
        self.bwd = _Direction(conv_dim, self.nheads, d_conv)
        self.norm = _GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        """u (B, L, dim) -> (B, L, dim)."""
        z, xBC, dt_raw = torch.split(
            self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        sizes = (self.d_inner, self.d_state, self.nheads, self.headdim)
        y_f = self.fwd(xBC, dt_raw, sizes, self.chunk_size)
        y_b = self.bwd(xBC.flip(1), dt_raw.flip(1), sizes, self.chunk_size).flip(1)
        return self.out_proj(self.norm(y_f + y_b, z))

    def scan_flops(self, batch: int, length: int) -> int:
        """Analytic FLOPs of the two selective scans only (projections/conv excluded).

        Per direction and per (token, channel, state) element: 3 for the state update
        (decay multiply, add, dt*x*B outer product) + 2 for the C readout (mul+add), i.e.
        ``2 * 5 * batch * length * d_inner * d_state``.
        """
        return 2 * 5 * batch * length * self.d_inner * self.d_state


class BiMamba2d(nn.Module):
    """Image wrapper: (B, C, H, W) -> row-major tokens -> LayerNorm (``input_norm``) -> BiMamba -> (B, C, H, W).

    No residual connection (the caller adds it).
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2, headdim: int = 16,
                 d_conv: int = 4, chunk_size: Optional[int] = None, input_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if input_norm else nn.Identity()
        self.mamba = BiMamba(dim, d_state, expand, headdim, d_conv, chunk_size)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)                                # (B, H*W, C)
        t = self.mamba(self.norm(t))
        return t.transpose(1, 2).reshape(b, c, h, w)

    def scan_flops(self, batch: int, height: int, width: int) -> int:
        """FLOPs of the selective scans for an (height x width) image, see BiMamba."""
        return self.mamba.scan_flops(batch, height * width)
