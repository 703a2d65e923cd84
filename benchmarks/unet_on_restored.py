"""Restore-then-segment, measured before it is built: a plain U-Net baseline (``vldun train-unet``) segmenting the
zero-filled image, VL-DUN's restored image (with the measured k-space) and the clean image, on every ACDC validation
slice at Cartesian ``--accel`` (the same seeded masks as ``vldun evaluate``: seed = slice counter). Mean Dice over
RV / myocardium / LV per slice, VL-DUN's network argmax not involved.

    python benchmarks/unet_on_restored.py --unet training/unet33/unet [--weights W] [--accel 4] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_vldun.data.sources import volume_slices
from napari_vldun.degradation.measurement import Measurement
from napari_vldun.inference import load_model, predict
from napari_vldun.metrics import dice
from napari_vldun.model.unet import load_unet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", required=True, help="U-Net checkpoint prefix (OUT/unet of `vldun train-unet`)")
    p.add_argument("--weights", default=None, help="VL-DUN checkpoint (default: the shipped one)")
    p.add_argument("--accel", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    loaded = load_model(a.weights, "cpu")
    unet = load_unet(a.unet, torch.device("cpu"))[0].eval()

    def seg(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return unet(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None]).argmax(1)[0].numpy()

    rows: dict[str, list[float]] = {"zero-filled": [], "VL-DUN restored (k-space)": [], "clean": []}
    i = 0
    for _, img, lab, _ in volume_slices("acdc", "val"):
        for z in range(img.shape[0]):
            x = np.clip(img[z].astype(np.float32), 0, 1)
            zf, meas = Measurement.simulate(x, "cartesian", a.accel, seed=i)
            i += 1
            restored = np.squeeze(predict(loaded, zf, label_set="acdc", measurement=meas, postprocess=False).restored)
            for name, inp in zip(rows, (zf, restored, x)):
                rows[name].append(dice(seg(inp), lab[z], 4))
    print(f"U-Net {a.unet} on {i} ACDC validation slices at {a.accel:g}x, threads={a.threads}")
    for name, v in rows.items():
        print(f"  U-Net on the {name} image: Dice {np.nanmean(v):.4f}")


if __name__ == "__main__":
    main()
