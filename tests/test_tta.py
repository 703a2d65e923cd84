"""Test-time flips: the reflection they use commutes with the FFT, and averaging makes labels flip-equivariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vldun.degradation import fft2c, ifft2c, reflect
from napari_vldun.degradation.measurement import Measurement
from napari_vldun.inference import TTA_FLIPS, load_model, predict


@pytest.mark.parametrize("shape", [(8, 10), (7, 9), (6, 5)])
@pytest.mark.parametrize("dims", [(-1,), (-2,), (-2, -1)])
def test_reflect_commutes_with_the_centred_fft(shape, dims) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) + 1j * torch.randn(*shape, generator=g)
    assert torch.allclose(fft2c(reflect(x, dims)), reflect(fft2c(x), dims), atol=1e-5)
    assert torch.equal(reflect(reflect(x, dims), dims), x)  # an involution: undoing is applying again


def _np_reflect(a: np.ndarray, dims) -> np.ndarray:
    return reflect(torch.from_numpy(np.array(a)), dims).numpy()


def _heart_crop(shared_data, size: int = 112) -> np.ndarray:
    """A ``size`` px crop of the first ACDC training slice with all three classes, centred on the heart."""
    h5py = pytest.importorskip("h5py")
    for f in sorted((shared_data / "acdc" / "train_slices").glob("*.h5")):
        with h5py.File(f, "r") as h:
            lab = np.asarray(h["label"][()])
            if all((lab == k).any() for k in (1, 2, 3)):
                img = np.clip(np.asarray(h["image"][()], np.float32), 0, 1)
                ys, xs = np.nonzero(lab)
                y0 = int(np.clip(ys.mean() - size // 2, 0, img.shape[0] - size))
                x0 = int(np.clip(xs.mean() - size // 2, 0, img.shape[1] - size))
                return img[y0:y0 + size, x0:x0 + size]
    pytest.skip("no labelled ACDC slice")


def test_a_reflected_measurement_is_the_measurement_of_the_reflected_image(acdc_slice: np.ndarray) -> None:
    x = acdc_slice[:96, :97]
    zf, meas = Measurement.simulate(x, "cartesian", 4, seed=0)
    k, m = meas.kspace[0], meas.mask[0]
    for dims in TTA_FLIPS:
        xr, kr, mr = _np_reflect(x, dims), _np_reflect(k, dims), _np_reflect(m, dims)
        assert np.allclose(np.asarray(fft2c(xr.astype(np.complex64))) * mr, kr * mr, atol=1e-5)
        assert np.allclose(np.abs(np.asarray(ifft2c(kr * mr))), _np_reflect(zf, dims), atol=1e-5)


@pytest.mark.slow
def test_test_time_flips_make_the_shipped_segmentation_flip_equivariant(shared_data) -> None:
    """With k-space: the TTA labels of a reflected slice are the reflected TTA labels of the slice."""
    loaded = load_model(None, "cpu")
    x = _heart_crop(shared_data)
    zf, meas = Measurement.simulate(x, "cartesian", 4, seed=1)
    dims = (-1,)
    zf_r = _np_reflect(zf, dims)
    meas_r = Measurement.of(_np_reflect(meas.kspace, dims), _np_reflect(meas.mask, dims), meas.kspace.shape)
    a = predict(loaded, zf, label_set="acdc", measurement=meas, tta=True, postprocess=False)
    b = predict(loaded, zf_r, label_set="acdc", measurement=meas_r, tta=True, postprocess=False)
    assert a.tta and b.tta and all((a.labels == k).any() for k in (1, 2, 3))
    agree = (_np_reflect(b.labels, dims) == a.labels).mean()
    assert agree >= 0.999, agree
    plain = predict(loaded, zf, label_set="acdc", measurement=meas, postprocess=False)
    assert not plain.tta and plain.labels.shape == a.labels.shape
    # the restored image is the one of the slice as given, with or without flips
    assert np.array_equal(plain.restored, a.restored)
