"""npe2 reader / writers: files -> napari layers -> NIfTI, geometry kept (no Qt needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image, Labels, Layer  # noqa: E402

from napari_vldun._reader import napari_get_reader  # noqa: E402
from napari_vldun._writer import write_image, write_labels  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _discover_plugin():
    """Make sure napari's plugin manager knows this package (installed, editable)."""
    import npe2

    pm = npe2.PluginManager.instance()
    if "napari-vldun" not in {m.name for m in pm.iter_manifests()}:
        pm.discover()
    if "napari-vldun" not in {m.name for m in pm.iter_manifests()}:
        pytest.skip("napari-vldun is not installed as a napari plugin (pip install -e .)")


def _nifti(path: Path, data_zyx: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    """Save (Z, Y, X) data as NIfTI (stored X, Y, Z) with ``affine``."""
    img = nib.Nifti1Image(np.ascontiguousarray(data_zyx.transpose(2, 1, 0)).astype(dtype), affine)
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    nib.save(img, str(path))
    return path


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _read(path) -> list[tuple]:
    reader = napari_get_reader(str(path))
    assert callable(reader), path
    return reader(str(path))


def _layer(t: tuple) -> Layer:
    return Layer.create(*t)


def _rng_volume(shape=(4, 20, 30), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 1000 - 200


# ------------------------------------------------------------------ which paths are ours
def test_get_reader_claims_medical_formats_only(tmp_path):
    for name in ("a.nii", "a.nii.gz", "b.NII.GZ", "c.nrrd", "d.nhdr", "e.dcm", "f.h5", "g.hdf5"):
        assert napari_get_reader(str(tmp_path / name)) is not None, name
    for name in ("a.png", "a.tif", "a.txt", "a.npy", "a.zarr"):
        assert napari_get_reader(str(tmp_path / name)) is None, name
    empty = tmp_path / "not_dicom"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    assert napari_get_reader(str(empty)) is None
    assert napari_get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) is not None
    assert napari_get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.txt")]) is None


# ------------------------------------------------------------------ NIfTI round trips
@pytest.mark.parametrize("kind", ["ras", "las", "oblique"])
def test_nifti_layer_nifti_round_trip(tmp_path, kind):
    data = _rng_volume()
    spacing_xyz = np.array([0.7, 0.8, 2.5])
    lin = np.diag(spacing_xyz)
    if kind == "las":
        lin = np.diag([-0.7, 0.8, 2.5])
    elif kind == "oblique":
        lin = _rot_z(30) @ np.diag(spacing_xyz)
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = (-50.0, 30.0, 12.0)
    src = _nifti(tmp_path / "in.nii.gz", data, aff)

    (t,) = _read(src)
    assert t[2] == "image"
    np.testing.assert_array_equal(t[0], data)
    layer = _layer(t)
    assert isinstance(layer, Image)
    np.testing.assert_allclose(layer.scale, spacing_xyz[::-1], rtol=1e-6)  # data axis order (z, y, x)
    if kind == "oblique":
        assert not np.allclose(layer.affine.affine_matrix, np.eye(4))
        # napari's data -> world equals the file's affine in data axis order (world S, A, R)
        from napari_vldun.io.volume import REVERSE3

        m = REVERSE3 @ aff @ REVERSE3
        for idx in ((0, 0, 0), (3, 19, 29), (1, 5, 7)):
            np.testing.assert_allclose(layer.data_to_world(idx), (m @ [*idx, 1.0])[:3], atol=1e-6)
    else:
        np.testing.assert_allclose(layer.translate, (12.0, 30.0, -50.0))
        np.testing.assert_allclose(layer.affine.affine_matrix, np.eye(4))

    viewer = ViewerModel()
    viewer.add_layer(layer)
    out = tmp_path / "out.nii.gz"
    viewer.layers.save(str(out), plugin="napari-vldun")
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), data)
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)
    assert back.get_data_dtype() == np.float32

    # without our metadata the affine is rebuilt from the layer's own transform
    bare = Layer.create(np.asarray(layer.data), {"scale": layer.scale, "translate": layer.translate,
                                                 "affine": layer.affine.affine_matrix}, "image")
    out2 = tmp_path / "out2.nii.gz"
    write_image(str(out2), bare.data, bare._get_state())
    back2 = nib.load(str(out2))
    np.testing.assert_array_equal(np.asarray(back2.dataobj).transpose(2, 1, 0), data)
    if kind == "las":  # the flip is not shown by napari (documented), spacing and origin are kept
        np.testing.assert_allclose(np.abs(back2.affine[:3, :3]), np.abs(aff[:3, :3]), atol=1e-6)
        np.testing.assert_allclose(back2.affine[:3, 3], aff[:3, 3], atol=1e-6)
    else:
        np.testing.assert_allclose(back2.affine, aff, atol=1e-5)


def test_layer_moved_after_reading_writes_its_new_place(tmp_path):
    data = _rng_volume((3, 16, 16))
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    (t,) = _read(_nifti(tmp_path / "a.nii.gz", data, aff))
    layer = _layer(t)
    layer.scale = (6.0, 2.0, 2.0)  # the user changed the geometry: the layer wins
    out = tmp_path / "b.nii.gz"
    write_image(str(out), layer.data, layer._get_state())
    np.testing.assert_allclose(np.diag(nib.load(str(out)).affine)[:3], (2.0, 2.0, 6.0))


