"""Where the stages stop refining: mean PSNR of every stage (and pass) estimate on validation slices.

    python benchmarks/stages.py --weights training/run13/last training/run12/last --slices 12 --cascades 3 --threads 1

For each checkpoint, the first ``--slices`` ACDC validation slices (as ``vldun evaluate --max-slices``), Cartesian
4x (seed 0, as ``vldun evaluate``), restored with their k-space over ``--cascades`` passes with every stage's
estimate; prints the mean PSNR (dB, [0, 1] images) per stage in order (pass by pass) and, per step from one stage to
the next, the share of slices whose PSNR falls by more than 0.01 dB (the tolerance of the "stages monotone" figure
of ``vldun evaluate``). ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from napari_vldun.degradation.measurement import Measurement
from napari_vldun.metrics import psnr
from napari_vldun.evaluate.runner import dataset_cases
from napari_vldun.inference import load_model, predict


def stage_curve(weights: str, slices: int, cascades: int, accel: float = 4.0) -> dict:
    loaded = load_model(weights, device="cpu")
    curves = []
    for case in dataset_cases(["acdc"], max_slices=slices):
        zf, meas = Measurement.simulate(case.clean, case.mask_kind, accel, seed=0)
        p = predict(loaded, zf, measurement=meas, cascades=cascades, return_stages=True)
        curves.append([psnr(np.clip(s, 0, 1), case.clean) for s in p.stages[0, :, 0]])
    c = np.array(curves)
    return {"weights": weights, "slices": len(c), "cascades": cascades, "stage_passes": p.stage_passes,
            "mean_psnr": [round(float(v), 3) for v in c.mean(0)],
            "share_falling": [round(float(v), 3) for v in (np.diff(c, axis=1) < -0.01).mean(0)],
            "monotone": round(float((np.diff(c, axis=1) >= -0.01).all(1).mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--cascades", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [stage_curve(w, args.slices, args.cascades) for w in args.weights]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print(f"{r['weights']}: {r['slices']} slices, {r['cascades']} passes, monotone {100 * r['monotone']:.1f} %")
        print("  mean PSNR per stage:  " + " ".join(f"{v:.2f}" for v in r["mean_psnr"]))
        print("  share falling (step): " + " ".join(f"{v:.2f}" for v in r["share_falling"]))


if __name__ == "__main__":
    main()
