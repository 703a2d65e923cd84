"""Fuzz the readers: real files from shared/data (NIfTI, NRRD, DICOM, ACDC HDF5, COVID JPEG and PNG
label; an ACDC slice as .npy and TIFF) with random bytes, truncations and header mutations, seeded. Every case reads or raises
:class:`~napari_vldun.io.ImageReadError` (naming the file), never anything else, and never hangs."""

from __future__ import annotations

import contextlib
import gzip
import io
import random
import resource
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_vldun._reader import napari_get_reader
from napari_vldun.io import ImageReadError, read_image, read_label

#: (path under shared/data, suffix to write the mutated bytes with)
FILES = [
    ("spinalcord_mri/t1/t1w_seg-manual.nii.gz", ".nii.gz"),
    ("spinalcord_mri/t1/t1w_seg-manual.nii.gz", ".nii"),  # decompressed: header bytes in the clear
    ("pyradiomics_mri/breast1_label.nrrd", ".nrrd"),
    ("dcmqi_ct/ct-3slice/01.dcm", ".dcm"),
    ("acdc/train_slices/patient003_frame01_slice_1.h5", ".h5"),
    ("covid_ct/train/LungInfection-Train/Doctor-label/Imgs/47.jpg", ".jpg"),
    ("covid_ct/train/MultiClassInfection-Train/GT/46.png", ".png"),
    ("acdc/train_slices/patient003_frame01_slice_1.h5", ".npy"),  # its image, saved as .npy / TIFF
    ("acdc/train_slices/patient003_frame01_slice_1.h5", ".tif"),
]
CASES_PER_FILE = 36  # x 9 files, 3 readers each
TIMEOUT_S = 5
MEMORY_HEADROOM = 3 << 30  # a case may allocate this much more address space before MemoryError


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise _Hang

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _memory_limit():
    """Cap the address space so a mutated size field cannot take the (shared) machine's memory."""
    vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    old = resource.getrlimit(resource.RLIMIT_AS)
    new = vm + MEMORY_HEADROOM if old[1] == resource.RLIM_INFINITY else min(vm + MEMORY_HEADROOM, old[1])
    resource.setrlimit(resource.RLIMIT_AS, (new, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def _original(shared_data: Path, rel: str, suffix: str) -> bytes:
    """The bytes of a real file; ``.nii`` / ``.npy`` / ``.tif``: its content in that format."""
    data = (shared_data / rel).read_bytes()
    if suffix == ".nii":
        return gzip.decompress(data)
    if suffix in (".npy", ".tif"):
        import h5py

        with h5py.File(shared_data / rel, "r") as f:
            image = np.asarray(f["image"][()], np.float32)
        buf = io.BytesIO()
        if suffix == ".npy":
            np.save(buf, image)
        else:
            tifffile = pytest.importorskip("tifffile")
            tifffile.imwrite(buf, image)
        return buf.getvalue()
    return data


def _mutations(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """``n`` seeded variants of ``data``: random bytes, truncations, header byte changes."""
    head = min(len(data), 1024)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            size = rng.choice([1, 16, 348, 1024, rng.randrange(1, 4096)])
            prefix = data[: rng.choice([0, 4, 132, 352])]  # sometimes keep the magic bytes
            out.append(("random", prefix + rng.randbytes(size)))
        elif kind == 1:
            cut = rng.randrange(1, len(data))
            out.append((f"truncated at {cut}", data[:cut]))
        else:
            b = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(head)
                b[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            out.append(("header bytes changed", bytes(b)))
    return out


def _napari_read(path: Path):
    reader = napari_get_reader(str(path))
    return None if reader is None else reader(str(path))


def test_readers_raise_only_image_read_error(shared_data, tmp_path):
    rng = random.Random(20261201)
    failures, counts = [], {"read": 0, "refused": 0}
    for rel, suffix in FILES:
        src = shared_data / rel
        if not src.is_file():
            pytest.fail(f"fuzz input {src} is missing from the shared data")
        original = _original(shared_data, rel, suffix)
        for n, (what, data) in enumerate(_mutations(original, rng, CASES_PER_FILE)):
            path = tmp_path / f"{Path(rel).name.split('.')[0]}_{n}{suffix}"
            path.write_bytes(data)
            for read in (read_image, read_label, _napari_read):
                try:
                    with _memory_limit(), _time_limit(TIMEOUT_S), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the libraries' complaints about the damage
                        read(path)
                    counts["read"] += 1
                except ImageReadError as exc:
                    counts["refused"] += 1
                    if str(path) not in str(exc):
                        failures.append(f"{rel} ({what}) {read.__name__}: message does not name the file: {exc}")
                except _Hang:
                    failures.append(f"{rel} ({what}) {read.__name__}: no answer within {TIMEOUT_S} s")
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    failures.append(f"{rel} ({what}) {read.__name__}: {type(exc).__name__}: {str(exc)[:200]}")
            path.unlink()
    assert not failures, f"{len(failures)} bad cases:\n" + "\n".join(failures[:40])
    assert counts["refused"] > 100 and counts["read"] > 10, counts  # both outcomes happen
    assert np.isfinite(read_image(shared_data / FILES[3][0]).data).all()  # the originals read
