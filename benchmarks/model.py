"""Parameters, MACs and CPU latency of the named configs for one 1x1xSxS slice.

    python benchmarks/model.py --json                 # tiny and paper, 256x256, 1 thread
    python benchmarks/model.py --configs tiny --size 256 --repeats 5
    python benchmarks/model.py --configs tiny --cascades 3     # with k-space: 3 passes + data consistency
Latency is the median of ``--repeats`` timed forward passes (no grad, eval mode, CLIP included)
after one warm-up pass; ``torch.set_num_threads(--threads)``. With ``--cascades N`` the model is given a
Cartesian 4x measurement and runs N passes, each with data consistency.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from napari_vldun.model import build_model
from napari_vldun.model.complexity import model_info


def measure(config: str, size: int, repeats: int, cascades: int | None = None) -> dict:
    from napari_vldun.degradation import cartesian_mask, measure as acquire

    model = build_model(config).eval()
    info = model_info(model, (256, 256))
    y = torch.rand(1, 1, size, size)
    kw = {}
    if cascades:
        mask = cartesian_mask((size, size), 4, seed=0).mask
        kw = {"kspace": acquire(y, mask), "mask": mask, "cascades": cascades}
    times = []
    with torch.no_grad():
        model(y, **kw)
        for _ in range(repeats):
            t = time.perf_counter()
            model(y, **kw)
            times.append(time.perf_counter() - t)
    info.update({"latency_size": size, "latency_s_median": round(statistics.median(times), 4),
                 "latency_s_min": round(min(times), 4), "repeats": repeats, "cascades": cascades or 0})
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cascades", type=int, default=None, help="time N passes with k-space and data consistency")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [measure(c, a.size, a.repeats, a.cascades) for c in a.configs]
    env = {"threads": a.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if a.json:
        print(json.dumps({"env": env, "rows": rows}))
        return
    print(f"threads={a.threads} torch={torch.__version__}")
    print(f"{'config':8} {'params (M)':>10} {'GMAC':>8} {'GFLOPs':>8} {'scan GFLOPs':>12} {'CPU s/slice':>12}")
    for r in rows:
        print(f"{r['config']:8} {r['params_m']:>10} {r['gmacs_256']:>8} {r['gflops_256']:>8} "
              f"{r['scan_gflops_256']:>12} {r['latency_s_median']:>12}")


if __name__ == "__main__":
    main()
