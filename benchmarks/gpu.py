"""One prepared GPU check: the paper config at 256x256, with and without the mamba-ssm kernels.

Run on a CUDA machine (mamba-ssm optional: ``pip install "napari-vldun[cuda]"``):
    python benchmarks/gpu.py --json > gpu.json
Reports per-slice forward latency (batch 1, eval, no grad; fp32 and bf16 autocast), the peak
memory, the max difference between the two scan paths' outputs, and the time of one joint training step
(``--train-configs``, batch 8, crop 128, bf16 autocast, stage supervision, data consistency; synthetic images,
so the machine needs no data) with each scan path. The paper reports 58.72 ms
on its card (RTX Pro 6000); this script has not been run by the project yet (no GPU was lent).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from napari_vldun.model import build_model
from napari_vldun.model import ssm


def time_forward(model, y, repeats: int, dtype: torch.dtype | None) -> float:
    ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), ctx:
        for _ in range(3):
            model(y)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            model(y)
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1000


def time_train_step(config: str, batch: int, crop: int, repeats: int) -> float:
    """ms per joint training step (AdamW, bf16 autocast) on synthetic Cartesian-4x data."""
    from napari_vldun.degradation import cartesian_mask
    from napari_vldun.degradation.consistency import measure
    from napari_vldun.train.losses import JointLoss

    model = build_model(config, label_sets={"acdc": ["bg", "rv", "myo", "lv"]}).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = JointLoss(["acdc"], rec_weight=3.0, free_weight=1.0, stage_weight=0.5)
    clean = torch.rand(batch, 1, crop, crop, device="cuda")
    mask = cartesian_mask((crop, crop), 4, seed=0).mask.cuda()
    k = measure(clean, mask)
    y = torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").abs()
    b = {"clean": clean, "label": (clean[:, 0] * 3.99).long(), "has_label": torch.ones(batch, dtype=torch.bool),
         "label_set_index": torch.zeros(batch, dtype=torch.long)}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(y, return_stages=True, kspace=k, mask=mask)
        total = loss_fn(out, b)["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="paper")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--train-configs", nargs="*", default=["tiny", "paper"])
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-crop", type=int, default=128)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = build_model(a.config).cuda().eval()
    y = torch.rand(1, 1, a.size, a.size, device="cuda")
    rows = []
    outputs = {}
    paths = [("torch-chunked", False)] + ([("mamba-ssm", True)] if ssm.mamba_ssm_available() else [])
    for name, use_kernel in paths:
        with ssm.scan_backend("auto" if use_kernel else "torch"):
            with torch.no_grad():
                outputs[name] = model(y).restored.float()
            torch.cuda.reset_peak_memory_stats()
            fp32 = time_forward(model, y, a.repeats, None)
            bf16 = time_forward(model, y, a.repeats, torch.bfloat16)
            rows.append({"scan": name, "ms_fp32": round(fp32, 2), "ms_bf16": round(bf16, 2),
                         "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)})
    result = {"device": torch.cuda.get_device_name(), "config": a.config, "size": a.size,
              "mamba_ssm": ssm.mamba_ssm_available(), "rows": rows, "paper_ms": 58.72}
    if len(outputs) == 2:
        result["max_abs_diff"] = float((outputs["torch-chunked"] - outputs["mamba-ssm"]).abs().max())
    result["train_step_ms"] = {}
    for cfg in a.train_configs:
        for name, use_kernel in paths:
            with ssm.scan_backend("auto" if use_kernel else "torch"):
                ms = time_train_step(cfg, a.train_batch, a.train_crop, max(3, a.repeats // 4))
            result["train_step_ms"][f"{cfg}/{name}"] = round(ms, 2)
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
