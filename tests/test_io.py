"""Tests for napari_vldun.io on the real images in /work/shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from napari_vldun.io import (  # noqa: E402
    SUPPORTED_SUFFIXES, ImageReadError, Volume, normalize, normalize_ct,
    normalize_mri, read_image, read_label, write_nifti, write_png,
)
from napari_vldun.io.normalize import CT_WINDOWS, normalize_minmax  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")

CT_NII = DATA / "totalseg_ct_mr" / "example_ct_sm.nii.gz"
SEG_NII = DATA / "totalseg_ct_mr" / "example_seg.nii.gz"
MR_NII = DATA / "totalseg_ct_mr" / "example_mr_sm.nii.gz"
SPINE_T2 = DATA / "spinalcord_mri" / "t2" / "t2.nii.gz"
SPINE_T2_SEG = DATA / "spinalcord_mri" / "t2" / "t2_seg-manual.nii.gz"
BRAIN_NRRD = DATA / "pyradiomics_mri" / "brain1_image.nrrd"
BRAIN_LABEL = DATA / "pyradiomics_mri" / "brain1_label.nrrd"
BREAST_LABEL = DATA / "pyradiomics_mri" / "breast1_label.nrrd"
CT_DCM = DATA / "dcmqi_ct" / "ct-3slice"
LIVER_NRRD = DATA / "dcmqi_ct" / "liver_seg.nrrd"
COVID = DATA / "covid_ct" / "train"


# ------------------------------------------------------------------ NIfTI
@needs_data
@pytest.mark.parametrize("path", [CT_NII, MR_NII, SPINE_T2])
def test_nifti_axes_and_spacing(path: Path) -> None:
    ref = nib.load(str(path))
    vol = read_image(path)
    assert isinstance(vol, Volume) and vol.data.dtype == np.float32
    x, y, z = ref.shape
    assert vol.shape == (z, y, x)  # (X, Y, Z) on disk -> (Z, Y, X)
    assert vol.meta["transpose"] == (2, 1, 0)
    np.testing.assert_allclose(vol.spacing, ref.header.get_zooms()[::-1])
    np.testing.assert_array_equal(vol.data, ref.get_fdata().transpose(2, 1, 0))
    # affine maps data index (z, y, x) to the same world point as NIfTI (i=x, j=y, k=z)
    idx = np.array([2, 3, 1])  # (z, y, x)
    world = vol.affine @ np.r_[idx, 1.0]
    np.testing.assert_allclose(world, ref.affine @ np.r_[idx[::-1], 1.0])


@needs_data
@pytest.mark.parametrize("path", [CT_NII, SPINE_T2])
def test_nifti_round_trip_exact(path: Path, tmp_path: Path) -> None:
    ref = nib.load(str(path))
    vol = read_image(path)
    out = write_nifti(vol.data, tmp_path / "img.nii.gz", like=vol)
    back = nib.load(str(out))
    assert back.shape == ref.shape
    np.testing.assert_array_equal(back.get_fdata(), ref.get_fdata())
    np.testing.assert_array_equal(back.affine, ref.affine)
    assert back.get_data_dtype() == np.float32
    # re-reading gives the same Volume geometry
    again = read_image(out)
    np.testing.assert_array_equal(again.affine, vol.affine)
    assert again.spacing == vol.spacing


@needs_data
def test_nifti_label_round_trip(tmp_path: Path) -> None:
    vol = read_image(SPINE_T2)
    lab = read_label(SPINE_T2_SEG, like=vol)
    assert lab.shape == vol.shape and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 1} and lab.any()
    out = write_nifti(lab, tmp_path / "seg.nii", like=vol)
    back = nib.load(str(out))
    ref = nib.load(str(SPINE_T2_SEG))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(back.get_fdata(), ref.get_fdata())
    np.testing.assert_array_equal(back.affine, nib.load(str(SPINE_T2)).affine)


@needs_data
def test_write_nifti_overwrite_and_atomic(tmp_path: Path) -> None:
    vol = read_image(MR_NII)
    target = tmp_path / "mr.nii.gz"
    write_nifti(vol.data, target, like=vol)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="mr.nii.gz"):
        write_nifti(vol.data * 0, target, like=vol)
    assert target.read_bytes() == before  # untouched
    write_nifti(vol.data * 0, target, like=vol, overwrite=True)
    assert not nib.load(str(target)).get_fdata().any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mr.nii.gz"]  # no temp left
    with pytest.raises(ValueError, match="shape"):
        write_nifti(vol.data[:2], tmp_path / "bad.nii.gz", like=vol)


# ------------------------------------------------------------------- NRRD
@needs_data
def test_nrrd_brain_and_label() -> None:
    vol = read_image(BRAIN_NRRD)
    assert vol.shape == (25, 256, 256)
    np.testing.assert_allclose(vol.spacing, (6.5, 0.78125, 0.78125), rtol=1e-6)
    assert vol.meta["space"] == "left-posterior-superior"
    # LPS origin (-99.6, 99.6, -78) -> RAS (99.6, -99.6, -78)
    np.testing.assert_allclose(vol.affine[:3, 3], (99.609375, -99.609375, -78.0), atol=1e-6)
    lab = read_label(BRAIN_LABEL, like=vol)
    assert lab.shape == vol.shape and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1}


@needs_data
def test_nrrd_to_nifti_keeps_geometry(tmp_path: Path) -> None:
    vol = read_image(BRAIN_NRRD)
    out = write_nifti(vol.data, tmp_path / "brain.nii.gz", like=vol)
    assert nib.aff2axcodes(nib.load(str(out)).affine) == ("L", "A", "S")
    back = read_image(out)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


# ------------------------------------------------------------------ DICOM
@needs_data
def test_dicom_folder_sorted_hu_spacing() -> None:
    vol = read_image(CT_DCM)
    assert vol.shape == (3, 512, 512) and vol.modality == "CT"
    files = [pydicom.dcmread(str(p)) for p in sorted(CT_DCM.glob("*.dcm"))]
    z = [float(ds.ImagePositionPatient[2]) for ds in files]
    ordered = [files[i] for i in np.argsort(z)]  # ascending along the normal (+z)
    for k, ds in enumerate(ordered):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.data[k], hu)
    np.testing.assert_allclose(vol.spacing, (1.0, 0.810547, 0.810547), atol=1e-5)
    d = vol.data
    assert -3100 <= d.min() <= -1000 and 300 < d.max() < 4000
    assert -1100 <= np.percentile(d[d > -2000], 1) <= -900  # air
    # same grid as the dcmqi liver mask that was made on this series
    liver = read_image(LIVER_NRRD)
    np.testing.assert_allclose(vol.affine, liver.affine, atol=1e-4)
    assert read_label(LIVER_NRRD, like=vol).max() == 1


def test_dicom_pydicom_ct_small() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom test file CT_small.dcm not available")
    vol = read_image(path)
    ds = pydicom.dcmread(path)
    assert vol.shape == (128, 128) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, [float(v) for v in ds.PixelSpacing])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.data, hu)
    # affine origin = ImagePositionPatient converted LPS -> RAS
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-6)


# ------------------------------------------------------------------- HDF5
@needs_data
def test_h5_acdc_slice_and_volume() -> None:
    import h5py

    sl = sorted((DATA / "acdc" / "train_slices").glob("*.h5"))[0]
    v2 = read_image(sl)
    assert v2.ndim == 2 and v2.spacing == (1.0, 1.0) and "spacing" in v2.meta["note"]
    assert v2.label is not None and v2.label.shape == v2.shape
    vv = sorted((DATA / "acdc" / "val_volumes").glob("*.h5"))[0]
    v3 = read_image(vv)
    with h5py.File(vv, "r") as f:
        np.testing.assert_array_equal(v3.data, f["image"][()])
    assert v3.ndim == 3 and v3.label.shape == v3.shape
    assert set(np.unique(v3.label)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(read_label(vv, like=v3), v3.label)


# --------------------------------------------------------------- pictures
@needs_data
def test_covid_jpeg_and_png_masks(tmp_path: Path) -> None:
    img = read_image(COVID / "LungInfection-Train" / "Doctor-label" / "Imgs" / "0.jpg")
    assert img.ndim == 2 and 0 <= img.data.min() and img.data.max() <= 255
    gt = read_label(COVID / "LungInfection-Train" / "Doctor-label" / "GT" / "0.png", like=img)
    assert gt.dtype == np.uint8 and set(np.unique(gt)) == {0, 1}
    multi = read_label(COVID / "MultiClassInfection-Train" / "GT" / "14.png")
    assert set(np.unique(multi)) == {0, 1, 2}
    # an RGB copy is converted to gray with a note; 16-bit TIFF is kept
    from PIL import Image
    import tifffile

    rgb = np.stack([img.data.astype(np.uint8)] * 3, axis=-1)
    rgb[..., 0] //= 2
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    g = read_image(tmp_path / "rgb.png")
    assert g.shape == img.shape and "gray" in g.meta["color"]
    tifffile.imwrite(tmp_path / "x16.tif", (img.data * 200).astype(np.uint16))
    t = read_image(tmp_path / "x16.tif")
    assert t.meta["original_dtype"] == "uint16" and t.data.max() > 255


def test_write_png(tmp_path: Path) -> None:
    from PIL import Image

    arr = np.linspace(-5, 5, 64, dtype=np.float32).reshape(8, 8)
    out = write_png(arr, tmp_path / "q.png")
    back = np.array(Image.open(out))
    assert back.dtype == np.uint8 and back.min() == 0 and back.max() == 255
    with pytest.raises(FileExistsError, match="q.png"):
        write_png(arr, out)
    write_png(np.zeros((4, 4)), out, overwrite=True)
    assert not np.array(Image.open(out)).any()


# ------------------------------------------------------------- bad files
def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    np.save(tmp / "empty.npy", np.zeros((0,)))
    np.save(tmp / "line.npy", np.zeros(7))
    np.save(tmp / "four.npy", np.zeros((2, 3, 4, 5)))
    nan = np.ones((4, 5, 6), np.float32)
    nan[0, 0, :3] = np.nan
    nan[1, 1, 1] = np.inf
    np.save(tmp / "nan.npy", nan)
    (tmp / "zero.npy").write_bytes(b"")
    (tmp / "image.xyz").write_bytes(b"abc")
    (tmp / "notdicom").mkdir()
    (tmp / "notdicom" / "readme.txt").write_text("no images here")
    return {
        "empty": (tmp / "empty.npy", r"empty\.npy.*empty"),
        "1d": (tmp / "line.npy", r"line\.npy.*dimensionality.*\(7,\)"),
        "4d": (tmp / "four.npy", r"four\.npy.*dimensionality.*\(2, 3, 4, 5\)"),
        "nan": (tmp / "nan.npy", r"nan\.npy.*NaN.*4 of 120"),
        "zero_bytes": (tmp / "zero.npy", r"zero\.npy.*empty"),
        "suffix": (tmp / "image.xyz", r"image\.xyz.*unsupported extension.*\.nii\.gz"),
        "missing": (tmp / "nope.nii.gz", r"nope\.nii\.gz.*not found"),
        "no_dicom": (tmp / "notdicom", r"notdicom.*no readable DICOM"),
    }


@pytest.mark.parametrize(
    "case", ["empty", "1d", "4d", "nan", "zero_bytes", "suffix", "missing", "no_dicom"])
def test_bad_files_raise(case: str, tmp_path: Path) -> None:
    path, pattern = _bad_files(tmp_path)[case]
    with pytest.raises(ImageReadError, match=pattern):
        read_image(path)


def test_singleton_4d_is_squeezed(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.ones((2, 3, 1, 5), np.int16))
    assert read_image(tmp_path / "s.npy").shape == (2, 3, 5)
    arr = np.arange(24, dtype=np.float32).reshape(4, 3, 2, 1)  # NIfTI (X, Y, Z, T=1)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "t1.nii.gz"))
    assert read_image(tmp_path / "t1.nii.gz").shape == (2, 3, 4)
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2, 2), np.float32), np.eye(4)),
             str(tmp_path / "t2.nii.gz"))
    with pytest.raises(ImageReadError, match=r"t2\.nii\.gz.*4-D"):
        read_image(tmp_path / "t2.nii.gz")


@needs_data
def test_truncated_nifti(tmp_path: Path) -> None:
    raw = CT_NII.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz.*truncated"):
        read_image(bad)


@needs_data
def test_label_shape_mismatch() -> None:
    vol = read_image(BRAIN_NRRD)
    with pytest.raises(ImageReadError, match=r"breast1_label\.nrrd.*\(21, 120, 45\).*\(25, 256, 256\)"):
        read_label(BREAST_LABEL, like=vol)


def test_supported_suffixes() -> None:
    for s in (".nii", ".nii.gz", ".nrrd", ".dcm", ".h5", ".png", ".jpg", ".tif", ".npy"):
        assert s in SUPPORTED_SUFFIXES


# ---------------------------------------------------------- normalisation
def test_normalize_ct_windows() -> None:
    x = np.array([-2000, -1000, 0, 1000, 3000], np.int16)
    y = normalize_ct(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0, 0, 0.5, 1, 1])
    lo, hi = CT_WINDOWS["lung"]
    np.testing.assert_allclose(normalize_ct(np.array([lo, hi, -600.0]), "lung"), [0, 1, 0.5])
    np.testing.assert_allclose(normalize_ct(np.array([-160.0, 240.0]), "soft_tissue"), [0, 1])
    with pytest.raises(ValueError, match="unknown CT window"):
        normalize_ct(x, "liver-ish")


@needs_data
def test_normalize_auto_on_real_volumes() -> None:
    ct = read_image(CT_NII)  # NIfTI has no modality: detected from HU range
    y, p = normalize(ct)
    assert p["method"] == "ct" and p["window"] == (-1000.0, 1000.0)
    assert y.dtype == np.float32 and 0.0 <= y.min() and y.max() <= 1.0
    np.testing.assert_allclose(y[ct.data <= -1000], 0.0)
    np.testing.assert_allclose(y[ct.data >= 1000], 1.0)
    dcm = read_image(CT_DCM)
    y, p = normalize(dcm, window="soft_tissue")
    assert p["method"] == "ct" and p["window_name"] == "soft_tissue" and y.max() <= 1.0
    mr = read_image(BRAIN_NRRD)
    before = mr.data.copy()
    y, p = normalize(mr)
    assert p["method"] == "mri" and p["hi"] > p["lo"]
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    np.testing.assert_array_equal(mr.data, before)  # input untouched
    y2 = normalize_mri(mr.data, 1, 99)
    assert 0.0 <= y2.min() and y2.max() <= 1.0


def test_normalize_constant_gives_zeros() -> None:
    c = np.full((3, 4, 5), 7.0, np.float32)
    for method in ("auto", "mri", "minmax"):
        y, p = normalize(c, method)
        assert y.shape == c.shape and not y.any() and "constant" in p["note"]
    assert not normalize_minmax(c).any()
    assert not normalize_mri(c).any()


def test_compressed_dicom_reads_and_a_missing_decoder_is_named(tmp_path, shared_data, monkeypatch):
    """JPEG 2000 (lossless) DICOM reads through the bundled pylibjpeg decoders to the same numbers as the
    uncompressed series; a compressed file no plugin decodes says so (not "corrupt or truncated")."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from napari_vldun.io import ImageReadError, read_image

    src = shared_data / "dcmqi_ct" / "ct-3slice"
    if not src.is_dir():
        pytest.skip("dcmqi_ct/ct-3slice not found")
    out = tmp_path / "j2k"
    out.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless)
        ds.save_as(out / f.name)
    plain, packed = read_image(src), read_image(out)
    np.testing.assert_array_equal(plain.data, packed.data)

    def no_plugin(self):
        raise RuntimeError("Unable to decompress 'JPEG 2000 Lossless' pixel data because all plugins are "
                           "missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    with pytest.raises(ImageReadError, match="compressed .*JPEG 2000.* install pylibjpeg"):
        read_image(out)
