"""Tiled inference: peak memory and time per slice size, and how close tiled is to whole-slice inference.

    python benchmarks/tiling.py --json                       # shipped weights, 1 thread, 512..4096 px
    python benchmarks/tiling.py --weights training/run10/best --sizes 512 1024 2048 4096

Each size runs in its own subprocess (peak RSS = ``ru_maxrss`` of that process, after one warm-up on a
small slice): one synthetic-texture slice (a real ACDC slice tiled by reflection) restored + segmented
without k-space, tiled automatically above ~1 Mpx (:mod:`napari_vldun.tiling`, tiles of 512 px, 64 px
overlap). ``--seams`` also compares tiles of 256 px with whole-slice inference on a 512 x 512 slice,
with and without k-space: PSNR of tiled vs untiled, share of equal labels, and the RMS difference within 8 px
of the inner tile borders vs elsewhere (a visible seam would make the first larger).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def slice_of(n: int) -> np.ndarray:
    from napari_vldun.data.sources import volume_slices

    _, vol, _, _ = next(iter(volume_slices("acdc", "val")))
    clean = vol[vol.shape[0] // 2].astype(np.float32)
    reps = (-(-n // clean.shape[0]) + 1, -(-n // clean.shape[1]) + 1)
    big = np.block([[clean if (i + j) % 2 == 0 else clean[::-1, ::-1] for j in range(reps[1])] for i in range(reps[0])])
    return np.ascontiguousarray(big[:n, :n])


def one_size(weights: str | None, n: int, threads: int) -> dict:
    import torch

    from napari_vldun.inference import load_model, predict
    from napari_vldun.tiling import choose_tile, plan_tiles

    torch.set_num_threads(threads)
    loaded = load_model(weights, "cpu")
    img = slice_of(n)
    predict(loaded, img[:128, :128])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    p = predict(loaded, img)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tile = choose_tile(img.shape, None)
    return {"size": n, "tile": tile, "tiles": plan_tiles(img.shape, tile).n_tiles if tile else 1,
            "seconds": round(dt, 2), "us_per_px": round(dt / n / n * 1e6, 3), "peak_rss_mb": round(peak),
            "rss_before_mb": round(base), "finite": bool(np.isfinite(p.restored).all())}


def seams(weights: str | None, threads: int) -> list[dict]:
    import torch

    from napari_vldun.degradation import acquire
    from napari_vldun.metrics import psnr
    from napari_vldun.inference import load_model, predict
    from napari_vldun.tiling import plan_tiles

    torch.set_num_threads(threads)
    loaded = load_model(weights, "cpu")
    img = slice_of(512)
    band = np.zeros((512, 512), bool)  # 8 px either side of every inner tile border
    for i, _ in plan_tiles((512, 512), 256).origins:
        for b in (i, i + 256):
            if 0 < b < 512:
                band[max(0, b - 8):b + 8, :] = True
                band[:, max(0, b - 8):b + 8] = True
    deg, ks, acq = acquire(img, "cartesian", 4.0, seed=0)
    deg = np.asarray(deg, np.float32)
    rows = []
    for name, kw in (("magnitude only", {}), ("with k-space", {"kspace": ks[None], "mask": np.asarray(acq.mask)})):
        whole = predict(loaded, deg, tile=0, **kw)
        tiled = predict(loaded, deg, tile=256, **kw)
        err = np.abs(tiled.restored[0] - whole.restored[0])
        rows.append({"case": name, "tile": 256, "psnr_tiled_vs_whole": round(psnr(tiled.restored[0], whole.restored[0]), 2),
                     "rms_diff_near_tile_borders": round(float(np.sqrt((err[band] ** 2).mean())), 5),
                     "rms_diff_elsewhere": round(float(np.sqrt((err[~band] ** 2).mean())), 5),
                     "labels_equal": round(float((tiled.labels == whole.labels).mean()), 4),
                     "psnr_vs_clean_whole": round(psnr(whole.restored[0], img), 2),
                     "psnr_vs_clean_tiled": round(psnr(tiled.restored[0], img), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seams", action="store_true", help="also compare tiled with whole-slice inference")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_one", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._one is not None:
        print(json.dumps(one_size(a.weights, a._one, a.threads)))
        return
    rows = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--_one", str(n), "--threads", str(a.threads)]
        cmd += ["--weights", a.weights] if a.weights else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        if not a.json:
            r = rows[-1]
            print(f"{n:5d} px: {r['tiles']:4d} tile(s) of {r['tile'] or n}, {r['seconds']:8.1f} s, "
                  f"{r['us_per_px']:.2f} us/px, peak RSS {r['peak_rss_mb']} MB", flush=True)
    result = {"threads": a.threads, "weights": a.weights or "shipped", "sizes": rows}
    if a.seams:
        result["seams"] = seams(a.weights, a.threads)
        if not a.json:
            for r in result["seams"]:
                print(r)
    if a.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
