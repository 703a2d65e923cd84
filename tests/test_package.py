"""Package hygiene: the core imports without Qt, napari, open_clip or mamba-ssm; the manifest is valid."""

from __future__ import annotations

import json
import subprocess
import sys


def test_core_imports_no_qt_and_no_open_clip() -> None:
    """The core and the napari hooks that need no widget (reader, writer, sample data) load without Qt."""
    code = (
        "import sys, json\n"
        "import napari_vldun, napari_vldun.model, napari_vldun.degradation, napari_vldun.io, "
        "napari_vldun.inference, napari_vldun.pipeline, napari_vldun.data, napari_vldun.train, napari_vldun.cli, "
        "napari_vldun._reader, napari_vldun._writer, napari_vldun._sample_data\n"
        "heavy = ['PyQt5', 'PyQt6', 'qtpy', 'napari', 'magicgui', 'open_clip', 'mamba_ssm']\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cpu_forward_without_mamba_ssm() -> None:
    code = (
        "import sys; sys.modules['mamba_ssm'] = None\n"  # make `import mamba_ssm` fail
        "import torch; from napari_vldun.model import build_model; from napari_vldun.model.ssm import mamba_ssm_available\n"
        "assert not mamba_ssm_available()\n"
        "out = build_model('tiny')(torch.rand(1, 1, 40, 40)); print(tuple(out.restored.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("(1, 1, 40, 40)")


def test_npe2_manifest_validates() -> None:
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-vldun"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
