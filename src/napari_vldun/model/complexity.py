"""Parameter and multiply-accumulate counts, counted the way the paper's Table 5 peers come out right.

MACs of convolutions, linear layers and attention matmuls (QK^T and AV) are counted from forward
hooks; ``gflops = 2 * gmacs``. The selective scans' own FLOPs are counted apart (analytic formula
in :meth:`BiMamba.scan_flops`). Element-wise ops, norms and pooling are not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import PriorCrossAttention
from .ssm import BiMamba


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, size: tuple[int, int] = (256, 256), exclude: tuple[nn.Module, ...] = ()) -> dict:
    """Run one (1, C, H, W) input and return ``{"macs", "scan_flops"}`` (integers).

    Modules inside any of ``exclude`` (e.g. the CLIP encoder) are left out.
    """
    skip = {id(m) for ex in exclude for m in ex.modules()}
    totals = {"macs": 0, "scan_flops": 0}

    def conv_hook(m: nn.Conv2d | nn.Conv1d, inp, out) -> None:
        k = m.weight[0].numel()  # in_channels/groups * prod(kernel)
        totals["macs"] += out.numel() * k

    def linear_hook(m: nn.Linear, inp, out) -> None:
        totals["macs"] += out.numel() * m.in_features

    def attn_hook(m: PriorCrossAttention, inp, out) -> None:
        b, h, nq, nk, d = m.last_attn_shape
        totals["macs"] += 2 * b * h * nq * nk * d

    def scan_hook(m: BiMamba, inp, out) -> None:
        b, length = inp[0].shape[:2]
        totals["scan_flops"] += m.scan_flops(b, length)

    hooks = []
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, PriorCrossAttention):
            hooks.append(m.register_forward_hook(attn_hook))
        elif isinstance(m, BiMamba):
            hooks.append(m.register_forward_hook(scan_hook))
    try:
        was_training = model.training
        model.eval()
        p = next(model.parameters())
        cin = getattr(getattr(model, "cfg", None), "in_channels", 1)
        model(torch.rand(1, cin, *size, device=p.device, dtype=p.dtype))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return totals


def model_info(model: nn.Module, size: tuple[int, int] = (256, 256)) -> dict:
    """Summary used by ``vldun info``: parameters (without / with the CLIP visual encoder) and
    GMACs / GFLOPs at ``size`` for the unfolding network (CLIP excluded, as in the paper's count)."""
    clip = getattr(getattr(model, "priors", None), "visual", None)
    excl = (clip,) if clip is not None else ()
    counts = count_macs(model, size, excl)
    clip_params = count_parameters(clip) if clip is not None else 0
    total = count_parameters(model)
    return {
        "config": getattr(getattr(model, "cfg", None), "name", "custom"),
        "params": total - clip_params,
        "params_m": round((total - clip_params) / 1e6, 3),
        "clip_visual_params": clip_params,
        "params_total": total,
        "input": [1, 1, *size],
        "gmacs_256": round(counts["macs"] / 1e9, 3),
        "gflops_256": round(2 * counts["macs"] / 1e9, 3),
        "scan_gflops_256": round(counts["scan_flops"] / 1e9, 3),
    }
