"""``vldun evaluate``: PSNR / SSIM / Dice / IoU of VL-DUN against baselines, as Markdown + JSON tables.

Every case is a clean 2-D slice with its labels, degraded here with a seeded mask (slice ``j`` of a
run uses seed ``seed + j``), so runs with the same arguments see identical inputs. Methods:

* ``zero-filled``: the degraded input as is (Dice: the ``no_rec_head`` variant segmenting it, when given);
* ``tv``: TV-regularised reconstruction with data consistency (sees the complex k-space; no labels);
* ``vldun``: the checkpoint under test;
* with ``--variants DIR``: ``w/o seg head``, ``w/o rec head``, ``restore-then-segment`` (the no-seg model's
  output segmented by the no-rec model), ``w/o CLIP priors``, ``w/o FD``;
* ``clean (upper bound)``: ``vldun`` segmenting the clean slice (Dice only).

The acquisition is simulated, so it is known: unless ``--no-dc``, every network gets the measured
k-space and its mask and makes its restored image consistent with them (as TV does); with ``--no-dc``
the networks see the magnitude image only, as for a user file without its k-space.

PSNR/SSIM are computed on [0, 1] images (the restored image clipped), averaged over slices; Dice/IoU
are per slice, mean over foreground classes present in the reference, averaged over the slices that
contain any labelled foreground.
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..data.sources import SOURCES, volume_slices
from ..degradation.measurement import Measurement
from ..io import SUPPORTED_SUFFIXES, ImageReadError, file_stem, read_image, read_label
from ..io.atomic import atomic_outputs, check_out_dir, check_outputs, dumps_json
from ..io.lock import locks_output
from ..io.normalize import to_unit_range
from ..io.readers import suffix_of
from ..inference import load_model, passes, predict
from ..model.unet import load_unet
from ..postprocess import Decision, decide_rule, rules_from_meta, score
from .baselines import tv_reconstruction
from ..io.figures import overview_figure
from ..metrics import dice, dice_per_class, iou, psnr, ssim, stages_monotone, whole_dice

#: the method name of the plain U-Net baseline's rows (``--unet``).
UNET_ROW = "U-Net (seg only, degraded input)"
VARIANTS = {"no_seg_head": "w/o seg head", "no_rec_head": "w/o rec head", "no_priors": "w/o CLIP priors",
            "no_fd": "w/o FD"}


@dataclass
class Case:
    """One evaluation slice: ``clean`` (H, W) in [0, 1], ``label`` (H, W) int or None."""

    dataset: str
    name: str
    clean: np.ndarray
    label: np.ndarray | None
    mask_kind: str
    label_set: str | None


@dataclass
class Scores:
    psnr: list = field(default_factory=list)
    ssim: list = field(default_factory=list)
    dice: list = field(default_factory=list)
    iou: list = field(default_factory=list)
    #: Dice of "any label" vs background (whole tumour for BraTS), per slice with foreground.
    dice_whole: list = field(default_factory=list)
    #: class index -> Dice per slice where the class is in the reference.
    dice_class: dict = field(default_factory=dict)
    #: per slice: does its stage PSNR never fall from one stage (and pass) to the next?
    monotone: list = field(default_factory=list)
    #: volume id -> (predicted, reference) label slices of every evaluated slice of it, empty ones included
    #: (for the per-volume "3-D" Dice of the ACDC challenge, :attr:`summary`'s ``dice_volume``).
    volumes: dict = field(default_factory=dict)
    n_classes: int | None = None

    def volume_dice(self) -> float | None:
        """Mean over volumes of the mean Dice over the classes present in the volume, counted over all its
        evaluated slices at once (false positives on slices without the class count)."""
        pred, ref, vols = [], [], []
        for name, (p, t) in self.volumes.items():
            pred += p
            ref += t
            vols += [name] * len(p)
        v = score(pred, ref, vols, self.n_classes).volume_mean if pred else math.nan
        return None if math.isnan(v) else round(v, 4)

    def summary(self) -> dict:
        def mean(v: list) -> float | None:
            v = [x for x in v if x is not None and not math.isnan(x)]
            return round(float(np.mean(v)), 4) if v else None

        out = {"psnr": mean(self.psnr), "ssim": mean(self.ssim), "dice": mean(self.dice), "iou": mean(self.iou),
               "dice_whole": mean(self.dice_whole),
               "dice_per_class": {str(k): mean(v) for k, v in sorted(self.dice_class.items())} or None,
               "stages_monotone": mean([float(m) for m in self.monotone]),
               "dice_volume": self.volume_dice() if self.n_classes else None,
               "n_volumes": len(self.volumes),
               "n_slices": max(len(self.psnr), len(self.dice))}
        return out


def dataset_cases(names: list[str], root=None, max_slices: int | None = None, split: str = "val") -> Iterator[Case]:
    """Validation (``split`` "val") or training ("train") slices of shared datasets, evenly thinned to
    ``max_slices`` per dataset."""
    for ds in names:
        if ds not in SOURCES:
            raise ValueError(f"--dataset {ds!r} unknown; choose from {sorted(SOURCES)}")
        spec = SOURCES[ds]
        slices = [(case, z, vol[z], None if lab is None else lab[z])
                  for case, vol, lab, _ in volume_slices(ds, split, root) for z in range(vol.shape[0])]
        if max_slices and len(slices) > max_slices:
            slices = [slices[i] for i in np.linspace(0, len(slices) - 1, max_slices).round().astype(int)]
        for case, z, img, lab in slices:
            yield Case(ds, f"{case}:{z}", img, lab, spec.mask_kind, spec.label_set)


def folder_name(images: str | Path) -> str:
    """The dataset name of an ``--images`` folder (its name; used in tables and ``examples_*.png``)."""
    p = Path(images).expanduser()
    return p.name or p.resolve().name or "images"


def _check_folder(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} {p}: not a folder" + (" (it is a file)" if p.exists() else " (not found)"))
    return p


def folder_cases(images: str | Path, labels: str | Path | None, max_slices: int | None = None) -> Iterator[Case]:
    """Image/label pairs from two folders, matched by file name (suffixes ignored). Entries that are not
    images (a README, notes, hidden files) are skipped with a warning; an unreadable image too."""
    images = _check_folder(images, "--images")
    label_files = {file_stem(p): p for p in _check_folder(labels, "--labels").iterdir()} if labels else {}
    files = []
    for p in sorted(images.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or suffix_of(p) in SUPPORTED_SUFFIXES:
            files.append(p)
        else:
            warnings.warn(f"--images {images}: skipped {p.name} (not an image file)", stacklevel=2)
    if not files:
        raise ValueError(f"--images {images} holds no readable image files")
    n = 0
    name = folder_name(images)
    for p in files:
        try:
            vol = read_image(p)
        except ImageReadError as exc:
            warnings.warn(f"--images {images}: skipped {p.name}: {exc}", stacklevel=2)
            continue
        data, _ = to_unit_range(vol)
        data = data[None] if data.ndim == 2 else data
        lab = None
        if labels:
            if file_stem(p) not in label_files:
                raise ValueError(f"no label file for {p.name} in {labels} (matched by file name)")
            lab = read_label(label_files[file_stem(p)], like=vol).reshape(data.shape)
        for z in range(data.shape[0]):
            if max_slices and n >= max_slices:
                return
            n += 1
            yield Case(name, f"{file_stem(p)}:{z}", data[z], None if lab is None else lab[z], "cartesian", None)


class Evaluator:
    """Runs every method on every case and collects :class:`Scores` per (method, dataset)."""

    def __init__(self, main, variants: dict, tv: bool, tv_iters: int, tv_lambda: float, label_set: str | None,
                 data_consistency: bool = True, cascades: int | None = None, precision: str = "fp32",
                 postprocess: bool = True, tta: bool = False):
        self.main, self.variants, self.label_set = main, variants, label_set
        #: apply each checkpoint's connected-component rule (:mod:`~napari_vldun.postprocess`) to its labels
        self.postprocess = postprocess
        #: segment with test-time flips (:func:`~napari_vldun.inference.iter_predict`'s ``tta``)
        self.tta = tta
        #: dataset -> the label set the main model segmented it with
        self.label_sets_used: dict[str, str] = {}
        self.precision = precision
        self.cascades = cascades
        self.data_consistency = data_consistency
        self._measurement: dict = {}
        self.tv, self.tv_iters, self.tv_lambda = tv, tv_iters, tv_lambda
        self.scores: dict[tuple[str, str], Scores] = {}
        self.examples: dict[str, dict] = {}
        #: the plain U-Net baseline (segments the degraded input), or None
        self.unet = None
        #: the main model runs with its stages, for the "stages monotone" figure
        self.want_stages = False
        self.last_stages = None

    def _run(self, loaded, image: np.ndarray, label_set: str | None):
        ls = label_set if label_set in loaded.model.cfg.label_sets else None
        p = predict(loaded, image, label_set=ls, return_stages=self.want_stages, precision=self.precision,
                    postprocess=self.postprocess, tta=self.tta, **self._measurement)
        restored = None if p.restored is None else p.restored[0]
        self.last_stages = None if p.stages is None else p.stages[0, :, 0]  # (S, H, W) full band
        return restored, None if p.labels is None else p.labels[0], p.label_set

    def _score(self, method: str, case: Case, restored, labels, n_classes: int | None, stages=None) -> None:
        s = self.scores.setdefault((method, case.dataset), Scores())
        if restored is not None:
            r = np.clip(restored, 0, 1)
            s.psnr.append(psnr(r, case.clean))
            s.ssim.append(ssim(r, case.clean))
        if labels is not None and case.label is not None and n_classes:
            s.n_classes = n_classes
            p, t = s.volumes.setdefault(case.name.rsplit(":", 1)[0], ([], []))
            p.append(np.asarray(labels))
            t.append(np.asarray(case.label))
        if labels is not None and case.label is not None and n_classes and case.label.any():
            s.dice.append(dice(labels, case.label, n_classes))
            s.iou.append(iou(labels, case.label, n_classes))
            s.dice_whole.append(whole_dice(labels, case.label))
            for k, v in dice_per_class(labels, case.label, n_classes).items():
                if v is not None and (np.asarray(case.label) == k).any():
                    s.dice_class.setdefault(k, []).append(v)
        if stages is not None and len(stages) > 1:
            s.monotone.append(stages_monotone([psnr(np.clip(st, 0, 1), case.clean) for st in stages]))

    def add(self, case: Case, accel: float, seed: int) -> None:
        degraded, meas = Measurement.simulate(case.clean, case.mask_kind, accel, seed=seed)
        ls = self.label_set or case.label_set
        self._measurement = ({"measurement": meas, "cascades": self.cascades} if self.data_consistency else {})
        self.want_stages = bool(self.main.model.cfg.stage_images)
        restored, labels, used = self._run(self.main, degraded, ls)
        self.want_stages = False
        n_cls = len(self.main.model.cfg.label_sets.get(used, [])) if used else None
        if used:
            self.label_sets_used.setdefault(case.dataset, used)
        self._score("vldun", case, restored, labels, n_cls, self.last_stages)
        seg_only = self.variants.get("no_rec_head")
        zf_labels = self._run(seg_only, degraded, ls)[1] if seg_only else None
        self._score("zero-filled", case, degraded, zf_labels, n_cls)
        if self.unet is not None and self.unet.cfg.label_set == ls:
            import torch

            with torch.no_grad():
                lab = self.unet(torch.from_numpy(np.ascontiguousarray(degraded))[None, None]).argmax(1)[0].numpy()
            self._score(UNET_ROW, case, None, lab, len(self.unet.cfg.classes))
        if self.tv:
            tv = tv_reconstruction(meas.kspace[0], meas.mask[0], self.tv_lambda, self.tv_iters)
            self._score("tv", case, np.clip(tv, 0.0, 1.0), None, None)
        rec_only = None
        for key, name in VARIANTS.items():
            if key in self.variants:
                r, lab, _ = self._run(self.variants[key], degraded, ls)
                self._score(name, case, r, lab, n_cls)
                rec_only = r if key == "no_seg_head" else rec_only
        if rec_only is not None and seg_only is not None:
            self._score("restore-then-segment", case, rec_only, self._run(seg_only, rec_only, ls)[1], n_cls)
        self._measurement = {}  # the clean slice is not a measurement
        self._score("clean (upper bound)", case, None, self._run(self.main, case.clean, ls)[1], n_cls)
        fg = int((case.label > 0).sum()) if case.label is not None else 0
        best = self.examples.get(case.dataset)
        if best is None or fg > best["fg"]:
            self.examples[case.dataset] = {"fg": fg, "case": case, "degraded": degraded, "restored": restored,
                                           "labels": labels, "label_set": used}

    def rows(self, accel: float) -> list[dict]:
        out = []
        methods = list(dict.fromkeys(m for m, _ in self.scores))
        datasets = list(dict.fromkeys(d for _, d in self.scores))
        for m in methods:
            per = [dict(method=m, dataset=d, accel=accel, **self.scores[(m, d)].summary())
                   for d in datasets if (m, d) in self.scores]
            out += per
            if len(per) > 1:
                avg = {k: (round(float(np.mean([r[k] for r in per if r[k] is not None])), 4)
                           if any(r[k] is not None for r in per) else None) for k in ("psnr", "ssim", "dice", "iou")}
                out.append(dict(method=m, dataset="average", accel=accel, **avg,
                                n_slices=sum(r["n_slices"] for r in per)))
        return out


def extra_table(rows: list[dict]) -> str:
    """Per method and dataset: whole-foreground Dice, Dice per class, Dice per volume (all slices of a volume
    counted at once, the number of volumes in brackets) and the share of slices whose stage PSNR never falls
    (methods with stage estimates only)."""
    lines = ["| Method | Dataset | Dice (any label) | Dice per class | Dice per volume | stages monotone |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        if r["dataset"] == "average" or (r.get("dice_whole") is None and r.get("stages_monotone") is None):
            continue
        per = r.get("dice_per_class") or {}
        per_txt = ", ".join(f"{k}: {'-' if v is None else f'{v:.3f}'}" for k, v in per.items()) or "-"
        whole = "-" if r.get("dice_whole") is None else f"{r['dice_whole']:.4f}"
        mono = "-" if r.get("stages_monotone") is None else f"{100 * r['stages_monotone']:.1f} %"
        vol = "-" if r.get("dice_volume") is None else f"{r['dice_volume']:.4f} ({r['n_volumes']})"
        lines.append(f"| {r['method']} | {r['dataset']} | {whole} | {per_txt} | {vol} | {mono} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Paper Tables 1-3 layout: one row per method, PSNR / SSIM / Dice / IoU per dataset."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["dataset"]): r for r in rows}
    head = "| Method | " + " | ".join(f"{d} PSNR | {d} SSIM | {d} Dice | {d} IoU" for d in datasets) + " |"
    sep = "|---|" + "---:|" * (4 * len(datasets))

    def fmt(v, nd):
        return "-" if v is None else f"{v:.{nd}f}"

    lines = [head, sep]
    for m in methods:
        cells = []
        for d in datasets:
            r = by.get((m, d), {})
            cells += [fmt(r.get("psnr"), 2), fmt(r.get("ssim"), 4), fmt(r.get("dice"), 4), fmt(r.get("iou"), 4)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(cases_factory: Callable[[], Iterator[Case]], accels: list[float], seed: int, main, variants: dict,
             *, tv: bool = True, tv_iters: int = 100, tv_lambda: float = 0.01, label_set: str | None = None,
             progress: bool = True, data_consistency: bool = True, cascades: int | None = None,
             precision: str = "fp32", unet=None, postprocess: bool = True, tta: bool = False
             ) -> tuple[list[dict], dict[float, Evaluator]]:
    """Evaluate all methods at each acceleration; returns (rows, evaluators by accel). ``unet``: a
    :class:`~napari_vldun.model.unet.UNet` baseline segmenting the degraded input (its "U-Net" Dice row).
    ``postprocess``: apply the checkpoints' connected-component rules (False: the networks' argmax);
    ``tta``: the networks segment with test-time flips."""
    from tqdm import tqdm

    rows, evaluators = [], {}
    for accel in accels:
        ev = Evaluator(main, variants, tv, tv_iters, tv_lambda, label_set, data_consistency, cascades, precision,
                       postprocess, tta)
        ev.unet = unet
        for j, case in enumerate(tqdm(list(cases_factory()), desc=f"evaluate R={accel:g}", disable=not progress)):
            ev.add(case, accel, seed + j)
        rows += ev.rows(accel)
        evaluators[accel] = ev
    return rows, evaluators


def postprocessing_text(main, args) -> str:
    """What the main model's labels went through, for the results' header."""
    if getattr(args, "no_postprocessing", False) or getattr(args, "decide_postprocessing", None):
        return "off (the network's argmax)"
    rules = rules_from_meta(main.meta)
    used = {k: r.describe(main.model.cfg.label_sets.get(k)) for k, r in rules.items() if not r.is_identity}
    return "; ".join(f"{k}: {v}" for k, v in used.items()) if used else "none in the checkpoint"


def decide_postprocessing(evaluators: dict[float, Evaluator]) -> dict[str, Decision]:
    """Choose a connected-component rule per label set (:func:`~napari_vldun.postprocess.decide_rule`) from the
    main model's labels of every evaluated slice (all datasets and accelerations segmented with that set
    pooled; each volume at each acceleration counts as its own volume). Run the evaluation with
    ``postprocess=False`` first, so the labels are the network's own."""
    pooled: dict[str, tuple[list, list, list, int]] = {}
    for accel, ev in evaluators.items():
        for (method, ds), sc in ev.scores.items():
            used = ev.label_sets_used.get(ds)
            if method != "vldun" or not used or not sc.n_classes:
                continue
            pred, ref, vols, _ = pooled.setdefault(used, ([], [], [], sc.n_classes))
            for vol, (p, t) in sc.volumes.items():
                pred += p
                ref += t
                vols += [f"{ds}:{vol}:R{accel:g}"] * len(p)
    return {name: decide_rule(p, t, v, n) for name, (p, t, v, n) in pooled.items()}