def test_nifti_2d_round_trip(tmp_path):
    data = _rng_volume((24, 32))
    aff = np.diag([0.5, 0.6, 1.0, 1.0])
    aff[:3, 3] = (5, 6, 7)
    img = nib.Nifti1Image(data.T.copy(), aff)
    nib.save(img, str(tmp_path / "slice.nii.gz"))
    (t,) = _read(tmp_path / "slice.nii.gz")
    layer = _layer(t)
    assert layer.ndim == 2
    np.testing.assert_allclose(layer.scale, (0.6, 0.5))
    np.testing.assert_allclose(layer.translate, (6, 5))
    out = tmp_path / "out.nii.gz"
    write_image(str(out), layer.data, layer._get_state())
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(back.dataobj).T, data)
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)


def test_labels_file_opens_as_labels_and_round_trips(tmp_path):
    lab = np.zeros((3, 16, 20), np.uint8)
    lab[1, 4:9, 5:12] = 2
    lab[2, 1:3, 1:3] = 1
    aff = np.diag([0.9, 0.9, 4.0, 1.0])
    src = _nifti(tmp_path / "case_seg.nii.gz", lab, aff, dtype=np.uint8)
    (t,) = _read(src)
    assert t[2] == "labels"
    layer = _layer(t)
    assert isinstance(layer, Labels) and layer.data.dtype == np.uint8
    viewer = ViewerModel()
    viewer.add_layer(layer)
    out = tmp_path / "labels_out.nii.gz"
    viewer.layers.save(str(out), plugin="napari-vldun")
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), lab)
    np.testing.assert_allclose(back.affine, aff)
    # the same via the writer function on any labels layer
    out2 = tmp_path / "labels_out2.nii"
    assert write_labels(str(out2), layer.data, layer._get_state()) == [str(out2)]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out2)).dataobj).transpose(2, 1, 0), lab)


def test_viewer_open_uses_our_reader(tmp_path):
    data = _rng_volume((2, 12, 14))
    src = _nifti(tmp_path / "vol.nii.gz", data, np.diag([1.5, 1.5, 5.0, 1.0]))
    viewer = ViewerModel()
    (layer,) = viewer.open(str(src), plugin="napari-vldun")
    assert layer.name == "vol"
    np.testing.assert_allclose(layer.scale, (5.0, 1.5, 1.5))
    assert layer.metadata["vldun_volume"]["meta"]["format"] == "nifti"


# ------------------------------------------------------------------ other formats
def test_h5_image_and_label(tmp_path):
    h5py = pytest.importorskip("h5py")
    img = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    lab = (img > 0.7).astype(np.uint8) * 3
    with h5py.File(tmp_path / "patient001_frame01.h5", "w") as f:
        f["image"] = img
        f["label"] = lab
    out = _read(tmp_path / "patient001_frame01.h5")
    assert [t[2] for t in out] == ["image", "labels"]
    np.testing.assert_array_equal(out[0][0], img)
    np.testing.assert_array_equal(out[1][0], lab)
    assert out[1][1]["name"] == "patient001_frame01 labels"
    np.testing.assert_allclose(_layer(out[0]).scale, (1, 1, 1))


def test_nrrd_spacing(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    data = _rng_volume((4, 10, 12))
    header = {"space": "left-posterior-superior",
              "space directions": np.diag([0.5, 0.6, 3.0]),  # x, y, z (fastest first)
              "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "v.nrrd"), data, header, index_order="C")
    (t,) = _read(tmp_path / "v.nrrd")
    layer = _layer(t)
    np.testing.assert_array_equal(layer.data, data)
    np.testing.assert_allclose(layer.scale, (3.0, 0.6, 0.5))


def _dicom_series(folder: Path, n: int = 3, shape=(16, 18)) -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    vol = (np.arange(n * shape[0] * shape[1]).reshape(n, *shape) % 400).astype(np.uint16)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = shape
        ds.PixelSpacing = [0.7, 0.75]
        ds.SliceThickness = 2.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.InstanceNumber = k + 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -100
        ds.PixelData = vol[k].tobytes()
        ds.save_as(str(folder / f"s{k}.dcm"), enforce_file_format=True)
    return vol.astype(np.float32) - 100


def test_dicom_folder(tmp_path):
    expected = _dicom_series(tmp_path / "series")
    assert napari_get_reader(str(tmp_path / "series")) is not None
    (t,) = _read(tmp_path / "series")
    layer = _layer(t)
    np.testing.assert_array_equal(layer.data, expected)
    np.testing.assert_allclose(layer.scale, (2.0, 0.7, 0.75))
    assert layer.metadata["vldun_volume"]["modality"] == "CT"
    out = tmp_path / "ct.nii.gz"
    write_image(str(out), layer.data, layer._get_state())
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), expected)
    assert nib.aff2axcodes(back.affine) == ("L", "P", "S")  # DICOM LPS kept in the RAS affine


def test_unreadable_file_raises_clear_error(tmp_path):
    from napari_vldun.io import ImageReadError

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        _read(bad)
