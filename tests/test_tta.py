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


def _heart_crop(image: np.ndarray, label: np.ndarray, size: int = 112) -> np.ndarray:
    """A ``size`` px crop of ``image`` centred on the labelled pixels of ``label``."""
    ys, xs = np.nonzero(label)
    y0 = int(np.clip(ys.mean() - size // 2, 0, image.shape[0] - size))
    x0 = int(np.clip(xs.mean() - size // 2, 0, image.shape[1] - size))
    return image[y0:y0 + size, x0:x0 + size]


def test_a_reflected_measurement_is_the_measurement_of_the_reflected_image(acdc_slice: np.ndarray) -> None:
    x = acdc_slice[:96, :97]
    zf, meas = Measurement.simulate(x, "cartesian", 4, seed=0)
    k, m = meas.kspace[0], meas.mask[0]
    for dims in TTA_FLIPS:
        xr, kr, mr = _np_reflect(x, dims), _np_reflect(k, dims), _np_reflect(m, dims)
        assert np.allclose(np.asarray(fft2c(xr.astype(np.complex64))) * mr, kr * mr, atol=1e-5)
        assert np.allclose(np.abs(np.asarray(ifft2c(kr * mr))), _np_reflect(zf, dims), atol=1e-5)


@pytest.mark.slow
def test_test_time_flips_make_the_shipped_segmentation_flip_equivariant(acdc_labelled) -> None:
    """With k-space: the TTA labels of a reflected slice are the reflected TTA labels of the slice (the
    network alone is not flip-equivariant: it disagrees with itself on more pixels)."""
    loaded = load_model(None, "cpu")
    x = _heart_crop(*acdc_labelled[0])
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
    plain_r = predict(loaded, zf_r, label_set="acdc", measurement=meas_r, postprocess=False)
    assert not plain.tta and plain.labels.shape == a.labels.shape
    plain_agree = (_np_reflect(plain_r.labels, dims) == plain.labels).mean()
    print(f"flip agreement: network alone {plain_agree:.4f}, with test-time flips {agree:.4f}")
    assert plain_agree < agree, (plain_agree, agree)
    # the restored image is the one of the slice as given, with or without flips
    assert np.array_equal(plain.restored, a.restored)
