"""Parameters, MACs and CPU latency of the named configs for one 1x1xSxS slice, against this CPU's floor.

    python benchmarks/model.py --json                 # tiny, tiny_v1 and paper, 256x256, 1 thread, fp32 + bf16
    python benchmarks/model.py --configs tiny --size 256 --repeats 5
    python benchmarks/model.py --configs shipped      # the packaged checkpoint (its config and weights)
    python benchmarks/model.py --configs shipped --profile 12   # where the forward's time goes
    python benchmarks/model.py --configs tiny --cascades 3     # with k-space: 3 passes + data consistency
    python benchmarks/model.py --configs shipped tiny --layouts nhwc nchw   # channels-last vs the old NCHW path
    python benchmarks/model.py --configs tiny shipped --layouts nhwc compiled   # eager vs --compile
    python benchmarks/model.py --configs paper paper:headdim=32   # a config with fields overridden (JSON values)

Latency is the median of ``--repeats`` timed forward passes (no grad, eval mode, CLIP included) after one
warm-up pass; ``torch.set_num_threads(--threads)``. The floor is the forward's MACs as
``torch.utils.flop_counter.FlopCounterMode`` counts them (FLOPs / 2, the prior tower included) divided by the
fp32 sgemm rate (2048^3) measured in the same process just before: ``ratio = latency / floor_s``. With
``--cascades N`` the model is given a Cartesian 4x measurement and runs N passes, each with data consistency.
``--layouts``: the model's own channels-last weights (``nhwc``, what the package runs) and/or the same weights
made NCHW-contiguous (``nchw``, the path before channels-last), timed interleaved (one call of each in turn);
``compiled`` is the package's ``--compile`` path (:func:`napari_vldun.model.compiled.compiled_copy`; its first
call, which compiles, is the warm-up and is not timed). A layout other than ``nhwc`` is keyed ``fp32/nchw``,
``bf16/compiled`` etc. in the JSON rows. The sgemm rate is the mean of one
measurement before and one after a precision's timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_vldun.model import build_model
from napari_vldun.model.complexity import model_info
from napari_vldun.model.precision import autocast


def sgemm_gmacs(n: int = 2048, repeats: int = 3) -> float:
    """fp32 matrix-multiply rate of this process, GMAC/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _model(config: str) -> torch.nn.Module:
    """A named config, ``shipped`` (the packaged checkpoint) or ``NAME:key=value,...`` (a named config with
    fields overridden, values as JSON, e.g. ``paper:headdim=16``)."""
    if ":" in config:
        name, _, sets = config.partition(":")
        try:
            overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in sets.split(","))}
        except ValueError:
            raise SystemExit(f"--configs {config!r}: write overrides as NAME:key=value,... with JSON values, "
                             f"e.g. paper:headdim=16") from None
        return build_model(name, **overrides).eval()
    if config == "shipped":  # the packaged checkpoint: its config (segmentation decoder, classes) and weights
        from napari_vldun.inference import load_model
        return load_model(device="cpu").model.eval()
    return build_model(config).eval()


def profile(config: str, size: int, rows: int) -> str:
    """torch.profiler's table of the ``rows`` operators with the most self CPU time over 3 forwards."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile

    model, y = _model(config), torch.rand(1, 1, size, size)
    with torch.no_grad():
        model(y)
        with run_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(y)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def to_layout(model: torch.nn.Module, layout: str) -> torch.nn.Module:
    """``model`` with its 4-D weights channels-last (``"nhwc"``, the package's layout) or NCHW-contiguous
    (``"nchw"``, the path before 2026-12-03), in place; ``"compiled"``: a compiled NCHW copy (the ``--compile``
    path). Shared by the benchmarks that time them."""
    if layout == "compiled":
        from napari_vldun.model.compiled import compiled_copy

        return compiled_copy(model)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    return model.to(memory_format=fmt)


def measure(config: str, size: int, repeats: int, cascades: int | None, precisions: list[str],
            layouts: tuple[str, ...] = ("nhwc",)) -> dict:
    from napari_vldun.degradation import cartesian_mask
    from napari_vldun.degradation.consistency import measure as acquire

    model = _model(config)
    info = {**model_info(model, (256, 256)), "config": config}
    y = torch.rand(1, 1, size, size)
    kw = {}
    if cascades:
        mask = cartesian_mask((size, size), 4, seed=0).mask
        kw = {"kspace": acquire(y, mask), "mask": mask, "cascades": cascades}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(y, **kw)
    macs = fc.get_total_flops() / 2
    info.update({"latency_size": size, "flop_counter_gmacs": round(macs / 1e9, 3), "repeats": repeats,
                 "cascades": cascades or 0})
    models = {lay: to_layout(copy.deepcopy(model) if i else model, lay) for i, lay in enumerate(layouts)}
    for prec in precisions:
        rate = sgemm_gmacs()
        times: dict[str, list[float]] = {lay: [] for lay in layouts}
        with torch.no_grad(), autocast("cpu", prec):
            for m in models.values():
                m(y, **kw)
            for _ in range(repeats):  # layouts interleaved, so that load changes hit them alike
                for lay, m in models.items():
                    times[lay].append(_timed(lambda m=m: m(y, **kw)))
        rate = (rate + sgemm_gmacs()) / 2  # the rate before and after the timings
        floor = macs / (rate * 1e9)
        for lay in layouts:
            t = statistics.median(times[lay])
            key = prec if lay == "nhwc" else f"{prec}/{lay}"
            info[key] = {"latency_s_median": round(t, 4), "latency_s_min": round(min(times[lay]), 4),
                         "sgemm_gmacs_per_s": round(rate, 1), "floor_s": round(floor, 4),
                         "ratio": round(t / floor, 2)}
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "tiny_v1", "paper"],
                   help="config names, or 'shipped' for the packaged checkpoint")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--cascades", type=int, default=None, help="time N passes with k-space and data consistency")
    p.add_argument("--layouts", nargs="+", default=["nhwc"], choices=["nhwc", "nchw", "compiled"],
                   help="weight layouts to time: channels-last (the package's), NCHW (the old path), and/or the "
                        "torch.compile'd NCHW copy (--compile)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: the N operators with the most self CPU time over 3 fp32 forwards")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.profile:
        for c in a.configs:
            print(f"{c}, {a.size}x{a.size}, {a.threads} thread(s)\n" + profile(c, a.size, a.profile))
        return
    rows = [measure(c, a.size, a.repeats, a.cascades, a.precisions, tuple(a.layouts)) for c in a.configs]
    env = {"threads": a.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if a.json:
        print(json.dumps({"env": env, "rows": rows}))
        return
    print(f"threads={a.threads} torch={torch.__version__} size={a.size}")
    for r in rows:
        keys = [pr if lay == "nhwc" else f"{pr}/{lay}" for pr in a.precisions for lay in a.layouts]
        cells = "  ".join(f"{k}: {r[k]['latency_s_median']:.3f} s = {r[k]['ratio']:.1f}x floor "
                          f"({r[k]['floor_s']:.3f} s at {r[k]['sgemm_gmacs_per_s']} GMAC/s)" for k in keys)
        print(f"{r['config']:8} {r['params_m']:>6} M  {r['flop_counter_gmacs']:>7} GMAC  {cells}")


if __name__ == "__main__":
    main()
