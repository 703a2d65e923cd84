"""Connected-component postprocessing of label maps, decided on a validation split (nnU-Net's rule).

A :class:`PostprocessRule` says, for one label set, whether to keep only the largest connected component of
the foreground (all labels > 0 together) and of which classes to keep only their largest component. It works on
each 2-D slice alone (8-connectivity), as the network segments slice by slice; removed pixels become background.

:func:`decide_rule` tries the steps in nnU-Net's order on predicted / reference label slices of a validation
split and keeps a step only when it raises the Dice it targets and lowers neither the per-slice nor the
per-volume Dice: a structure that comes in several pieces (lung lesions) keeps all of them. The chosen rules
travel in a checkpoint's JSON ``meta["postprocessing"]`` (:func:`rules_from_meta`, :func:`write_rules`);
:func:`~napari_vldun.inference.iter_predict` applies the chosen label set's rule unless asked not to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .metrics import dice, dice_per_class

_EIGHT = np.ones((3, 3), dtype=bool)
#: a step is kept only when it gains more than this (Dice, 0..1): ties keep the labels as predicted
MIN_GAIN = 1e-4


@dataclass(frozen=True)
class PostprocessRule:
    """``largest_foreground``: keep the largest 2-D component of all labels > 0; ``largest_classes``: for
    each class id listed, keep only its largest 2-D component. The default rule changes nothing."""

    largest_foreground: bool = False
    largest_classes: tuple[int, ...] = ()

    @property
    def is_identity(self) -> bool:
        return not self.largest_foreground and not self.largest_classes

    def describe(self, class_names: list[str] | None = None) -> str:
        """A short sentence for logs and the GUI, e.g. "largest component of: foreground, LV"."""
        if self.is_identity:
            return "none"
        names = ["foreground"] if self.largest_foreground else []
        for c in self.largest_classes:
            names.append(class_names[c] if class_names and c < len(class_names) else f"class {c}")
        return "largest component of: " + ", ".join(names)

    def to_dict(self) -> dict:
        return {"largest_foreground": self.largest_foreground, "largest_classes": list(self.largest_classes)}

    @classmethod
    def from_dict(cls, d: dict) -> PostprocessRule:
        """Refuses anything but ``{"largest_foreground": bool, "largest_classes": [int >= 1, ...]}``."""
        if not isinstance(d, dict):
            raise ValueError(f"a postprocessing rule is a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"largest_foreground", "largest_classes", "report"}
        if unknown:
            raise ValueError(f"postprocessing rule: unknown keys {sorted(unknown)}")
        fg = d.get("largest_foreground", False)
        classes = d.get("largest_classes", [])
        if not isinstance(fg, bool):
            raise ValueError("postprocessing rule: largest_foreground must be true or false")
        if not isinstance(classes, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                                    for c in classes):
            raise ValueError("postprocessing rule: largest_classes must be a list of class ids >= 1")
        return cls(fg, tuple(sorted(set(classes))))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the same with only its largest 8-connected component (ties: the first found)."""
    lab, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def apply_rule(labels: np.ndarray, rule: PostprocessRule | None) -> np.ndarray:
    """Labels (H, W) or (Z, H, W) -> a new array of the same shape and dtype with ``rule`` applied to
    each 2-D slice (the input is not changed)."""
    out = np.array(labels, copy=True)
    if rule is None or rule.is_identity:
        return out
    view = out.reshape(-1, *out.shape[-2:])
    for s in view:
        if rule.largest_foreground:
            s[(s > 0) & ~largest_component(s > 0)] = 0
        for c in rule.largest_classes:
            m = s == c
            if m.any():
                s[m & ~largest_component(m)] = 0
    return out


@dataclass
class RuleScores:
    """Dice of a set of slices: ``slice_mean`` (mean over slices with foreground of the mean Dice of the classes
    present, the evaluation table's figure), ``volume_mean`` (mean over volumes of the Dice of all their slices
    at once, false positives on slices without the class counted; the ACDC challenge's 3-D Dice), and per class
    ``slice_class`` / ``volume_class`` (class id -> mean, where the class is present)."""

    slice_mean: float
    volume_mean: float
    slice_class: dict[int, float] = field(default_factory=dict)
    volume_class: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        r = lambda v: round(float(v), 5)  # noqa: E731
        return {"slice_mean": r(self.slice_mean), "volume_mean": r(self.volume_mean),
                "slice_class": {str(k): r(v) for k, v in self.slice_class.items()},
                "volume_class": {str(k): r(v) for k, v in self.volume_class.items()}}


