"""npe2 sample data: each bundled sample gives clean, degraded and labels layers with metadata."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from napari_vldun._sample_data import sample_layers  # noqa: E402
from napari_vldun.model.config import LABEL_COLORS, LABEL_SETS  # noqa: E402
from napari_vldun.pipeline import list_samples  # noqa: E402

SAMPLES = sorted(list_samples())


def test_all_bundled_samples_are_contributed():
    import yaml
    from importlib.resources import files

    manifest = yaml.safe_load((files("napari_vldun") / "napari.yaml").read_text())
    keys = {s["key"] for s in manifest["contributions"]["sample_data"]}
    assert set(SAMPLES) == {"acdc", "brain", "ct"} == keys


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_layers(name):
    meta = list_samples()[name]
    (clean, ckw, ck), (deg, dkw, dk), (lab, lkw, lk) = sample_layers(name)
    assert (ck, dk, lk) == ("image", "image", "labels")
    shape = tuple(meta["shape"])
    assert clean.shape == deg.shape == lab.shape == shape
    assert 0.0 <= clean.min() and clean.max() <= 1.0 + 1e-6
    assert lab.dtype == np.uint8 and lab.max() > 0
    assert ckw["name"] == f"{name} clean" and lkw["name"] == f"{name} labels"
    assert dkw["name"].startswith(f"{name} degraded (") and meta["degradation"]["mask"] in dkw["name"]
    for kw in (ckw, dkw, lkw):
        info = kw["metadata"]["vldun_sample"]
        assert info["title"] == meta["title"]
        assert info["licence"] == meta["licence"] and len(info["licence_text"]) > 50
        assert kw["scale"] == tuple(meta.get("spacing") or kw["metadata"]["vldun_volume"]["spacing"])
    label_set = meta["label_set"]
    assert list(lkw["features"]["name"]) == list(LABEL_SETS[label_set])
    cmap = lkw["colormap"]
    for i, colour in enumerate(LABEL_COLORS[label_set][1:], start=1):
        rgb = [int(colour[k:k + 2], 16) / 255 for k in (1, 3, 5)]
        np.testing.assert_allclose(cmap.map(np.array([i]))[0][:3], rgb, atol=1e-2)
    assert int(lab.max()) < len(LABEL_SETS[label_set])


def test_open_sample_through_napari():
    import npe2

    pm = npe2.PluginManager.instance()
    if "napari-vldun" not in {m.name for m in pm.iter_manifests()}:
        pm.discover()
    viewer = ViewerModel()
    viewer.open_sample("napari-vldun", "ct")
    assert [ly.name for ly in viewer.layers] == ["ct clean", "ct degraded (radial 4x)", "ct labels"]
    assert viewer.layers["ct labels"].features["name"].tolist() == ["background", "infection"]
