"""Benchmark the chunked SSD scan against the sequential reference (CPU, 1 thread).

Times forward + backward (``y.sum().backward()``) for batch 1, 4 heads x headdim 16
(d_inner 64), d_state 16, float32.

    python benchmarks/scan.py                  # readable table
    python benchmarks/scan.py --json           # JSON list only
    python benchmarks/scan.py --tune           # fast path per chunk size, no reference
    python benchmarks/scan.py --against HEAD~1 # the Bi-Mamba mixer of this tree vs that git revision's

``--against REV`` loads ``src/napari_vldun/model/ssm.py`` as it was at ``REV`` (``git show``) next to the
current one and times their ``BiMamba2d`` with the same weights, interleaved in one process: inference under
bf16 autocast and in fp32 on a (1, ``--dim``, ``--size``, ``--size``) channels-last map (the paper config's
full-resolution mixer by default), and a bf16 training step (forward + backward) on a batch of 4 at half the
size. Prints each time, the speed-up and the largest output difference.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Optional

import torch

from napari_vldun.model.ssm import DEFAULT_CHUNK_SIZE, ssd_scan_chunked, ssd_scan_reference

HEADS, HEADDIM, D_STATE = 4, 16, 16


def make_inputs(L: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random float32 inputs with Mamba-2-like magnitudes (dt log-uniform in [1e-3, 1e-1])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, L, HEADS, HEADDIM, generator=g)
    dt = torch.exp(torch.empty(1, L, HEADS).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    A = -torch.empty(HEADS).uniform_(1.0, 16.0, generator=g)
    B = torch.randn(1, L, D_STATE, generator=g)
    C = torch.randn(1, L, D_STATE, generator=g)
    D = torch.ones(HEADS)
    return x, dt, A, B, C, D


def time_fwd_bwd(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                 repeats: int = 1) -> tuple[float, torch.Tensor]:
    """Best wall time of ``fn(*inputs).sum().backward()`` over ``repeats``; also the output."""
    best, out = math.inf, None
    for _ in range(repeats):
        ins = [t.detach().clone().requires_grad_() for t in inputs]
        t0 = time.perf_counter()
        y = fn(*ins)
        y.sum().backward()
        best = min(best, time.perf_counter() - t0)
        out = y.detach()
    assert out is not None
    return best, out


def run(lengths: list[int], max_reference_L: int, chunk_size: int, repeats: int) -> list[dict]:
    rows: list[dict] = []
    last_ref: Optional[tuple[int, float]] = None
    for L in lengths:
        inputs = make_inputs(L)
        fast = lambda *a: ssd_scan_chunked(*a, chunk_size=chunk_size)  # noqa: E731
        time_fwd_bwd(fast, make_inputs(min(L, 1024)))  # warm-up
        fast_s, y_fast = time_fwd_bwd(fast, inputs, repeats)
        row: dict = {"L": L, "reference_s": None, "fast_s": fast_s, "speedup": None,
                     "max_rel_err": None}
        if L <= max_reference_L:
            ref_s, y_ref = time_fwd_bwd(ssd_scan_reference, inputs)
            row["reference_s"] = ref_s
            row["max_rel_err"] = ((y_fast - y_ref).abs().max() / y_ref.abs().max()).item()
            last_ref = (L, ref_s)
        else:
            row["reference_extrapolated"] = True
            if last_ref is not None:
                row["reference_s"] = last_ref[1] * L / last_ref[0]
        if row["reference_s"] is not None:
            row["speedup"] = row["reference_s"] / fast_s
        rows.append(row)
    return rows


def tune(lengths: list[int], chunk_sizes: list[int], repeats: int) -> None:
    print(f"{'L':>7} " + " ".join(f"{'Q=' + str(q):>9}" for q in chunk_sizes) + "   (fast fwd+bwd, s)")
    for L in lengths:
        inputs = make_inputs(L)
        ts = []
        for q in chunk_sizes:
            fn = lambda *a, q=q: ssd_scan_chunked(*a, chunk_size=q)  # noqa: E731
            time_fwd_bwd(fn, make_inputs(min(L, 1024)))
            ts.append(time_fwd_bwd(fn, inputs, repeats)[0])
        print(f"{L:>7} " + " ".join(f"{t:>9.4f}" for t in ts), flush=True)


def _ssm_at(rev: str) -> types.ModuleType:
    """``napari_vldun.model.ssm`` as it was at git revision ``rev`` (it imports only torch)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:src/napari_vldun/model/ssm.py"],
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"ssm_at_{rev}")
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"ssm.py@{rev}", "exec"), mod.__dict__)
    return mod


