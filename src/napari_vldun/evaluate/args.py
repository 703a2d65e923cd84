"""Arguments of ``vldun evaluate`` (kept apart so ``vldun --help`` stays cheap)."""

from __future__ import annotations

import argparse


def add_evaluate_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("what to evaluate on (a shared dataset, or a folder of image/label pairs)")
    g.add_argument("--dataset", nargs="+", default=None,
                   help="shared datasets (validation split): acdc, brats2015, covid_ct")
    g.add_argument("--images", default=None, help="folder of clean images (NIfTI, NRRD, HDF5, PNG, ...)")
    g.add_argument("--labels", default=None, help="folder of label files matched to --images by file name")
    g.add_argument("--data-root", default=None, help="shared data folder (default: ../shared/data or $VLDUN_DATA)")
    g = s.add_argument_group("degradation (seeded, so runs are comparable)")
    g.add_argument("--mask", choices=["cartesian", "radial", "auto"], default="auto",
                   help="auto: radial for CT datasets, Cartesian for MRI (folders: cartesian)")
    g.add_argument("--accel", type=float, nargs="+", default=[4.0], help="one or more accelerations")
    g.add_argument("--seed", type=int, default=0)
    g = s.add_argument_group("methods")
    g.add_argument("--weights", default=None, help="VL-DUN checkpoint (default: the shipped one)")
    g.add_argument("--label-set", default=None, help="label set to segment with (default: from the dataset / modality)")
    g.add_argument("--variants", default=None,
                   help="folder with ablation checkpoints NAME(.safetensors/.json) or training runs NAME/best, "
                        "NAME in no_seg_head, no_rec_head, no_priors, no_fd (trained on the same data and budget): "
                        "adds their rows, restore-then-segment and the zero-filled Dice")
    g.add_argument("--unet", default=None,
                   help="a plain U-Net baseline checkpoint (`vldun train-unet`): adds its Dice row, segmenting the "
                        "degraded input of the same slices")
    g.add_argument("--no-dc", action="store_true",
                   help="networks see the magnitude image only (no data consistency with the measured k-space)")
    g.add_argument("--cascades", type=int, default=None,
                   help="passes of the network with data consistency (default: the checkpoint's, per mask kind)")
    g.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="fp32, or bf16 autocast for the networks (auto: bf16 where the device runs it natively) (scans, data consistency and metrics stay fp32)")
    g.add_argument("--tta", action="store_true",
                   help="segment with test-time flips (mean softmax of each slice and its 3 reflections; 4x slower)")
    g.add_argument("--no-postprocessing", action="store_true",
                   help="score the networks' labels as they come (skip the checkpoint's connected-component rule)")
    g.add_argument("--decide-postprocessing", default=None, metavar="RULES.json",
                   help="score without postprocessing, then choose per label set which largest-component steps "
                        "raise Dice on these slices (nnU-Net's rule) and write them here; store them in a "
                        "checkpoint with `python scripts/set_postprocessing.py WEIGHTS RULES.json`")
    g.add_argument("--no-tv", action="store_true", help="skip the (slow) TV reconstruction baseline")
    g.add_argument("--tv-iters", type=int, default=100)
    g.add_argument("--tv-lambda", type=float, default=0.01)
    g.add_argument("--max-slices", type=int, default=None, help="cap the slices per dataset (evenly spaced)")
    g.add_argument("--device", default="auto")
    g = s.add_argument_group("outputs")
    g.add_argument("--out", default=None, help="folder for results.md, results.json and examples.png")
    g.add_argument("--json", default=None, help='write {"rows": [...]} to this file')
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
