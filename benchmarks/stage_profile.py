"""Where do the stage estimates stop refining? Mean PSNR of every stage estimate and, per transition, the share
of slices whose PSNR falls there (by more than 0.01 dB, as `vldun evaluate`'s "stages monotone").

    python benchmarks/stage_profile.py [--dataset acdc] [--max-slices 12] [--accel 4] [--weights PATH]
    python benchmarks/stage_profile.py --dataset covid_ct --split train --max-slices 10 --crop 160
    python benchmarks/stage_profile.py --dataset covid_ct --max-slices 10 --pass-step 3 1 0.5
    python benchmarks/stage_profile.py --sample ct          # a bundled sample with its recorded k-space

Runs the model with the simulated measurement (k-space, the checkpoint's passes; seed = slice index) and
without it (magnitude only, one pass), 1 thread. ``--split train`` profiles training slices, ``--crop N`` their
centre N x N crops (what training sees), ``--pass-step PASS STAGE VALUE`` sets one shared per-pass step size
(1-based; a diagnostic of what a smaller step would do). ``--sample`` profiles a bundled sample's slices with its
recorded k-space instead of a dataset. Prints the stage levels / passes and one row per input.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def _crop(img: np.ndarray, n: int | None) -> np.ndarray:
    if not n:
        return img
    h, w = img.shape
    c = min(n, h, w)
    i, j = (h - c) // 2, (w - c) // 2
    return img[i:i + c, j:j + c]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="acdc")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--max-slices", type=int, default=12)
    p.add_argument("--crop", type=int, default=None, help="centre crop of each slice (px)")
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--weights", default=None)
    p.add_argument("--pass-step", nargs=3, metavar=("PASS", "STAGE", "VALUE"), default=None)
    p.add_argument("--sample", default=None, help="a bundled sample (acdc, brain, ct) instead of --dataset")
    a = p.parse_args()
    if a.crop is not None and a.crop < 8:
        p.error(f"--crop must be >= 8 px, got {a.crop}")
    torch.set_num_threads(1)
    from napari_vldun.degradation.measurement import Measurement
    from napari_vldun.evaluate.runner import dataset_cases
    from napari_vldun.inference import load_model, predict
    from napari_vldun.metrics import psnr

    loaded = load_model(a.weights, device="cpu")
    if a.pass_step is not None:
        steps = loaded.model.pass_steps
        if steps is None:
            p.error("--pass-step: this checkpoint has no per-pass step sizes (pass_step_sizes 0)")
        table = steps.data.view(-1, len(loaded.model.stage_heads))
        try:
            ps, st, value = int(a.pass_step[0]), int(a.pass_step[1]), float(a.pass_step[2])
        except ValueError:
            p.error(f"--pass-step takes PASS STAGE VALUE (integers, a number), got {' '.join(a.pass_step)}")
        if not (1 <= ps <= table.shape[0] and 1 <= st <= table.shape[1]):
            p.error(f"--pass-step: pass must be 1..{table.shape[0]} and stage 1..{table.shape[1]}, got {ps} {st}")
        table[ps - 1, st - 1] = value
    if a.sample:
        from napari_vldun.pipeline import list_samples, sample_measurement

        samples = list_samples()
        if a.sample not in samples:
            p.error(f"--sample {a.sample!r} unknown; choose from {sorted(samples)}")
        import nibabel as nib

        s = samples[a.sample]
        degraded, clean = (nib.load(f"{s['dir']}/{n}.nii.gz").get_fdata(dtype=np.float32).transpose(2, 1, 0)
                           for n in ("degraded", "clean"))  # (X, Y, Z) files -> (Z, H, W)
        meas = sample_measurement(a.sample)
        inputs = [(clean[z], degraded[z], meas.slice(z)) for z in range(clean.shape[0])]
    else:
        inputs = []
        for j, case in enumerate(dataset_cases([a.dataset], None, a.max_slices, split=a.split)):
            clean = _crop(case.clean, a.crop)
            degraded, meas = Measurement.simulate(clean, case.mask_kind, a.accel, seed=j)
            inputs.append((clean, degraded, meas))
    rows: dict[str, list] = {"k-space": [], "magnitude only": []}
    info = {}
    for clean, degraded, meas in inputs:
        for key, kw in (("k-space", {"measurement": meas}), ("magnitude only", {})):
            pred = predict(loaded, degraded, return_stages=True, **kw)
            rows[key].append([psnr(np.clip(s, 0, 1), clean) for s in pred.stages[0, :, 0]])
            info[key] = (pred.stage_levels, pred.stage_passes)
    for key, v in rows.items():
        v = np.asarray(v)
        d = np.diff(v, axis=1)
        levels, passes = info[key]
        print(f"{key} ({len(v)} slices; stage levels {levels}, passes {passes})")
        print("  mean stage PSNR (dB):", " ".join(f"{x:.2f}" for x in v.mean(0)))
        print("  share falling at each transition:", " ".join(f"{x:.2f}" for x in (d < -0.01).mean(0)))
        print(f"  monotone (no fall anywhere): {(d.min(1) >= -0.01).mean():.2f}; first -> last estimate "
              f"{v[:, 0].mean():.2f} -> {v[:, -1].mean():.2f} dB")


if __name__ == "__main__":
    main()