@locks_output("args.out", "evaluate")  # one run per --out folder (io.lock)
def evaluate_from_args(args: argparse.Namespace) -> int:
    """The body of ``vldun evaluate``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.dataset and not args.images:
        raise ValueError("give --dataset NAME... or --images DIR [--labels DIR]")
    unknown = [d for d in args.dataset or [] if d not in SOURCES]
    if unknown:
        raise ValueError(f"--dataset {', '.join(unknown)} unknown; choose from {sorted(SOURCES)}")
    if args.images:
        _check_folder(args.images, "--images")
    if args.labels:
        _check_folder(args.labels, "--labels")
    if args.variants:
        _check_folder(args.variants, "--variants")
    out = check_out_dir(args.out) if args.out else None
    datasets = list(args.dataset) if args.dataset else [folder_name(args.images)]
    figures = {(ds, accel): out / f"examples_{ds}_R{accel:g}.png" for accel in args.accel for ds in datasets} if out else {}
    targets = ([out / "results.md", out / "results.json", *figures.values()] if out else []) + (
        [Path(args.json)] if args.json else [])
    decide_to = getattr(args, "decide_postprocessing", None)
    if decide_to:
        targets.append(Path(decide_to))
    check_outputs(targets, args.overwrite)  # every output, before any slice runs
    main = load_model(args.weights, args.device)  # a missing or corrupt checkpoint is refused here
    unet = None
    if getattr(args, "unet", None):
        unet = load_unet(args.unet, main.device)[0]
    n_passes = passes(main, not args.no_dc, args.cascades)  # refuses a bad count before any slice runs
    variants = {}
    if args.variants:
        for key in VARIANTS:  # DIR/KEY.json or a training run DIR/KEY/best.json
            for p in (Path(args.variants) / key / "best", Path(args.variants) / key):
                if p.with_name(p.name + ".json").exists():
                    variants[key] = load_model(p, args.device)
                    break
        if not variants:
            raise FileNotFoundError(f"--variants {args.variants}: no checkpoint named {', '.join(VARIANTS)} found")
    if args.dataset:
        def factory():
            return dataset_cases(args.dataset, args.data_root, args.max_slices)
    else:
        def factory():
            return folder_cases(args.images, args.labels, args.max_slices)
    if args.mask != "auto":
        inner = factory

        def factory():  # noqa: F811 - the mask given on the command line wins
            for c in inner():
                c.mask_kind = args.mask
                yield c
    rows, evs = evaluate(factory, args.accel, args.seed, main, variants, tv=not args.no_tv,
                         tv_iters=args.tv_iters, tv_lambda=args.tv_lambda, label_set=args.label_set,
                         data_consistency=not args.no_dc, cascades=args.cascades,
                         precision=getattr(args, "precision", "fp32"), unet=unet,
                         postprocess=not (getattr(args, "no_postprocessing", False) or decide_to),
                         tta=getattr(args, "tta", False))
    by_mask = dict(main.model.cfg.cascades_by_mask) if args.cascades is None and not args.no_dc else {}
    doc = {"weights": main.source, "random_weights": main.random_weights, "seed": args.seed,
           "data_consistency": not args.no_dc, "cascades": n_passes, "cascades_by_mask": by_mask,
           "variants": sorted(variants), "unet": getattr(args, "unet", None),
           "postprocessing": postprocessing_text(main, args), "tta": getattr(args, "tta", False), "rows": rows}
    dc_text = "off" if args.no_dc else f"on, {n_passes} cascade(s)" + "".join(
        f"; {n} with {kind} masks" for kind, n in by_mask.items())
    md = [f"Weights: `{main.source}`; seed {args.seed}; variants: {sorted(variants) or 'none'}; "
          f"data consistency with the measured k-space: {dc_text}; postprocessing: {doc['postprocessing']}"
          + ("; test-time flips: on" if doc["tta"] else "")]
    decisions = decide_postprocessing(evs) if decide_to else {}
    if decide_to:
        md += ["", "### Postprocessing decided on these slices (labels as the network gave them)", ""]
        for name, d in decisions.items():
            classes = main.model.cfg.label_sets.get(name)
            md += [f"- {name}: **{d.rule.describe(classes)}**"] + [f"  - {line}" for line in d.steps]
    for accel in args.accel:
        sel = [r for r in rows if r["accel"] == accel]
        md += ["", f"### R = {accel:g}", "", markdown_table(sel), "", extra_table(sel)]
    text = "\n".join(md)
    print(text)
    shown = [(ds, accel, ex) for accel, ev in evs.items() for ds, ex in ev.examples.items()]
    unused = {p for key, p in figures.items() if key not in {(ds, accel) for ds, accel, _ in shown}}
    staged = [p for p in targets if p not in unused]
    with atomic_outputs(staged, args.overwrite) as tmp:  # all outputs or none
        if args.json:
            tmp[Path(args.json).expanduser()].write_text(dumps_json(doc) + "\n")
        if decide_to:
            tmp[Path(decide_to).expanduser()].write_text(
                dumps_json({name: d.to_dict() for name, d in decisions.items()}) + "\n")
        if out:
            tmp[out / "results.md"].write_text(text + "\n")
            tmp[out / "results.json"].write_text(dumps_json(doc) + "\n")
            for ds, accel, ex in shown:
                c = ex["case"]
                colors = main.model.cfg.label_colors.get(ex["label_set"]) if ex["label_set"] else None
                overview_figure(tmp[figures[(ds, accel)]], ex["degraded"], ex["restored"], ex["labels"], colors,
                                clean=c.clean, true_labels=c.label, title=f"{ds} {c.name}  R={accel:g}",
                                overwrite=True)
    return 0