def score(pred: list[np.ndarray], ref: list[np.ndarray], volumes: list[str], n_classes: int) -> RuleScores:
    """:class:`RuleScores` of 2-D ``pred`` vs ``ref`` slices; ``volumes`` names each slice's volume."""
    if not (len(pred) == len(ref) == len(volumes)) or not pred:
        raise ValueError("score needs as many predicted, reference and volume entries, at least one")
    per_slice, per_class = [], {}
    for p, t in zip(pred, ref):
        if t.any():
            per_slice.append(dice(p, t, n_classes))
            for k, v in dice_per_class(p, t, n_classes).items():
                if v is not None and (t == k).any():
                    per_class.setdefault(k, []).append(v)
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(volumes):
        groups.setdefault(v, []).append(i)
    per_vol, vol_class = [], {}
    for idx in groups.values():
        if len({pred[i].shape for i in idx}) != 1:
            continue  # slices of differing sizes are not one volume
        p, t = np.stack([pred[i] for i in idx]), np.stack([ref[i] for i in idx])
        if t.any():
            per_vol.append(dice(p, t, n_classes))
            for k, v in dice_per_class(p, t, n_classes).items():
                if v is not None and (t == k).any():
                    vol_class.setdefault(k, []).append(v)
    mean = lambda v: float(np.nanmean(v)) if len(v) else float("nan")  # noqa: E731
    return RuleScores(mean(per_slice), mean(per_vol), {k: mean(v) for k, v in sorted(per_class.items())},
                      {k: mean(v) for k, v in sorted(vol_class.items())})


@dataclass
class Decision:
    """The rule :func:`decide_rule` chose, the scores without and with it, and one line per step tried."""

    rule: PostprocessRule
    before: RuleScores
    after: RuleScores
    steps: list[str]

    def to_dict(self) -> dict:
        return {**self.rule.to_dict(), "report": {"before": self.before.to_dict(), "after": self.after.to_dict(),
                                                  "steps": self.steps}}


def _no_loss(new: RuleScores, old: RuleScores) -> bool:
    return new.slice_mean >= old.slice_mean - 1e-9 and new.volume_mean >= old.volume_mean - 1e-9


def decide_rule(pred: list[np.ndarray], ref: list[np.ndarray], volumes: list[str], n_classes: int) -> Decision:
    """nnU-Net's postprocessing choice on validation slices: first the largest foreground component (kept when
    the mean Dice gains more than :data:`MIN_GAIN` on slices or volumes and falls on neither), then for each
    class its largest component (kept when that class's Dice gains on slices or volumes and the means do not
    fall). ``pred``/``ref``: 2-D label slices; ``volumes``: each slice's volume id."""
    pred = [np.asarray(p) for p in pred]
    ref = [np.asarray(t) for t in ref]
    before = score(pred, ref, volumes, n_classes)
    rule, best, steps = PostprocessRule(), before, []
    trial = PostprocessRule(largest_foreground=True)
    s = score([apply_rule(p, trial) for p in pred], ref, volumes, n_classes)
    gain = max(s.slice_mean - best.slice_mean, s.volume_mean - best.volume_mean)
    keep = gain > MIN_GAIN and _no_loss(s, best)
    steps.append(f"largest foreground component: slice Dice {best.slice_mean:.4f} -> {s.slice_mean:.4f}, "
                 f"volume Dice {best.volume_mean:.4f} -> {s.volume_mean:.4f}: {'kept' if keep else 'rejected'}")
    if keep:
        rule, best = trial, s
    for c in range(1, n_classes):
        trial = PostprocessRule(rule.largest_foreground, tuple(sorted({*rule.largest_classes, c})))
        s = score([apply_rule(p, trial) for p in pred], ref, volumes, n_classes)
        gain = max(s.slice_class.get(c, 0.0) - best.slice_class.get(c, 0.0),
                   s.volume_class.get(c, 0.0) - best.volume_class.get(c, 0.0))
        keep = gain > MIN_GAIN and _no_loss(s, best) and c in best.slice_class
        steps.append(f"largest component of class {c}: slice Dice {best.slice_class.get(c, float('nan')):.4f} -> "
                     f"{s.slice_class.get(c, float('nan')):.4f}, volume Dice "
                     f"{best.volume_class.get(c, float('nan')):.4f} -> {s.volume_class.get(c, float('nan')):.4f}: "
                     f"{'kept' if keep else 'rejected'}")
        if keep:
            rule, best = trial, s
    return Decision(rule, before, best, steps)


def rules_from_meta(meta: dict | None) -> dict[str, PostprocessRule]:
    """A checkpoint's ``meta["postprocessing"]`` -> {label set: rule}; ``{}`` when it has none. A malformed
    entry raises ValueError naming it."""
    raw = (meta or {}).get("postprocessing") or {}
    if not isinstance(raw, dict):
        raise ValueError("checkpoint meta 'postprocessing' must map label sets to rules")
    out = {}
    for name, d in raw.items():
        try:
            out[name] = PostprocessRule.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"checkpoint postprocessing for label set {name!r}: {exc}") from None
    return out


def write_rules(checkpoint: str | Path, decisions: dict[str, dict]) -> Path:
    """Store ``decisions`` ({label set: :meth:`Decision.to_dict`}) as ``meta["postprocessing"]`` in the JSON
    half of ``checkpoint`` (written atomically; the weights and their checksum are not touched).
    Returns the JSON path."""
    from .io.atomic import dumps_json, write_with
    from .model.checkpoint import checkpoint_paths

    cpath = checkpoint_paths(checkpoint)[1]
    doc = json.loads(cpath.read_text())
    for d in decisions.values():
        PostprocessRule.from_dict(d)  # refuse a malformed rule before anything is written
    doc.setdefault("meta", {})["postprocessing"] = decisions
    write_with(cpath, lambda tmp: tmp.write_text(dumps_json(doc) + "\n"), overwrite=True)
    return cpath
