"""Build the bundled samples in sample_data/ from ../shared/data (run once; the output is committed).

Each sample is a folder with clean.nii.gz, degraded.nii.gz, labels.nii.gz and meta.json, plus the
source data's licence. All three come from validation splits (never used for training).
    python scripts/make_sample_data.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from napari_vldun.degradation import degrade
from napari_vldun.io import read_image, read_label, write_nifti

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "sample_data"


def save(name: str, clean: np.ndarray, labels: np.ndarray, mask: str, accel: float, meta: dict, licence: Path) -> None:
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    kw = {"center_fraction": 0.08} if mask == "cartesian" else {}
    degraded, m = degrade(clean.astype(np.float32), kind=mask, accel=accel, seed=0, **kw)
    write_nifti(clean.astype(np.float32), d / "clean.nii.gz", overwrite=True)
    write_nifti(np.asarray(degraded, np.float32), d / "degraded.nii.gz", overwrite=True)
    write_nifti(labels.astype(np.uint8), d / "labels.nii.gz", overwrite=True)
    if licence.parent != d:
        shutil.copy(licence, d / licence.name)
    meta = {"name": name, **meta, "shape": list(clean.shape),
            "files": {"clean": "clean.nii.gz", "degraded": "degraded.nii.gz", "labels": "labels.nii.gz",
                      "licence": licence.name},
            "degradation": {"mask": mask, "accel": accel, "seed": 0, "fraction": round(m.fraction, 4),
                            "note": "the same 2-D mask applied to every slice"}}
    (d / "meta.json").write_text(json.dumps(meta, indent=2))


def acdc() -> None:
    with h5py.File(DATA / "acdc/val_volumes/patient028_frame01.h5") as f:
        img, lab = f["image"][:], f["label"][:]
    licence = OUT / "acdc" / "LICENSE-ACDC.txt"
    licence.parent.mkdir(parents=True, exist_ok=True)
    licence.write_text(
        "ACDC (Automated Cardiac Diagnosis Challenge), patient028 ED frame, validation split.\n"
        "Licence: CC BY-NC-SA 4.0 (non-commercial). https://creativecommons.org/licenses/by-nc-sa/4.0/\n"
        "Cite: O. Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures\n"
        "Segmentation and Diagnosis: Is the Problem Solved? IEEE TMI 37(11):2514-2525, 2018.\n")
    save("acdc", img, lab, "cartesian", 4.0,
         {"title": "Cardiac cine MRI (ACDC patient028, ED)", "modality": "cardiac_mri", "label_set": "acdc",
          "source": "shared/data/acdc/val_volumes/patient028_frame01.h5",
          "licence": "CC BY-NC-SA 4.0", "citation": "Bernard et al., IEEE TMI 37(11), 2018"}, licence)


def brain() -> None:
    case = DATA / "brats2015/brats_2013_pat0006_1"
    vol = read_image(case / "T1c_subtrMeanDivStd.nii.gz")
    lab = read_label(case / "OTMultiClass.nii.gz", like=vol)
    brain_mask = read_label(case / "brainmask.nii.gz", like=vol) > 0
    lo, hi = np.percentile(vol.data[brain_mask], [0.5, 99.5])
    img = np.where(brain_mask, np.clip((vol.data - lo) / (hi - lo), 0, 1), 0).astype(np.float32)
    tumour = (lab > 0).reshape(lab.shape[0], -1).sum(1)
    z = int(np.argmax(tumour))
    sl = slice(max(0, z - 4), z + 4)
    save("brain", img[sl], lab[sl], "cartesian", 4.0,
         {"title": "Brain MRI T1c with glioma (BraTS 2013 pat0006, 8 axial slices)", "modality": "brain_mri",
          "label_set": "brats2015", "source": "shared/data/brats2015/brats_2013_pat0006_1 (T1c, OTMultiClass)",
          "licence": "CC BY-NC-SA 3.0 CH", "citation": "Menze et al., IEEE TMI 34(10), 2015",
          "normalisation": "percentiles 0.5/99.5 inside brainmask -> [0, 1], background 0"},
         case / "License_CC_BY_NC_SA_3.0.txt")


def ct() -> None:
    base = DATA / "covid_ct/train/LungInfection-Train/Doctor-label"
    stem = "54"
    vol = read_image(base / "Imgs" / f"{stem}.jpg")
    lab = read_label(next((base / "GT").glob(f"{stem}.*")), like=vol)
    licence = OUT / "ct" / "LICENSE-COVID-CT.txt"
    licence.parent.mkdir(parents=True, exist_ok=True)
    licence.write_text(
        "COVID-19 CT segmentation (MedSeg / SIRM), as packaged by Inf-Net, slice 54 (held-out validation subset: stems 50-58, 67).\n"
        "Licence: non-commercial use only.\n"
        "Cite: D.-P. Fan et al., Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT Images,\n"
        "IEEE TMI 39(8), 2020; MedSeg (medicalsegmentation.com) / Italian Society of Medical and\n"
        "Interventional Radiology (SIRM).\n")
    save("ct", (vol.data / 255.0)[None], lab[None], "radial", 4.0,
         {"title": "Lung CT with COVID-19 infection (MedSeg slice 54)", "modality": "lung_ct",
          "label_set": "covid_ct", "source": "shared/data/covid_ct/train/LungInfection-Train/Doctor-label",
          "licence": "non-commercial", "citation": "Fan et al., Inf-Net, IEEE TMI 2020; MedSeg/SIRM",
          "normalisation": "8-bit JPEG / 255"}, licence)


if __name__ == "__main__":
    acdc()
    brain()
    ct()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}  {p.stat().st_size / 1024:.0f} KiB")
