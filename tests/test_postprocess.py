"""Connected-component postprocessing: the rule, its choice on real label maps, and inference applying it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_vldun.metrics import dice
from napari_vldun.postprocess import (PostprocessRule, apply_rule, decide_rule, largest_component,
                                      rules_from_meta, write_rules)


def _with_blob(label: np.ndarray, cls: int) -> np.ndarray:
    """``label`` plus a 6 x 6 square of class ``cls`` in the corner farthest from the heart."""
    p = label.copy()
    ys, xs = np.nonzero(label)
    y0 = 2 if ys.mean() > label.shape[0] / 2 else label.shape[0] - 8
    x0 = 2 if xs.mean() > label.shape[1] / 2 else label.shape[1] - 8
    p[y0:y0 + 6, x0:x0 + 6] = cls
    return p


def test_largest_component_keeps_one_8_connected_piece() -> None:
    m = np.zeros((10, 10), bool)
    m[1:4, 1:4] = True  # 9 px
    m[4, 4] = True      # touches the square by a corner: the same piece under 8-connectivity
    m[7:9, 7:9] = True  # 4 px, separate
    kept = largest_component(m)
    assert kept.sum() == 10 and kept[4, 4] and not kept[7:9, 7:9].any()
    assert largest_component(np.zeros((4, 4), bool)).sum() == 0


def test_the_rule_removes_a_false_blob_from_a_real_acdc_label_and_raises_dice(acdc_labelled) -> None:
    _, ref = acdc_labelled[0]
    noisy = _with_blob(ref, 3)
    before = dice(noisy, ref, 4)
    fixed = apply_rule(noisy, PostprocessRule(largest_foreground=True))
    assert np.array_equal(fixed, ref) and dice(fixed, ref, 4) > before
    assert np.array_equal(noisy, _with_blob(ref, 3))  # the input is not changed
    # per class: only the LV's extra piece goes; a volume (Z, H, W) is handled slice by slice
    vol = np.stack([noisy, ref])
    out = apply_rule(vol, PostprocessRule(largest_classes=(3,)))
    assert out.shape == vol.shape and np.array_equal(out[0], ref) and np.array_equal(out[1], ref)
    assert np.array_equal(apply_rule(noisy, PostprocessRule()), noisy)


def test_decide_keeps_a_step_only_where_it_raises_dice(acdc_labelled) -> None:
    pairs = acdc_labelled
    refs = [lab for _, lab in pairs]
    vols = [f"v{i // 2}" for i in range(len(refs))]
    # spurious LV-class blobs away from the heart: removing the smaller foreground pieces helps
    noisy = [_with_blob(r, 3) for r in refs]
    d = decide_rule(noisy, refs, vols, 4)
    assert d.rule == PostprocessRule(largest_foreground=True)  # the class steps gain nothing after it
    assert d.after.slice_mean == 1.0 > d.before.slice_mean and d.after.volume_mean > d.before.volume_mean
    assert len(d.steps) == 4 and "kept" in d.steps[0]
    # an LV-class piece inside the RV touches the heart: only the LV's own step removes it
    inside = []
    for r in refs:
        p = r.copy()
        ys, xs = np.nonzero(r == 1)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        p[cy - 1:cy + 2, cx - 1:cx + 2] = np.where(r[cy - 1:cy + 2, cx - 1:cx + 2] == 1, 3, r[cy - 1:cy + 2, cx - 1:cx + 2])
        inside.append(p)
    d = decide_rule(inside, refs, vols, 4)
    assert 3 in d.rule.largest_classes and d.after.slice_class[3] > d.before.slice_class[3]
    # a perfect prediction gains nothing: no step is kept
    assert decide_rule(refs, refs, vols, 4).rule.is_identity


def test_decide_keeps_lesions_that_come_in_several_pieces(shared_data: Path) -> None:
    """Real COVID infection masks have several lesions: keeping the largest one would lose the others."""
    pil = pytest.importorskip("PIL.Image")
    from scipy import ndimage

    files = sorted((shared_data / "covid_ct" / "train").glob("**/LungInfection-Train/Doctor-label/GT/*.png"))
    refs = []
    for f in files:
        with pil.open(f) as im:
            lab = (np.asarray(im.convert("L")) > 127).astype(np.uint8)
        if ndimage.label(lab, structure=np.ones((3, 3)))[1] >= 3:
            refs.append(lab)
        if len(refs) == 4:
            break
    if len(refs) < 4:
        pytest.skip("not enough multi-lesion COVID masks")
    d = decide_rule(refs, refs, [str(i) for i in range(4)], 2)
    assert d.rule.is_identity
    lossy = apply_rule(refs[0], PostprocessRule(largest_foreground=True))
    assert dice(lossy, refs[0], 2) < 1.0  # the step it refused would have cost Dice


def test_rules_round_trip_and_malformed_rules_are_refused() -> None:
    r = PostprocessRule(True, (3, 1))
    assert PostprocessRule.from_dict(r.to_dict()) == PostprocessRule(True, (1, 3))
    assert rules_from_meta({"postprocessing": {"acdc": r.to_dict()}}) == {"acdc": PostprocessRule(True, (1, 3))}
    assert rules_from_meta({}) == {} and rules_from_meta(None) == {}
    for bad in ({"largest_foreground": "yes"}, {"largest_classes": [0]}, {"largest_classes": 3}, {"keep": 1}):
        with pytest.raises(ValueError, match="postprocessing"):
            rules_from_meta({"postprocessing": {"acdc": bad}})


def test_inference_applies_the_checkpoints_rule_for_its_label_set(acdc_labelled, tmp_path: Path) -> None:
    from napari_vldun.inference import InferenceError, load_model, predict
    from napari_vldun.model.checkpoint import checkpoint_paths, load_checkpoint
    from napari_vldun.inference import SHIPPED_WEIGHTS

    w, c = checkpoint_paths(SHIPPED_WEIGHTS)
    shutil.copy(w, tmp_path / "m.safetensors")
    shutil.copy(c, tmp_path / "m.json")
    img = acdc_labelled[0][0][:96, :96]
    plain = load_model(tmp_path / "m", "cpu")
    raw = predict(plain, img, label_set="acdc", postprocess=False)
    rule = PostprocessRule(largest_foreground=True, largest_classes=(1, 2, 3))
    write_rules(tmp_path / "m", {"acdc": rule.to_dict()})
    load_checkpoint(tmp_path / "m")  # the weights' checksum still matches
    loaded = load_model(tmp_path / "m", "cpu")
    p = predict(loaded, img, label_set="acdc")
    assert p.postprocessing == rule and np.array_equal(p.labels, apply_rule(raw.labels, rule))
    assert np.array_equal(predict(loaded, img, label_set="acdc", postprocess=False).labels, raw.labels)
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["meta"]["postprocessing"] = {"acdc": {"largest_classes": "LV"}}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(InferenceError, match="acdc"):
        predict(load_model(tmp_path / "m", "cpu"), img, label_set="acdc")
