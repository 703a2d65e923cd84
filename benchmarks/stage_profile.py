"""Where do the stage estimates stop refining? Mean PSNR of every stage estimate and, per transition, the share
of validation slices whose PSNR falls there (by more than 0.01 dB, as `vldun evaluate`'s "stages monotone").

    python benchmarks/stage_profile.py [--dataset acdc] [--max-slices 12] [--accel 4] [--weights PATH]

Runs the model with the simulated measurement (k-space, the checkpoint's passes) and without it (magnitude
only, one pass), 1 thread. Prints the stage levels / passes and one row per input.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="acdc")
    p.add_argument("--max-slices", type=int, default=12)
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--weights", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    from napari_vldun.degradation.measurement import Measurement
    from napari_vldun.evaluate.runner import dataset_cases
    from napari_vldun.inference import load_model, predict
    from napari_vldun.metrics import psnr

    loaded = load_model(a.weights, device="cpu")
    rows: dict[str, list] = {"k-space": [], "magnitude only": []}
    info = {}
    for j, case in enumerate(dataset_cases([a.dataset], None, a.max_slices)):
        degraded, meas = Measurement.simulate(case.clean, case.mask_kind, a.accel, seed=j)
        for key, kw in (("k-space", {"measurement": meas}), ("magnitude only", {})):
            pred = predict(loaded, degraded, return_stages=True, **kw)
            rows[key].append([psnr(np.clip(s, 0, 1), case.clean) for s in pred.stages[0, :, 0]])
            info[key] = (pred.stage_levels, pred.stage_passes)
    for key, v in rows.items():
        v = np.asarray(v)
        falls = (np.diff(v, axis=1) < -0.01).mean(0)
        levels, passes = info[key]
        print(f"{key} ({len(v)} slices; stage levels {levels}, passes {passes})")
        print("  mean stage PSNR (dB):", " ".join(f"{x:.2f}" for x in v.mean(0)))
        print("  share falling at each transition:", " ".join(f"{x:.2f}" for x in falls))


if __name__ == "__main__":
    main()
