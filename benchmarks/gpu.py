"""One prepared GPU check: the paper config at 256x256, with and without the mamba-ssm kernels.

Run on a CUDA machine (mamba-ssm optional: ``pip install "napari-vldun[cuda]"``):
    python benchmarks/gpu.py --json > gpu.json
Reports per-slice forward latency (batch 1, eval, no grad; fp32 and bf16 autocast), the peak
memory, and the max difference between the two scan paths' outputs. The paper reports 58.72 ms
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="paper")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
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
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
