"""Shared pytest fixtures: real medical slices from the shared data folder (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests run first, interleaved with fast ones (slow, fast, slow, fast, ...): with the suite
    split over the cores (``-n auto --maxschedchunk 1``, pyproject.toml) each worker starts on its own slow test
    instead of the longest tests ending the session alone (longest-first scheduling)."""
    slow = [i for i in items if i.get_closest_marker("slow") is not None]
    fast = [i for i in items if i.get_closest_marker("slow") is None]
    head = [t for pair in zip(slow, fast) for t in pair]
    items[:] = head + slow[len(fast):] + fast[len(slow):]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module runs torch on one thread (the 2 CI cores are shared), then restores it."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder, or skip if it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def acdc_slice(shared_data: Path) -> np.ndarray:
    """First ACDC training slice (sorted by name): float32 (H, W) in [0, 1]."""
    h5py = pytest.importorskip("h5py")
    files = sorted((shared_data / "acdc" / "train_slices").glob("*.h5"))
    if not files:
        pytest.skip("no ACDC slices in acdc/train_slices/")
    with h5py.File(files[0], "r") as f:
        img = np.asarray(f["image"][()], dtype=np.float32)
    return np.clip(img, 0.0, 1.0)


@pytest.fixture(scope="session")
def acdc_labelled(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image float32 [0, 1], label uint8) of the first 6 ACDC training slices (sorted by name) whose label
    has all three classes (RV, myocardium, LV)."""
    h5py = pytest.importorskip("h5py")
    out = []
    for f in sorted((shared_data / "acdc" / "train_slices").glob("*.h5")):
        with h5py.File(f, "r") as h:
            lab = np.asarray(h["label"][()], np.uint8)
            if all((lab == k).any() for k in (1, 2, 3)):
                out.append((np.clip(np.asarray(h["image"][()], np.float32), 0, 1), lab))
        if len(out) == 6:
            return out
    pytest.skip("fewer than 6 fully labelled ACDC slices")


@pytest.fixture(scope="session")
def covid_slice(shared_data: Path) -> np.ndarray:
    """First COVID-19 CT slice (sorted path of covid_ct/train/**/Imgs/*.jpg): float32 (H, W) in [0, 1]."""
    pil = pytest.importorskip("PIL.Image")
    files = sorted((shared_data / "covid_ct" / "train").glob("**/Imgs/*.jpg"))
    if not files:
        pytest.skip("no COVID-19 CT slices under covid_ct/train/**/Imgs/")
    with pil.open(files[0]) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
