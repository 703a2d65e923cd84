"""Qt-free parts of the napari layer: the reader's label detection, the intensity map back to the input's
units (shared by ``vldun predict`` and the Restore dock) and the dock helpers of ``_widgets._logic``.
No display is needed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vldun._reader import label_values_like, layers_from_file
from napari_vldun.pipeline import restore_units, to_unit_range


# --------------------------------------------------------------------------- reader: label volumes
def test_integer_volume_without_label_name_opens_as_labels(shared_data, tmp_path):
    """BraTS ``OTMultiClass`` (0..4, no "label" in its name) is a Labels layer; its images stay Images."""
    from napari_vldun.io import read_image, write_nifti

    case = shared_data / "brats2015" / "brats_2013_pat0003_1"
    seg = read_image(case / "OTMultiClass.nii.gz")
    assert set(np.unique(seg.data)) <= {0, 1, 2, 3, 4}
    # a small crop of it (two slices), as float and as uint8, under a name without "label"
    z = int(np.argmax((seg.data > 0).reshape(seg.data.shape[0], -1).sum(1)))
    crop = np.ascontiguousarray(seg.data[z:z + 2])
    for dtype in (np.float32, np.uint8):
        path = tmp_path / f"case01_{np.dtype(dtype).name}.nii.gz"
        write_nifti(crop.astype(dtype), path)
        (data, kwargs, kind), = layers_from_file(path)
        assert kind == "labels", dtype
        np.testing.assert_array_equal(np.asarray(data), crop)
        assert kwargs["metadata"]["vldun_volume"]["shape"] == crop.shape
    (_, _, kind), = layers_from_file(case / "OTMultiClass.nii.gz")
    assert kind == "labels"
    flair = read_image(case / "Flair_subtrMeanDivStd.nii.gz").data[z:z + 2]
    write_nifti(flair, tmp_path / "flair.nii.gz")
    assert [k for *_, k in layers_from_file(tmp_path / "flair.nii.gz")] == ["image"]
    # an int16 MRI has thousands of values: an Image
    assert [k for *_, k in layers_from_file(shared_data / "pyradiomics_mri" / "brain1_image.nrrd")] == ["image"]


@pytest.mark.parametrize("data,expected", [
    (np.array([[0, 1], [2, 4]], np.int16), True),
    (np.array([[0.0, 1.0], [3.0, 3.0]], np.float32), True),
    (np.array([[1, 2], [3, 4]], np.uint8), False),  # no background
    (np.array([[0, -1], [2, 3]], np.int16), False),  # negative
    (np.array([[0.0, 0.5], [1.0, 1.0]], np.float32), False),  # not integer valued
    (np.arange(64, dtype=np.int16).reshape(8, 8), False),  # too many values
])
def test_label_values_like(data, expected):
    assert label_values_like(data) is expected


# --------------------------------------------------------------------------- intensities outside the window
def _brain_crop() -> np.ndarray:
    """Two slices (64 x 64) of pyradiomics ``brain1`` (int16 T1c) around its brightest voxel."""
    from napari_vldun.io import read_image

    from conftest import SHARED_DATA

    path = SHARED_DATA / "pyradiomics_mri" / "brain1_image.nrrd"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.asarray(read_image(path).data)
    z, y, x = np.unravel_index(int(np.argmax(data)), data.shape)
    y0, x0 = min(max(y - 32, 0), data.shape[1] - 64), min(max(x - 32, 0), data.shape[2] - 64)
    z0 = min(max(z - 1, 0), data.shape[0] - 2)
    return np.ascontiguousarray(data[z0:z0 + 2, y0:y0 + 64, x0:x0 + 64])


def test_restore_units_keeps_what_the_window_clipped():
    """An identity network gives the input back exactly, bright voxels above the window included."""
    from napari_vldun.io.volume import Volume

    crop = _brain_crop()
    unit, params = to_unit_range(Volume(data=crop, spacing=(1.0, 1.0, 1.0), meta={"original_dtype": "int16"}))
    assert params["method"] == "mri" and crop.max() > params["hi"] + 100  # the window clipped the bright voxels
    np.testing.assert_allclose(restore_units(unit, params, crop, unit), crop, atol=1e-2)
    np.testing.assert_allclose(restore_units(unit, params, crop), crop, atol=1e-2)  # seen = the clipped rescale
    # inside the window the output is the linear map of the network's values, outside the input's excess is added
    out = restore_units(np.full_like(unit, 0.5), params, crop, unit)
    mid = 0.5 * (params["hi"] - params["lo"]) + params["lo"]
    inside = (crop >= params["lo"]) & (crop <= params["hi"])
    np.testing.assert_allclose(out[inside], mid, atol=1e-2)
    above = crop > params["hi"]
    np.testing.assert_allclose(out[above], mid + crop[above] - params["hi"], atol=1e-2)
    # data already in [0, 1] (method "none") was seen unclipped: nothing is added
    x = np.array([[0.2, 1.2]], np.float32)
    np.testing.assert_allclose(restore_units(x, {"method": "none", "lo": 0.0, "hi": 1.0}, x), x)


def test_predict_file_keeps_the_maximum_of_a_brain(tmp_path):
    """`vldun predict` on two slices of a real brain MRI: the restored maximum is the input's, not the
    99.5th percentile the network's window stops at."""
    from napari_vldun.io import read_image, write_nifti
    from napari_vldun.pipeline import predict_file

    crop = _brain_crop()
    write_nifti(crop.astype(np.int16), tmp_path / "brain.nii.gz")
    summary = predict_file(tmp_path / "brain.nii.gz", tmp_path / "out", device="cpu", progress=False)
    hi = summary["normalisation"]["hi"]
    restored = np.asarray(read_image(tmp_path / "out" / "restored.nii.gz").data)
    assert crop.max() > hi + 100
    assert restored.max() == pytest.approx(crop.max(), rel=0.05)
    assert restored.max() > hi + 0.5 * (crop.max() - hi)


