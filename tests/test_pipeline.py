"""File-level jobs of :mod:`napari_vldun.pipeline`: the bundled samples, ``degrade_file`` (NIfTI, PNG, the
measurement file), ``predict_file`` (aligned outputs, data consistency from a k-space file), ``run_demo`` and
the intensity round trip (``to_unit_range`` / ``from_unit_range``)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_vldun.degradation.measurement import Measurement
from napari_vldun.inference import InferenceError, LoadedModel, predict
from napari_vldun.io import read_image
from napari_vldun.model import build_model
from napari_vldun.pipeline import degrade_file, list_samples, predict_file, run_demo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_loaded() -> LoadedModel:
    return LoadedModel(build_model("tiny").eval(), torch.device("cpu"), "tiny (test)", True)


def test_samples_are_bundled_with_licences() -> None:
    samples = list_samples()
    assert {"acdc", "brain", "ct"} <= set(samples)
    for name, s in samples.items():
        d = s["dir"]
        clean = nib.load(f"{d}/{s['files']['clean']}").get_fdata()
        labels = nib.load(f"{d}/{s['files']['labels']}").get_fdata()
        assert clean.shape == labels.shape and labels.max() >= 1, name
        assert 0 <= clean.min() and clean.max() <= 1
        assert (__import__("pathlib").Path(d) / s["files"]["licence"]).stat().st_size > 50
        assert s["citation"] and s["licence"]


def test_degrade_file_nifti_and_png(tmp_path) -> None:
    src = list_samples()["acdc"]
    clean = f"{src['dir']}/clean.nii.gz"
    out = degrade_file(clean, tmp_path / "r4.nii.gz", mask="cartesian", accel=4, seed=0)
    assert abs(out["fraction"] - 0.25) < 0.03
    a = nib.load(tmp_path / "r4.nii.gz")
    assert a.shape == nib.load(clean).shape
    np.testing.assert_allclose(a.affine, nib.load(clean).affine)
    with pytest.raises(FileExistsError, match="overwrite"):
        degrade_file(clean, tmp_path / "r4.nii.gz", mask="cartesian", accel=4)
    png_in = tmp_path / "in.npy"
    np.save(png_in, np.asarray(nib.load(clean).dataobj)[..., 5].T.astype(np.float32))
    degrade_file(png_in, tmp_path / "out.png", mask="radial", accel=4)
    assert (tmp_path / "out.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="accel"):
        degrade_file(png_in, tmp_path / "bad.npy", mask="radial", accel=0.5)


def test_kspace_file_round_trip_and_data_consistency(tmp_path, tiny_loaded: LoadedModel) -> None:
    """`degrade --kspace-out` writes the measurement; `predict --kspace` uses it (closer to the clean
    image than without, slice by slice) and refuses a k-space that belongs to another image."""
    from napari_vldun.degradation import ifft2c
    from napari_vldun.metrics import psnr
    from napari_vldun.degradation.measurement import MeasurementError

    s = list_samples()["acdc"]
    ref = np.asarray(nib.load(f"{s['dir']}/clean.nii.gz").dataobj)[64:192, 48:176, 4:6].transpose(2, 1, 0)
    clean = tmp_path / "clean.npy"
    np.save(clean, np.ascontiguousarray(ref, dtype=np.float32))
    degrade_file(clean, tmp_path / "r4.npy", mask="cartesian", accel=4, seed=5, kspace_out=tmp_path / "r4.npz")
    meas = Measurement.load(tmp_path / "r4.npz")
    k, m = meas.kspace, meas.mask
    deg = np.load(tmp_path / "r4.npy")
    assert k.shape == deg.shape == ref.shape == m.shape and abs(meas.fraction - 0.25) < 0.03
    assert meas.kind == "cartesian" and meas.mismatch(deg) < 1e-5
    assert (tmp_path / "r4.npz").stat().st_size < 0.5 * k.nbytes  # only the sampled entries are stored
    np.testing.assert_allclose(np.abs(np.asarray(ifft2c(k))), deg, atol=1e-5)
    runs = {}
    for name, kspace in (("dc", tmp_path / "r4.npz"), ("free", None)):
        runs[name] = predict_file(tmp_path / "r4.npy", tmp_path / name, loaded=tiny_loaded, progress=False,
                                  clean=clean, kspace=kspace)
    assert runs["dc"]["data_consistency"] and not runs["free"]["data_consistency"]
    out = {n: read_image(tmp_path / n / "restored.nii.gz").data for n in runs}  # (Z, H, W)
    assert out["dc"].shape == ref.shape
    for z in range(ref.shape[0]):
        assert psnr(out["dc"][z], ref[z]) >= psnr(out["free"][z], ref[z]) - 1e-3
    assert runs["dc"]["metrics"]["psnr"] > runs["free"]["metrics"]["psnr"] + 0.5
    assert runs["dc"]["cascades"] == tiny_loaded.model.cfg.cascades and runs["free"]["cascades"] == 1
    two = predict_file(tmp_path / "r4.npy", tmp_path / "two", loaded=tiny_loaded, progress=False, clean=clean,
                       kspace=tmp_path / "r4.npz", cascades=2)
    assert two["cascades"] == 2
    out2 = read_image(tmp_path / "two" / "restored.nii.gz").data
    direct = predict(tiny_loaded, deg, measurement=meas, cascades=2).restored
    assert np.abs(out2 - out["dc"]).max() > 1e-4  # a second pass changes the image ...
    np.testing.assert_allclose(out2, direct, atol=1e-4)  # ... exactly as iter_predict(cascades=2) does
    # the same weights with a per-mask-kind default: the Cartesian acquisition gets (and reports) its count
    by_kind = LoadedModel(build_model("tiny", cascades_by_mask={"cartesian": 2}).eval(), torch.device("cpu"),
                          "tiny (test)", True)
    kind = predict_file(tmp_path / "r4.npy", tmp_path / "kind", loaded=by_kind, progress=False,
                        kspace=tmp_path / "r4.npz")
    assert kind["cascades"] == 2
    np.testing.assert_allclose(read_image(tmp_path / "kind" / "restored.nii.gz").data, out2, atol=1e-4)
    with pytest.raises(InferenceError, match="cascades"):
        predict_file(tmp_path / "r4.npy", tmp_path / "zero", loaded=tiny_loaded, progress=False,
                     kspace=tmp_path / "r4.npz", cascades=0)
    degrade_file(clean, tmp_path / "r8.npy", mask="cartesian", accel=8, seed=5)
    with pytest.raises(InferenceError, match="does not belong"):
        predict_file(tmp_path / "r8.npy", tmp_path / "bad", loaded=tiny_loaded, progress=False,
                     kspace=tmp_path / "r4.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MeasurementError, match="junk.npz"):
        Measurement.load(tmp_path / "junk.npz")
    with pytest.raises(InferenceError, match="do not match"):
        predict(tiny_loaded, deg[0], measurement=meas)
    with pytest.raises(InferenceError, match="must be a Measurement"):
        predict(tiny_loaded, deg, measurement=(k, m))


def test_predict_file_writes_aligned_outputs(tmp_path, tiny_loaded: LoadedModel) -> None:
    s = list_samples()["ct"]
    summary = predict_file(f"{s['dir']}/degraded.nii.gz", tmp_path / "out", labels=f"{s['dir']}/labels.nii.gz",
                           clean=f"{s['dir']}/clean.nii.gz", loaded=tiny_loaded, progress=False, stages=True)
    ref = nib.load(f"{s['dir']}/degraded.nii.gz")
    for name in ("restored.nii.gz", "labels.nii.gz"):
        img = nib.load(tmp_path / "out" / name)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["label_set"] == "covid_ct"
    assert {"psnr", "ssim", "psnr_input", "dice", "iou"} <= set(doc["metrics"])
    assert summary["random_weights"] and "random weights" in summary["warning"]
    assert nib.load(tmp_path / "out" / "stages_full.nii.gz").shape[-1] == tiny_loaded.model.cfg.num_stages
    with pytest.raises(FileExistsError):
        predict_file(f"{s['dir']}/degraded.nii.gz", tmp_path / "out", loaded=tiny_loaded, progress=False)


def test_demo_runs_on_a_bundled_sample(tmp_path) -> None:
    """The CT sample (radial mask) runs the shipped checkpoint's pass count for radial masks (its default when
    it names none)."""
    from napari_vldun.inference import SHIPPED_WEIGHTS
    from napari_vldun.model.checkpoint import read_checkpoint_config

    summary = run_demo(tmp_path / "demo", sample="ct", device="cpu")
    assert (tmp_path / "demo" / "overview.png").stat().st_size > 10_000
    m = summary["metrics"]
    assert m["psnr_input"] > 10 and 0 <= m["dice"] <= 1 and m["psnr"] > m["psnr_input"]
    cfg = read_checkpoint_config(SHIPPED_WEIGHTS)[0]
    assert summary["data_consistency"] and summary["cascades"] == cfg.cascades_by_mask.get("radial", cfg.cascades)
    with pytest.raises(InferenceError, match="unknown sample"):
        run_demo(tmp_path / "x", sample="liver")


def test_constant_mri_volume_round_trips_units() -> None:
    """A constant MRI image normalises to zeros; mapping back gives its own value (not ~0)."""
    from napari_vldun.io import Volume
    from napari_vldun.pipeline import from_unit_range, to_unit_range

    unit, params = to_unit_range(Volume(data=np.full((2, 16, 16), 300.0, np.float32), spacing=(1.0, 1.0, 1.0)))
    assert unit.max() == 0.0
    np.testing.assert_array_equal(from_unit_range(unit, params), np.full((2, 16, 16), 300.0, np.float32))
    ct, p = to_unit_range(Volume(data=np.array([[-1000.0, 0.0], [500.0, 1000.0]] * 8, np.float32), spacing=(1, 1),
                                 modality="CT"))
    np.testing.assert_allclose(from_unit_range(ct, p)[0], [-1000.0, 0.0], atol=1e-3)
