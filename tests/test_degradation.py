"""Tests of napari_vldun.degradation on real ACDC (cardiac MRI) and COVID-19 CT slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_vldun.degradation import (
    DEGRADATION_PROMPTS,
    PRIMITIVES,
    MaskResult,
    cartesian_mask,
    degrade,
    fft2c,
    gaussian_blur,
    gaussian_noise,
    ifft2c,
    low_resolution,
    motion_blur,
    radial_mask,
    random_primitive,
    rician_noise,
    undersample,
)

torch.set_num_threads(1)

R_VALUES = (2, 4, 8)


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with data range 1."""
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(test, np.float64)) ** 2))
    return 10.0 * math.log10(1.0 / mse)


def assert_point_symmetric(mask: torch.Tensor) -> None:
    """mask[c+a, d+b] == mask[c-a, d-b] wherever both indices are in range (c, d = H//2, W//2)."""
    m = mask.numpy()
    h, w = m.shape
    ii, jj = 2 * (h // 2) - np.arange(h), 2 * (w // 2) - np.arange(w)
    vi, vj = (ii >= 0) & (ii < h), (jj >= 0) & (jj < w)
    np.testing.assert_array_equal(m[np.ix_(vi, vj)], m[np.ix_(ii[vi], jj[vj])])


# ----------------------------------------------------------------------------- FFT
def test_fft2c_roundtrip_and_unitary(acdc_slice):
    x = torch.from_numpy(acdc_slice)
    k = fft2c(x)
    assert k.is_complex() and k.shape == x.shape
    h, w = x.shape
    # DC at the centre: for a centred orthonormal FFT, k[H//2, W//2] = sum(x) / sqrt(HW).
    assert torch.isclose(k[h // 2, w // 2].real, x.sum() / math.sqrt(h * w), rtol=1e-4)
    assert torch.isclose(torch.linalg.vector_norm(k), torch.linalg.vector_norm(x), rtol=1e-4)
    assert torch.allclose(ifft2c(k).real, x, atol=1e-5)


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", ["acdc_slice", "covid_slice"])
def test_all_ones_mask_is_identity(name, request):
    x = request.getfixturevalue(name)
    y = undersample(x, np.ones(x.shape, np.float32))
    assert np.abs(y - x).max() <= 1e-5
    for res in (cartesian_mask(x.shape, 1), radial_mask(x.shape, accel=1.0)):
        assert res.fraction == 1.0
        assert np.abs(undersample(x, res) - x).max() <= 1e-5


# ----------------------------------------------------------------------------- Cartesian
@pytest.mark.parametrize("pattern", ["random", "equispaced"])
@pytest.mark.parametrize("shape", [(256, 256), (154, 215), (369, 273)])
def test_cartesian_fraction(shape, pattern):
    w = shape[1]
    for r in R_VALUES:
        res = cartesian_mask(shape, r, pattern=pattern, seed=3)
        assert isinstance(res, MaskResult)
        m = res.mask
        assert m.shape == shape and m.dtype == torch.float32
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert res.fraction == pytest.approx(float(m.mean()), abs=1e-7)
        # tolerance: 0.02 + 1/W (rounding of W/R to whole lines)
        assert abs(res.fraction - 1.0 / r) <= 0.02 + 1.0 / w
        # whole columns, centre (DC column) always sampled, centre block fully sampled
        assert bool((m == m[:1]).all())
        n_center = round(w * 0.08)
        pad = (w - n_center + 1) // 2
        assert bool((m[:, pad : pad + n_center] == 1).all()) and m[0, w // 2] == 1


def test_cartesian_axis_rows():
    res = cartesian_mask((128, 96), 4, axis=-2, seed=0)
    m = res.mask
    assert bool((m == m[:, :1]).all())  # whole rows
    assert res.n_lines == round(128 / 4)


def test_mask_kind_tells_lines_from_spokes():
    """``mask_kind`` (which picks a checkpoint's pass count per mask kind): whole lines along either axis are
    Cartesian, radial spokes are not; a stack of both kinds, or nothing, has no single kind."""
    from napari_vldun.degradation import mask_kind, radial_mask

    cols = cartesian_mask((96, 80), 4, seed=0).mask
    rows = cartesian_mask((96, 80), 8, axis=-2, seed=1).mask
    spokes = radial_mask((96, 80), 4, seed=0).mask
    assert mask_kind(cols) == mask_kind(rows.numpy()) == mask_kind(torch.stack([cols, rows])[:, None]) == "cartesian"
    assert mask_kind(spokes) == mask_kind(spokes[None, None]) == "radial"
    assert mask_kind(torch.stack([cols, spokes])) is None
    assert mask_kind(np.zeros((0, 4, 4))) is None and mask_kind(np.ones(5)) is None


def test_cartesian_psnr_falls_with_accel(acdc_slice):
    values = []
    for r in R_VALUES:
        y, res = degrade(acdc_slice, "cartesian", r, seed=0)
        values.append(psnr(acdc_slice, y))
    assert values[0] > values[1] > values[2], values


# ----------------------------------------------------------------------------- radial
RADIAL_TOL = 0.005  # plus one spoke's worth of pixels, hypot(H, W) / (H W)


@pytest.mark.parametrize("angles", ["uniform", "golden"])
@pytest.mark.parametrize("shape", [(256, 256), (257, 255), (154, 215), (369, 273), (64, 65)])
def test_radial_symmetric_dc_fraction(shape, angles):
    h, w = shape
    for r in R_VALUES:
        res = radial_mask(shape, accel=r, angles=angles, seed=5)
        m = res.mask
        assert m.shape == shape and m.dtype == torch.float32
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert m[h // 2, w // 2] == 1
        assert_point_symmetric(m)
        assert res.fraction == pytest.approx(float(m.mean()), abs=1e-7)
        assert abs(res.fraction - 1.0 / r) <= RADIAL_TOL + math.hypot(h, w) / (h * w)
    one = radial_mask(shape, n_spokes=1, seed=None)
    assert one.mask[h // 2, w // 2] == 1 and one.mask[h // 2].sum() >= w - 1  # horizontal spoke
    assert_point_symmetric(one.mask)


def test_radial_psnr_falls_with_accel(covid_slice):
    values, spokes = [], []
    for r in R_VALUES:
        y, res = degrade(covid_slice, "radial", r, seed=0)
        values.append(psnr(covid_slice, y))
        spokes.append(res.n_lines)
    assert values[0] > values[1] > values[2], values
    assert spokes[0] > spokes[1] > spokes[2]
    by_spokes = [psnr(covid_slice, degrade(covid_slice, "radial", None, n_spokes=n)[0]) for n in (90, 45, 20)]
    assert by_spokes[0] > by_spokes[1] > by_spokes[2], by_spokes


# ----------------------------------------------------------------------------- seeds
def test_seed_determinism_masks():
    a = cartesian_mask((128, 128), 4, seed=11).mask
    assert torch.equal(a, cartesian_mask((128, 128), 4, seed=11).mask)
    assert not torch.equal(a, cartesian_mask((128, 128), 4, seed=12).mask)
    for angles in ("uniform", "golden"):
        b = radial_mask((96, 96), n_spokes=12, angles=angles, seed=1).mask
        assert torch.equal(b, radial_mask((96, 96), n_spokes=12, angles=angles, seed=1).mask)
        assert not torch.equal(b, radial_mask((96, 96), n_spokes=12, angles=angles, seed=2).mask)


def test_primitives_deterministic(acdc_slice):
    x = torch.from_numpy(acdc_slice)
    for fn in (gaussian_noise, rician_noise):
        assert torch.equal(fn(x, 0.05, seed=7), fn(x, 0.05, seed=7))
        assert not torch.equal(fn(x, 0.05, seed=7), fn(x, 0.05, seed=8))
    state = torch.get_rng_state()
    for name in PRIMITIVES:
        y1, p1 = random_primitive(x, name, seed=3, return_params=True)
        y2, p2 = random_primitive(x, name, seed=3, return_params=True)
        assert p1 == p2 and torch.equal(y1, y2), name
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), float("inf"), "4", None, True])
def test_bad_accel_raises(bad):
    with pytest.raises(ValueError, match="accel"):
        cartesian_mask((64, 64), bad)
    with pytest.raises(ValueError, match="accel"):
        radial_mask((64, 64), accel=bad)


def test_bad_mask_arguments_raise():
    with pytest.raises(ValueError, match="center_fraction"):
        cartesian_mask((64, 64), 4, center_fraction=1.5)
    with pytest.raises(ValueError, match="pattern"):
        cartesian_mask((64, 64), 4, pattern="spiral")
    with pytest.raises(ValueError, match="n_spokes"):
        radial_mask((64, 64), n_spokes=0)
    with pytest.raises(ValueError, match="angles"):
        radial_mask((64, 64), n_spokes=4, angles="random")
    for shape in [(64,), (64, 0), (64, 64, 1), (64.0, 64), "ab"]:
        with pytest.raises(ValueError, match="shape"):
            cartesian_mask(shape, 2)


def test_bad_images_raise(acdc_slice):
    x = acdc_slice.copy()
    x[3, 4] = np.nan
    ones = np.ones(x.shape, np.float32)
    with pytest.raises(ValueError, match="image contains NaN or inf values"):
        undersample(x, ones)
    with pytest.raises(ValueError, match="mask"):
        undersample(acdc_slice, np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match="x must be 2-D"):
        undersample(np.zeros((1, 1, 1, 8, 8), np.float32), np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="x: image contains NaN"):
        gaussian_noise(x, 0.1, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(acdc_slice, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        rician_noise(acdc_slice, -0.1, seed=0)
    with pytest.raises(ValueError, match="length"):
        motion_blur(acdc_slice, 0)
    for scale in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="scale"):
            low_resolution(acdc_slice, scale)


# ----------------------------------------------------------------------------- kinds / dtypes
def test_undersample_keeps_kind_dtype_shape(acdc_slice):
    res = cartesian_mask(acdc_slice.shape, 4, seed=0)
    batch_np = np.stack([acdc_slice, acdc_slice[::-1]])[:, None]  # (2, 1, H, W)
    for x in (acdc_slice, batch_np[0], batch_np, batch_np.astype(np.float64)):
        y = undersample(x, res)
        assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == x.dtype
        yc = undersample(x, res.mask.numpy(), return_complex=True)
        assert np.iscomplexobj(yc) and yc.shape == x.shape
        assert np.allclose(np.abs(yc), y, atol=1e-5)
    xt = torch.from_numpy(batch_np)
    yt = undersample(xt, res)
    assert isinstance(yt, torch.Tensor) and yt.shape == xt.shape and yt.dtype == torch.float32
    ytc = undersample(xt, res, return_complex=True)
    assert ytc.dtype == torch.complex64
    # batch elements are processed independently and identically to the 2-D call
    assert torch.allclose(yt[0, 0], torch.from_numpy(undersample(acdc_slice, res)), atol=1e-6)
    # undersampling is a projection in k-space: applying it twice changes nothing
    assert torch.allclose(undersample(ytc, res, return_complex=True), ytc, atol=1e-5)


# ----------------------------------------------------------------------------- primitives
def test_each_primitive_changes_image(acdc_slice, covid_slice):
    assert set(PRIMITIVES) == set(DEGRADATION_PROMPTS)
    assert all(isinstance(v, str) and v for v in DEGRADATION_PROMPTS.values())
    for img in (acdc_slice, covid_slice):
        x = torch.from_numpy(img)
        outs = {
            "gaussian_noise": gaussian_noise(x, 0.05, seed=0),
            "rician_noise": rician_noise(x, 0.05, seed=0),
            "gaussian_blur": gaussian_blur(x, 1.5),
            "motion_blur": motion_blur(x, 9, 30.0),
            "low_resolution": low_resolution(x, 0.25),
        }
        for name in PRIMITIVES:
            if name != "clean":
                outs["random_" + name] = random_primitive(x, name, seed=1)
        for name, y in outs.items():
            assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype, name
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name
            assert float((y - x).abs().mean()) > 1e-3, name  # measurable change
        assert torch.equal(random_primitive(x, "clean", seed=1), x)
    # numpy in -> numpy out; (B, C, H, W) supported; blur keeps the mean (reflect padding)
    xb = np.stack([acdc_slice] * 2)[:, None]
    for fn in (lambda a: gaussian_blur(a, 2.0), lambda a: motion_blur(a, 7, 90.0)):
        yb = fn(xb)
        assert isinstance(yb, np.ndarray) and yb.shape == xb.shape and yb.dtype == np.float32
        assert abs(float(yb.mean()) - float(xb.mean())) < 5e-3
    assert torch.equal(motion_blur(torch.from_numpy(acdc_slice), 1), torch.from_numpy(acdc_slice))


# ----------------------------------------------------------------------------- data consistency
def test_data_consistency_projects_towards_the_truth(acdc_slice):
    """DC with the measured k-space never moves an estimate away from the true image, keeps the truth
    fixed, is idempotent, and is the identity for an empty mask."""
    from napari_vldun.degradation import data_consistency, measure

    x = torch.from_numpy(acdc_slice[:96, :112].copy())[None, None]
    m = cartesian_mask(x.shape[-2:], 4, seed=3).mask
    k = measure(x, m)
    zf = undersample(x, m)
    blurred = gaussian_blur(x, 1.5)
    for estimate in (zf, blurred, torch.zeros_like(x)):
        dc = data_consistency(estimate, k, m)
        assert dc.dtype == x.dtype and dc.shape == x.shape
        assert float(((dc - x) ** 2).sum()) < float(((estimate - x) ** 2).sum())
        torch.testing.assert_close(data_consistency(dc, k, m), dc, atol=1e-5, rtol=0)
    torch.testing.assert_close(data_consistency(x, k, m), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(data_consistency(blurred, k, torch.zeros_like(m)), blurred, atol=1e-5, rtol=0)
    assert psnr(acdc_slice[:96, :112], data_consistency(zf, k, m)[0, 0].numpy()) > psnr(
        acdc_slice[:96, :112], zf[0, 0].numpy()) + 0.5  # the mirrored samples and the real part add information
    with pytest.raises(ValueError, match="do not match"):
        data_consistency(x, k[..., :50], m)


def test_data_consistency_is_differentiable():
    from napari_vldun.degradation import data_consistency, measure

    x = torch.rand(1, 1, 32, 32)
    m = cartesian_mask((32, 32), 4, seed=0).mask
    est = torch.rand(1, 1, 32, 32, requires_grad=True)
    ((data_consistency(est, measure(x, m), m) - x) ** 2).sum().backward()
    g = fft2c(est.grad[0, 0].to(torch.complex64)).abs()
    assert torch.isfinite(est.grad).all() and float(g[m == 0].mean()) > 1e-3
    from napari_vldun.degradation import mirror

    fixed = (m + mirror(m)) > 0
    assert float(g[fixed].max()) < 1e-5  # measured frequencies (and their mirrors) are fixed


def test_mirror_maps_a_real_images_spectrum_to_its_conjugate(acdc_slice):
    from napari_vldun.degradation import mirror

    for h, w in ((96, 112), (95, 111)):
        k = fft2c(torch.from_numpy(acdc_slice[:h, :w].copy()).to(torch.complex64))
        torch.testing.assert_close(mirror(k), k.conj(), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- Measurement
def test_measurement_algebra_file_and_checks(tmp_path, acdc_slice) -> None:
    """One known acquisition: simulate -> zero-filled is the scanner image; the projection keeps the measured
    frequencies and is idempotent; a rescaled image is refused; the file round-trips and stores a shared mask
    once; shapes that do not fit are refused with the shapes named."""
    from napari_vldun.degradation import fft2c
    from napari_vldun.degradation.measurement import Measurement, MeasurementError

    clean = np.stack([acdc_slice[:64, :64], acdc_slice[64:128, 64:128]]).astype(np.float32)
    zf, meas = Measurement.simulate(clean, "cartesian", 4.0, seed=3)
    assert meas.shape == (2, 64, 64) and meas.mask.shape == (2, 64, 64) and meas.mask.strides[0] == 0
    assert meas.kind == "cartesian" and 0.2 < meas.fraction < 0.35
    np.testing.assert_allclose(meas.zero_filled(), zf, atol=1e-6)
    assert meas.mismatch(zf) < 1e-6
    meas.check(zf)
    with pytest.raises(MeasurementError, match="does not belong"):
        meas.check(zf * 0.9)
    x = torch.rand(2, 1, 64, 64)
    p = meas.project(x)
    np.testing.assert_allclose(meas.project(p).numpy(), p.numpy(), atol=1e-5)  # a projection
    k = np.asarray(fft2c(p[:, 0].to(torch.complex64))).astype(np.complex64)
    on = meas.mask > 0
    np.testing.assert_allclose(k[on], meas.kspace[on], atol=1e-4)  # measured frequencies kept
    assert float((p - x).abs().max()) > 0.1  # a random image is not consistent: the projection moved it
    meas.save(tmp_path / "m.npz")
    back = Measurement.load(tmp_path / "m.npz")
    np.testing.assert_allclose(back.kspace, meas.kspace, atol=1e-5)
    np.testing.assert_array_equal(back.mask, meas.mask)
    with np.load(tmp_path / "m.npz") as f:
        assert f["mask"].shape == (64, 64)  # one mask for both slices, stored once
    with pytest.raises(FileExistsError):
        meas.save(tmp_path / "m.npz")
    one = meas.slice(1)
    assert one.shape == (1, 64, 64) and one.mismatch(zf[1:]) < 1e-6
    with pytest.raises(MeasurementError, match=r"\(2, 64, 64\).*3 slices"):
        Measurement.of(meas.kspace, meas.mask, (3, 64, 64))
    with pytest.raises(MeasurementError, match="only 0 and 1"):
        Measurement.of(meas.kspace, meas.mask * 0.5)
    _, radial = Measurement.simulate(clean[0], "radial", 4.0, seed=0)
    assert radial.shape == (1, 64, 64) and radial.kind == "radial"