def _best_interleaved(call: Callable[[str, torch.nn.Module], None], old: torch.nn.Module,
                      new: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` timed ``call(name, module)`` per module, old and new alternating, after a warm-up
    round: ``{"old_s": ..., "new_s": ...}``."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats + 1):
        for name, m in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            call(name, m)
            times[name].append(time.perf_counter() - t0)
    return {f"{name}_s": min(ts[1:]) for name, ts in times.items()}


def against(rev: str, dim: int, size: int, repeats: int) -> list[dict]:
    """Time this tree's ``BiMamba2d`` against ``rev``'s, interleaved (see the module docstring)."""
    from napari_vldun.model import ssm as current
    old_mod = _ssm_at(rev)
    torch.manual_seed(0)
    new = current.BiMamba2d(dim, expand=2)
    old = old_mod.BiMamba2d(dim, expand=2)
    old.load_state_dict(new.state_dict())
    rows = []
    x = torch.randn(1, dim, size, size).contiguous(memory_format=torch.channels_last)
    for prec in ("bf16", "fp32"):
        outs = {}

        def infer(name: str, m: torch.nn.Module) -> None:
            outs[name] = m(x).float()

        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            best = _best_interleaved(infer, old, new, repeats)
        rows.append({"what": f"inference {prec}, 1x{dim}x{size}x{size}", **best,
                     "max_abs_diff": (outs["old"] - outs["new"]).abs().max().item()})
    xs = torch.randn(4, dim, size // 2, size // 2).contiguous(memory_format=torch.channels_last)

    def train_step(name: str, m: torch.nn.Module) -> None:
        m(xs.clone().requires_grad_()).float().square().mean().backward()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        best = _best_interleaved(train_step, old, new, repeats)
    rows.append({"what": f"train fwd+bwd bf16, 4x{dim}x{size // 2}x{size // 2}", **best, "max_abs_diff": None})
    for r in rows:
        r["speedup"] = r["old_s"] / r["new_s"]
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print only a JSON list")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--max-reference-L", type=int, default=65536,
                    help="longer sequences extrapolate the reference time linearly")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    ap.add_argument("--repeats", type=int, default=3, help="fast path: best of N runs")
    ap.add_argument("--tune", action="store_true", help="time the fast path per chunk size only")
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", metavar="REV", help="time the Bi-Mamba mixer against this git revision's")
    ap.add_argument("--dim", type=int, default=64, help="--against: channels of the mixer")
    ap.add_argument("--size", type=int, default=256, help="--against: image side (inference)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.against:
        rows = against(args.against, args.dim, args.size, args.repeats)
        if args.json:
            print(json.dumps(rows))
            return
        print(f"BiMamba2d(dim={args.dim}, expand=2), {args.against} (old) vs this tree (new), "
              f"threads={args.threads}, best of {args.repeats} interleaved")
        for r in rows:
            diff = f", max |diff| {r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else ""
            print(f"  {r['what']:<34} old {r['old_s']:.3f} s  new {r['new_s']:.3f} s  "
                  f"{r['speedup']:.2f}x{diff}")
        return

    if args.tune:
        tune(args.lengths, args.chunk_sizes, args.repeats)
        return
    rows = run(args.lengths, args.max_reference_L, args.chunk_size, args.repeats)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"chunk_size={args.chunk_size}, threads={args.threads}, fwd+bwd, float32, "
          f"b=1 h={HEADS} p={HEADDIM} n={D_STATE}")
    print(f"{'L':>7} {'reference_s':>12} {'fast_s':>9} {'speedup':>8} {'max_rel_err':>12}")
    for r in rows:
        ref = f"{r['reference_s']:.2f}" + ("*" if r.get("reference_extrapolated") else "") \
            if r["reference_s"] is not None else "-"
        sp = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        err = f"{r['max_rel_err']:.2e}" if r["max_rel_err"] is not None else "-"
        print(f"{r['L']:>7} {ref:>12} {r['fast_s']:>9.4f} {sp:>8} {err:>12}")
    if any(r.get("reference_extrapolated") for r in rows):
        print("* extrapolated linearly from the longest measured reference")


if __name__ == "__main__":
    main()
