"""Training configuration: one dataclass, loadable from JSON or TOML.

Two phases (Sec. 3.3 and 4.1 of the paper):

1. ``prior`` (``prior_epochs``): fine-tune the CLIP visual encoder and the modality classifier on
   ``mode="prior"`` data (random degradation primitives) with focal (Eq. 3) + image-text
   contrastive CE (Sec. 3.3.3). Only the priors' parameters train. Skipped for ``use_priors=False``.
2. ``joint`` (``epochs``): restoration + segmentation on k-space-undersampled slices; everything
   trains except the CLIP visual encoder (frozen unless ``train_clip_in_joint``) and, while
   ``w_mod`` / ``w_deg`` are 0, the modality classifier / similarity scale.

``best_metric``: ``"score"`` (default) = ``val_psnr / 40 + val_dice`` (PSNR in dB scaled so that
40 dB weighs like a perfect Dice), or any key of the validation metrics, e.g. ``"val_psnr"``,
``"val_ssim"``, ``"val_dice"``, ``"val_iou"`` (higher is better). Keys starting with ``_`` in a
config file are comments and are ignored; any other unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..data import SOURCES
from ..data.datasets import check_source_crops, check_source_weights
from ..io.atomic import write_json
from ..model.precision import Precision
from .losses import REC_LOSSES, check_monotone

__all__ = ["TrainConfig", "SOURCE_LICENSES", "IMMUTABLE_ON_RESUME"]

#: Short licence strings of the data sources, recorded in checkpoint metadata.
SOURCE_LICENSES: dict[str, str] = {
    "acdc": "CC BY-NC-SA 4.0 (ACDC; Bernard et al., IEEE TMI 2018)",
    "brats2015": "CC BY-NC-SA 3.0 CH (BraTS 2015; Menze et al., IEEE TMI 2015)",
    "brats2015_flair": "CC BY-NC-SA 3.0 CH (BraTS 2015; Menze et al., IEEE TMI 2015)",
    "covid_ct": "non-commercial use only (MedSeg / SIRM; Fan et al., Inf-Net, IEEE TMI 2020)",
    "totalseg_ct": "Apache-2.0 (TotalSegmentator example)",
    "totalseg_mr": "Apache-2.0 (TotalSegmentator example)",
    "pyradiomics_brain": "BSD-3-Clause (pyradiomics test data)",
    "spinalcord_mri": "MIT (spinal cord toolbox test data)",
}

#: Values of ``TrainConfig.prior_view``.
PRIOR_VIEWS = ("whole", "crop")

#: Fields that must match the saved config when resuming (the others may change, e.g. ``epochs``
#: to extend a run, ``device``, ``num_threads``, ``num_workers``).
IMMUTABLE_ON_RESUME = (
    "model", "model_overrides", "sources", "prior_sources", "crop", "batch_size", "seed", "lr",
    "prior_lr", "weight_decay", "rec_weight", "lambda_seg", "stage_weight", "w_mod", "w_deg", "rec_loss",
    "focal_alpha", "focal_gamma", "accel_range", "center_fraction", "noise_sigma_range",
    "train_clip_in_joint", "max_slices_per_source", "augment", "zero_init_residual", "prior_balance",
    "joint_balance", "data_consistency", "free_weight", "foreground_oversample", "intensity_augment", "source_crops",
    "stage_monotone", "init_priors", "train_only", "monotone_metric", "monotone_margin_db", "prior_view",
)


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults suit a short CPU run of the ``tiny`` model."""

    #: a named model config ("tiny", "paper") or the path of a checkpoint to start from.
    model: str = "tiny"
    #: VLDUNConfig field overrides for a named config, e.g. {"use_priors": false}.
    model_overrides: dict = field(default_factory=dict)
    #: training sources of the joint phase (names in napari_vldun.data.SOURCES); may be empty when
    #: the run trains on ready-made datasets (``iter_train(cfg, run_builder=make_run_builder(...))``).
    sources: list = field(default_factory=lambda: ["acdc"])
    #: sources of the prior phase (default: ``sources``); unlabelled sources are fine here.
    prior_sources: Optional[list] = None
    #: validation sources (default: the labelled ones among ``sources``, or all if none is).
    val_sources: Optional[list] = None
    data_root: Optional[str] = None
    crop: int = 128
    #: centre crop of the validation slices (default: ``crop``).
    val_crop: Optional[int] = None
    batch_size: int = 4
    #: joint-phase epochs.
    epochs: int = 10
    #: prior-phase (CLIP fine-tuning) epochs; 0 skips the phase.
    prior_epochs: int = 0
    #: optimiser steps per joint epoch (None: one pass over the training slices; capped by it).
    steps_per_epoch: Optional[int] = None
    #: optimiser steps per prior epoch (None: one pass over the prior slices; capped by it).
    prior_steps_per_epoch: Optional[int] = None
    #: prior-phase sampling: "modality" (each modality equally likely), "source" or None (each
    #: slice equally likely: the shared data is ~75 % cardiac MRI, and the modality classifier then
    #: learned to answer "cardiac"). Runs saved before this field existed used None.
    prior_balance: Union[str, dict, None] = "modality"
    #: what the prior phase shows the tower: "whole" slices, as inference does (the tower's native-scale tiles
    #: then span the whole slice, background corners included), or "crop" (``crop`` px windows, as runs saved
    #: before this field existed did). A linear modality probe fit on crop features scored 0.63-0.67 on whole
    #: validation slices, one fit on whole slices 0.85-0.86 (``benchmarks/prior_probe.py``; BENCHMARKS.md
    #: "Run 32 and 33").
    prior_view: str = "whole"
    #: joint-phase sampling: None (each slice equally likely: ACDC has ~6x the BraTS and ~30x the
    #: COVID training slices), "source" (each source equally likely) or "modality".
    joint_balance: Union[str, dict, None] = None
    #: joint phase and validation: make the restored image consistent with the sample's measured
    #: k-space (known mask) inside the model, so the network learns only what was not measured and is
    #: scored as it is used when the acquisition is known. Runs saved before this field existed used false.
    data_consistency: bool = True
    #: with data consistency: weight (relative to the reconstruction term) of the same loss on the network's
    #: estimate *before* data consistency. Without it the network neglects the measured frequencies and
    #: restores badly when no k-space is given (a magnitude image from a file): 20.0 dB vs 24.8 dB zero-filled
    #: on ACDC 4x training slices after 100 steps at 0 (BENCHMARKS.md).
    free_weight: float = 1.0
    #: keep at most this many slices per training source (evenly spaced), None: all.
    max_slices_per_source: Optional[int] = None
    #: validate on at most this many slices per validation source (evenly spaced), None: all.
    val_max_slices: Optional[int] = 32
    #: fixed acceleration of the validation degradation (None: drawn from accel_range, seeded).
    val_accel: Optional[float] = 4.0
    lr: float = 5e-4
    #: learning rate of the prior phase (default: ``lr``).
    prior_lr: Optional[float] = None
    weight_decay: float = 1e-4
    #: linear warm-up steps, then cosine decay to ``lr * min_lr_ratio`` over each phase.
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0
    #: weight of the reconstruction L1 (and, scaled by stage_weight, of the stage deep supervision).
    #: An image L1 starts near 0.04 while Dice + CE starts near 1.2; 5 puts the two terms on one scale
    #: (at 1 the segmentation gradient dominated and the residual barely learned, BENCHMARKS.md).
    #: Runs saved before this field existed used 1.
    rec_weight: float = 5.0
    lambda_seg: float = 0.5
    stage_weight: float = 0.1
    #: weights of the modality (focal) / degradation (contrastive CE) terms in the joint phase.
    w_mod: float = 0.0
    w_deg: float = 0.0
    rec_loss: str = "l1"
    focal_alpha: Optional[float] = 0.25
    focal_gamma: float = 2.0
    train_clip_in_joint: bool = False
    #: fresh named models only: zero the residual image heads (rec head, stage projections) so
    #: training starts from restored == degraded input instead of input + random noise.
    zero_init_residual: bool = True
    accel_range: list = field(default_factory=lambda: [2.0, 8.0])
    center_fraction: float = 0.08
    noise_sigma_range: list = field(default_factory=lambda: [0.0, 0.0])
    #: random rot90/flips of the training slices.
    augment: bool = True
    #: share of training crops centred (with jitter) on a random labelled pixel (nnU-Net's foreground
    #: oversampling); the rest are placed uniformly. Runs saved before this field existed used 0.
    foreground_oversample: float = 0.0
    #: random gamma (0.7..1.5) of the clean training slice before it is degraded (nnU-Net-style intensity
    #: augmentation). Runs saved before this field existed used false.
    intensity_augment: bool = False
    #: per-source training window ``{source: size}`` (<= ``crop``), zero-padded to ``crop``: e.g. BraTS on
    #: 128 px tumour-sized windows while ACDC trains on 224 px crops (run 24, BENCHMARKS.md).
    source_crops: Optional[dict] = None
    #: weight (relative to the stage term) of a hinge that penalises a stage estimate whose L1 error
    #: exceeds the previous one's, per sample: the stages learn to refine monotonically.
    stage_monotone: float = 0.0
    #: what that hinge compares: "l1" (the per-sample L1 error) or "psnr" (the per-sample log MSE, the
    #: quantity the "stages monotone" figure of ``vldun evaluate`` counts; run 26).
    monotone_metric: str = "l1"
    #: with ``monotone_metric`` "psnr": the hinge is zero only when each stage gains at least this many dB
    #: over the previous one (a margin over the 0.01 dB that ``vldun evaluate`` tolerates; run 27).
    monotone_margin_db: float = 0.0
    #: a checkpoint whose CLIP prior tower (``priors.*``) initialises a fresh named model (same clip config and
    #: modalities), so a new architecture need not fine-tune its priors again; None: none.
    init_priors: Optional[str] = None
    #: a checkpoint whose tensors initialise a fresh named model wherever the model has a tensor of the same
    #: name and shape (a warm start across an architecture change, e.g. adding ``stage_feedback``); the others
    #: keep their initialisation and are listed in the log. None: none.
    init_weights: Optional[str] = None
    #: parameter-name prefixes (e.g. ``["seg_head"]``) that train in the joint phase; every other parameter stays
    #: as loaded (a head fine-tuned on a frozen, already trained unfolding network). None: all train.
    train_only: Optional[list] = None
    #: with ``data_consistency``: share of joint-phase steps that give the network its k-space; the other
    #: steps train it on the magnitude image alone (a user file without k-space). Drawn per step from
    #: (seed, step), the same on every rank. Runs saved before this field existed used 1.
    dc_fraction: float = 1.0
    #: "fp32" or "bf16" (autocast, fp32 master weights; scans, data consistency and losses in fp32).
    precision: str = "fp32"
    seed: int = 0
    #: seed of the validation degradations (masks, accelerations), apart from ``seed`` so that runs with
    #: different seeds validate on the same inputs and their figures compare.
    val_seed: int = 0
    out_dir: str = "runs/vldun"
    #: refuse to start in an out_dir holding a checkpoint unless this is set (or resuming).
    overwrite: bool = False
    device: str = "auto"
    #: torch intra-op threads (None: leave torch's default).
    num_threads: Optional[int] = None
    num_workers: int = 0
    best_metric: str = "score"
    #: emit a "step" event every this many steps (and always the last step of an epoch).
    log_every: int = 1

    # ------------------------------------------------------------------ derived values
    @property
    def phase_plan(self) -> list[tuple[str, int]]:
        return [("prior", int(self.prior_epochs)), ("joint", int(self.epochs))]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> "TrainConfig":
        """Build from a dict; keys starting with ``_`` are ignored, other unknown keys raise."""
        d = {k: v for k, v in dict(d).items() if not str(k).startswith("_")}
        unknown = sorted(set(d) - cls.field_names())
        if unknown:
            raise ValueError(f"{source}: unknown training config keys {unknown}; "
                             f"known keys: {sorted(cls.field_names())}")
        cfg = cls(**d)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Load a ``.json`` or ``.toml`` file (TOML: top-level keys, ``[model_overrides]`` table)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} not found")
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            import tomllib

            try:
                d = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: invalid TOML: {exc}") from exc
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: invalid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config must be a table/object of keys")
        return cls.from_dict(d, source=str(path))

    def replace(self, **changes: Any) -> "TrainConfig":
        unknown = sorted(set(changes) - self.field_names())
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), overwrite=True)

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"{source}: {msg}")

        for key in ("sources", "prior_sources", "val_sources"):
            val = getattr(self, key)
            if val is None:
                continue
            if isinstance(val, str):
                val = [val]
                setattr(self, key, val)
            val = list(val)
            setattr(self, key, val)
            unknown = [s for s in val if s not in SOURCES]
            if unknown:
                raise bad(f"{key}: unknown sources {unknown}; known: {sorted(SOURCES)}")
        if self.train_only is not None:  # a bare string would be read as one prefix per character
            names = [self.train_only] if isinstance(self.train_only, str) else list(self.train_only)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise bad(f"train_only must be a list of parameter-name prefixes, got {self.train_only!r}")
            self.train_only = names
        for key in ("crop", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("epochs", "prior_epochs", "warmup_steps", "num_workers"):
            if int(getattr(self, key)) < 0:
                raise bad(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("steps_per_epoch", "prior_steps_per_epoch", "val_max_slices", "max_slices_per_source",
                    "val_crop", "num_threads"):
            v = getattr(self, key)
            if v is not None and int(v) < 1:
                raise bad(f"{key} must be >= 1 or null, got {v}")
        for key in ("rec_weight", "lambda_seg", "stage_weight", "w_mod", "w_deg", "free_weight"):
            if float(getattr(self, key)) < 0:
                raise bad(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= float(self.dc_fraction) <= 1.0:
            raise bad(f"dc_fraction must be in [0, 1], got {self.dc_fraction}")
        if self.lr <= 0 or (self.prior_lr is not None and self.prior_lr <= 0):
            raise bad("lr and prior_lr must be > 0")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise bad(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.prior_view not in PRIOR_VIEWS:
            raise bad(f"prior_view must be one of {PRIOR_VIEWS}, got {self.prior_view!r}")
        for key in ("prior_balance", "joint_balance"):
            v = getattr(self, key)
            if isinstance(v, dict):
                try:
                    check_source_weights(v, self.sources if key == "joint_balance" else self.resolved_prior_sources())
                except ValueError as exc:
                    raise bad(f"{key}: {exc}") from None
            elif v not in (None, "modality", "source"):
                raise bad(f"{key} must be 'modality', 'source', a {{source: weight}} table or null, got {v!r}")
        if self.rec_loss not in REC_LOSSES:
            raise bad(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if not isinstance(self.model_overrides, dict):
            raise bad("model_overrides must be a table/object of VLDUNConfig fields")
        for key in ("accel_range", "noise_sigma_range"):
            v = getattr(self, key)
            if not isinstance(v, dict):
                if len(v) != 2:
                    raise bad(f"{key} must be [lo, hi]")
                setattr(self, key, [float(x) for x in v])
        if self.source_crops is not None:
            try:
                self.source_crops = check_source_crops(self.source_crops, self.sources, self.crop)
            except ValueError as exc:
                raise bad(str(exc)) from None
        if not 0.0 <= float(self.foreground_oversample) <= 1.0:
            raise bad(f"foreground_oversample must be in [0, 1], got {self.foreground_oversample}")
        if float(self.stage_monotone) < 0:
            raise bad(f"stage_monotone must be >= 0, got {self.stage_monotone}")
        try:
            check_monotone(self.monotone_metric, self.monotone_margin_db)
        except ValueError as exc:
            raise bad(str(exc)) from None
        try:
            Precision.parse(self.precision)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if self.log_every < 1:
            raise bad("log_every must be >= 1")

    # ------------------------------------------------------------------ resolved values
    def resolved_val_sources(self) -> list[str]:
        if self.val_sources is not None:
            return list(self.val_sources)
        labelled = [s for s in self.sources if SOURCES[s].label_set is not None]
        return labelled or list(self.sources)

    def resolved_prior_sources(self) -> list[str]:
        return list(self.prior_sources) if self.prior_sources is not None else list(self.sources)
