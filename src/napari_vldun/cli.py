"""``vldun`` command line: a thin face over the same functions the napari widgets use.

Errors end in one line ``vldun COMMAND: error: ...`` on stderr, no traceback: exit code 2 for a bad
argument, input, output path or device and for file-system failures (permission denied, disk full),
130 for Ctrl-C. JSON printed on stdout is strict (NaN -> ``null``).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from .io.atomic import check_out_dir, check_outputs, dumps_json


#: Exit status of a training stopped by Ctrl-C (128 + SIGINT, as shells report it).
STOPPED_EXIT = 130


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .model import build_model  # lazy: imports torch (CLI start stays light)
    from .model.complexity import model_info
    from .model.ssm import mamba_ssm_available

    torch.set_num_threads(args.threads)
    info = model_info(build_model(args.config), (args.size, args.size))
    info["mamba_ssm"] = mamba_ssm_available()
    if args.json:
        print(dumps_json(info, indent=None))
    else:
        for k, v in info.items():
            print(f"{k:>20}: {v}")
    return 0


def _cmd_degrade(args: argparse.Namespace) -> int:
    from .pipeline import degrade_file  # lazy: imports torch (CLI start stays light)

    out = degrade_file(args.input, args.output, mask=args.mask, accel=args.accel, seed=args.seed,
                       center_fraction=args.center_fraction, overwrite=args.overwrite, kspace_out=args.kspace_out)
    print(dumps_json(out, indent=None))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import predict_file  # lazy: imports torch (CLI start stays light)

    summary = predict_file(args.input, args.out, weights=args.weights, device=args.device,
                           label_set=args.label_set, labels=args.labels, clean=args.clean,
                           overwrite=args.overwrite, stages=args.stages, kspace=args.kspace,
                           cascades=args.cascades, precision=args.precision, tile=args.tile,
                           dicom_seg=not args.no_dicom_seg, compile=args.compile, tta=args.tta,
                           postprocess=not args.no_postprocessing)
    print(dumps_json(summary))
    return 0


def _cmd_train_unet(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .train.unet import UNetTrainConfig, iter_train_unet  # lazy: imports torch (CLI start stays light)

    out = check_out_dir(args.out)
    check_outputs([out / "unet.safetensors", out / "unet.json"], args.overwrite)
    cfg = UNetTrainConfig(out_dir=str(out), source=args.source, steps=args.steps, minutes=args.minutes,
                          crop=args.crop, batch_size=args.batch_size, seed=args.seed, precision=args.precision,
                          threads=args.threads, restored=args.restored, init=args.init,
                          **({"lr": args.lr} if args.lr is not None else {}))
    last = {}
    with tqdm(total=cfg.steps, desc="train U-Net", unit="step") as bar:
        for last in iter_train_unet(cfg):
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}")
    print(dumps_json(last))
    return 0


def _cmd_cache_restored(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .train.restored import cache_restored  # lazy: imports torch (CLI start stays light)

    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    out = check_out_dir(args.out)
    check_outputs([out / f"restored-{args.rank}.safetensors", out / f"restored-{args.rank}.json"], args.overwrite)
    last: dict = {}
    with tqdm(desc=f"restore {args.source} (rank {args.rank}/{args.world})", unit="slice") as bar:
        for last in cache_restored(args.weights, out, source=args.source, seed=args.seed, rank=args.rank,
                                   world=args.world, max_slices=args.max_slices):
            if "total" in last:
                bar.total = last["total"]
                bar.update(1)
    print(dumps_json(last))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo  # lazy: imports torch (CLI start stays light)

    summary = run_demo(args.out, sample=args.sample, weights=args.weights, device=args.device,
                       overwrite=args.overwrite, data_consistency=not args.no_dc, cascades=args.cascades,
                       precision=args.precision, compile=args.compile)
    print(dumps_json(summary))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.runner import train_from_file  # lazy: imports torch (CLI start stays light)

    try:
        overrides = json.loads(args.set) if args.set else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--set {args.set!r} is not a JSON object: {exc}") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"--set {args.set!r} must be a JSON object of config keys")
    if args.device is not None:
        overrides = {**(overrides or {}), "device": args.device}
    if args.precision is not None:
        overrides = {**(overrides or {}), "precision": args.precision}
    summary = train_from_file(args.config, resume=args.resume, out_dir=args.out, overrides=overrides)
    print(dumps_json(summary, default=str))
    if summary.get("stopped"):  # Ctrl-C: not a finished run
        print("stopped; resume with --resume", file=sys.stderr)
        return STOPPED_EXIT
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate.runner import evaluate_from_args  # lazy: imports torch (CLI start stays light)

    return evaluate_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vldun", description="VL-DUN: joint restoration + segmentation of degraded MRI/CT")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="parameters and MACs of a named config")
    s.add_argument("--config", default="tiny", help="named config: tiny or paper")
    s.add_argument("--size", type=int, default=256, help="square input size for the MAC count (default 256)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("degrade", help="simulate k-space undersampling of an image file")
    s.add_argument("input", help="NIfTI, NRRD, DICOM folder, HDF5, PNG/JPEG/TIFF or .npy")
    s.add_argument("output", help="output file: .nii/.nii.gz, .png or .npy")
    s.add_argument("--mask", choices=["cartesian", "radial"], required=True)
    s.add_argument("--accel", type=float, required=True, help="acceleration R >= 1 (1/R of k-space kept)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--center-fraction", type=float, default=0.08, help="Cartesian: fully sampled centre")
    s.add_argument("--kspace-out", default=None,
                   help="also write the measured k-space and mask (.npz) for `vldun predict --kspace`")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_degrade)

    def add_model_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--weights", default=None, help="local checkpoint (NAME.safetensors + NAME.json); default: shipped")
        s.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        s.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
        add_precision_arg(s)
        s.add_argument("--compile", action="store_true",
                       help="torch.compile the network (faster on volumes of many slices of one size; the first "
                            "slice of each size compiles, ~1 min cold; runs eager where no C++ compiler exists)")

    def add_precision_arg(s: argparse.ArgumentParser, default: str | None = "fp32") -> None:
        s.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=default,
                       help="fp32, or bf16 autocast (faster on CPUs with AVX512-bf16 and on GPUs, ~4x slower on CPUs "
                            "without it; scans, data consistency and losses stay fp32); auto: bf16 where native" + ("" if default else "; default: the config's"))

    def add_cascades_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--cascades", type=int, default=None,
                       help="passes of the network with the known k-space (default: the checkpoint's for the "
                            "mask's kind; fewer is faster)")

    s = sub.add_parser("predict", help="restore + segment an image file or DICOM folder")
    s.add_argument("input")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--label-set", default=None, help="label set to segment with (default: from the predicted modality)")
    s.add_argument("--labels", default=None, help="optional reference labels, to report Dice/IoU")
    s.add_argument("--clean", default=None, help="optional clean reference image, to report PSNR/SSIM")
    s.add_argument("--stages", action="store_true", help="also write the stage maps (full/low/high) as NIfTI")
    s.add_argument("--no-dicom-seg", action="store_true",
                   help="for a DICOM series input, do not write labels.seg.dcm (the labels as a DICOM SEG)")
    s.add_argument("--kspace", default=None,
                   help="the input's measured k-space (.npz from `vldun degrade --kspace-out`): the restored image "
                        "is made consistent with it")
    s.add_argument("--tile", type=int, default=None,
                   help="overlapping N x N tiles for large slices (default: tiles of 512 above ~1 Mpx, bounded "
                        "memory; 0: always whole slices)")
    s.add_argument("--tta", action="store_true",
                   help="segment with test-time flips: mean of the slice and its 3 reflections (4x slower)")
    s.add_argument("--no-postprocessing", action="store_true",
                   help="keep the network's labels as they are (skip the checkpoint's largest-component rule)")
    add_cascades_arg(s)
    add_model_args(s)
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("demo", help="run the shipped model on a bundled sample")
    s.add_argument("--out", default="vldun-demo", help="output folder (default ./vldun-demo)")
    s.add_argument("--sample", default="acdc", help="bundled sample: acdc, brain or ct")
    s.add_argument("--no-dc", action="store_true",
                   help="ignore the sample's known acquisition (magnitude image only, as for a user file)")
    add_cascades_arg(s)
    add_model_args(s)
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("train", help="train from a JSON/TOML config (see configs/)")
    s.add_argument("config")
    s.add_argument("--out", default=None, help="output folder (overrides the config's out_dir)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last")
    s.add_argument("--set", default=None, help='JSON object of config overrides, e.g. \'{"epochs": 2}\'')
    s.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (overrides the config's device)")
    add_precision_arg(s, None)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("cache-restored", help="draw a frozen checkpoint's restored training slices once "
                       "(restore-then-segment: `train-unet --restored OUT`)")
    s.add_argument("--weights", required=True, help="VL-DUN checkpoint prefix (PATH.safetensors + PATH.json)")
    s.add_argument("--out", required=True, help="output folder (writes OUT/restored-RANK.safetensors + .json)")
    s.add_argument("--source", default="acdc", help="labelled training source (default: acdc)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rank", type=int, default=0, help="this process's share of the slices: every WORLD-th from RANK")
    s.add_argument("--world", type=int, default=1)
    s.add_argument("--max-slices", type=int, default=None, help="at most this many slices, evenly spaced")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--overwrite", action="store_true", help="replace OUT/restored-RANK.*")
    s.set_defaults(func=_cmd_cache_restored)

    s = sub.add_parser("train-unet", help="train the plain U-Net segmentation baseline (for `evaluate --unet`)")
    s.add_argument("--out", required=True, help="output folder (writes OUT/unet.safetensors + OUT/unet.json)")
    s.add_argument("--source", default="acdc", help="labelled training source (default: acdc)")
    s.add_argument("--steps", type=int, default=2000, help="optimiser steps (the poly schedule's length)")
    s.add_argument("--minutes", type=float, default=None, help="stop and save after this wall time")
    s.add_argument("--crop", type=int, default=128)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    s.add_argument("--restored", default=None, help="train on a `cache-restored` folder's restored slices "
                   "(restore-then-segment) instead of zero-filled ones")
    s.add_argument("--init", default=None, help="start from this U-Net checkpoint prefix (e.g. DIR/unet)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT/unet.*")
    add_precision_arg(s, "auto")
    s.set_defaults(func=_cmd_train_unet)

    try:
        from .evaluate.args import add_evaluate_args  # lazy: guarded; imports torch
    except ImportError:  # evaluation not installed in this build
        return p
    s = sub.add_parser("evaluate", help="PSNR/SSIM/Dice/IoU tables against baselines")
    add_evaluate_args(s)
    s.set_defaults(func=_cmd_evaluate)
    return p


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure: what failed, on which file, and what would fix it."""
    where = f" {exc.filename}" if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device writing{where}; free some space or choose another --out (nothing was kept)"
    if isinstance(exc, PermissionError):
        return f"permission denied:{where}; choose a folder you may write to (or fix its permissions)"
    return f"{what}:{where}" if where else what


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"vldun {args.command}: interrupted (Ctrl-C); no partial outputs were kept", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"vldun {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"vldun {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