# --------------------------------------------------------------------------- dock helpers
def test_chosen_slices():
    from napari_vldun._widgets._logic import chosen_slices

    assert chosen_slices(8, "all slices") is None
    assert chosen_slices(8, "current slice", current=9) == [7]
    assert chosen_slices(8, "slice range", first=5, last=2) == [2, 3, 4, 5]
    assert chosen_slices(8, "slice range", first=6, last=20) == [6, 7]
    assert chosen_slices(1, "current slice", current=0) is None  # a 2-D image is one slice
    with pytest.raises(ValueError, match="outside"):
        chosen_slices(4, "slice range", first=5, last=9)


def test_fill_slices_keeps_earlier_slices():
    from napari_vldun._widgets._logic import computed_slices, fill_slices

    first, done = fill_slices((4, 2, 2), [1], np.ones((1, 2, 2)), np.nan, np.float32)
    assert done == [1] and np.isnan(first[[0, 2, 3]]).all()
    second, done = fill_slices((4, 2, 2), [3], np.full((1, 2, 2), 2.0), np.nan, np.float32, first, done)
    assert done == [1, 3]
    np.testing.assert_array_equal(second[[1, 3], 0, 0], [1.0, 2.0])
    assert np.isnan(second[[0, 2]]).all()
    assert computed_slices({"slices_done": [3, 1, 9]}, 4) == [1, 3]
    assert computed_slices({}, 3) == [0, 1, 2]


def test_measurement_text():
    from napari_vldun._widgets._logic import measurement_text

    assert measurement_text(True, 3) == "with recorded k-space, 3 passes"
    assert measurement_text(True, 1) == "with recorded k-space, 1 pass"
    assert measurement_text(False, 1) == "image only"


def test_progress_text_elapsed_and_time_left():
    from napari_vldun._widgets._logic import device_hint, duration_text, progress_text, time_left

    assert time_left(0, 5, 3.0) is None
    assert time_left(2, 5, 4.0) == pytest.approx(6.0)
    assert time_left(5, 5, 9.0) == 0.0
    assert [duration_text(s) for s in (4.25, 42.4, 185, 3725)] == ["4.2 s", "42 s", "3 min 05 s", "1 h 02 min"]
    # the rate comes from the slices alone (model loading is not a slice)
    assert progress_text(2, 5, 10.0, 4.0, "cpu") == "slice 2 / 5 on cpu: 10 s elapsed, about 6.0 s left"
    assert progress_text(5, 5, 10.0) == "slice 5 / 5: 10 s elapsed"
    assert "CUDA GPU is available" in device_hint("cpu", True)
    assert device_hint("cpu", False) == device_hint("auto", True) == device_hint("cuda", True) == ""


def test_samples_carry_their_real_spacing_or_none():
    """BraTS is 1 mm isotropic at its source; the ACDC HDF5 volumes and the COVID JPEGs store no spacing, so
    their layers give no volume in mL (known_spacing is None) until the user sets a scale."""
    from napari.layers import Image

    from napari_vldun._sample_data import sample_layers
    from napari_vldun._widgets._layers import known_spacing
    from napari_vldun.measure import label_measurements

    for name, spacing in (("brain", (1.0, 1.0, 1.0)), ("acdc", None), ("ct", None)):
        data, kw, _ = sample_layers(name)[0]
        layer = Image(data, **{k: v for k, v in kw.items() if k in ("scale", "metadata", "name")})
        assert known_spacing(layer) == spacing, name
        assert kw["metadata"]["vldun_sample"]["spacing_note"]
    acdc = sample_layers("acdc")[0]
    assert known_spacing(Image(acdc[0], scale=(10.0, 1.5, 1.5), metadata=acdc[1]["metadata"])) == (10.0, 1.5, 1.5)
    assert known_spacing(Image(np.zeros((2, 4, 4)))) is None  # a bare array: no spacing
    rows = label_measurements(np.array([[[0, 1], [1, 2]]]), None, None, ["bg", "a", "b"])
    assert [r["voxels"] for r in rows] == [2, 1] and all(np.isnan(r["volume_ml"]) for r in rows)
    assert all(np.isnan(a) for r in rows for a in r["area_mm2"])
