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
    """Where ``import mamba_ssm`` fails, the package imports, the scan falls back to torch and the model runs
    (the one subprocess test of the no-mamba path); ``napari_vldun.model.config`` imports without the network."""
    code = (
        "import sys; sys.modules['mamba_ssm'] = None\n"  # make `import mamba_ssm` fail
        "import napari_vldun.model.config\n"  # the data layer's import: it must not build the network
        "assert 'napari_vldun.model.vldun' not in sys.modules and 'napari_vldun.model.ssm' not in sys.modules\n"
        "import torch; from napari_vldun.model import build_model, ssm\n"
        "assert ssm.mamba_ssm_available() is False\n"
        "x = torch.randn(1, 9, 1, 2); dt = torch.rand(1, 9, 1); A = -torch.ones(1)\n"
        "B = torch.randn(1, 9, 3); C = torch.randn(1, 9, 3)\n"
        "print(tuple(ssm.selective_scan(x, dt, A, B, C).shape))\n"
        "out = build_model('tiny')(torch.rand(1, 1, 40, 40)); print(tuple(out.restored.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-8:] == ["(1,", "9,", "1,", "2)", "(1,", "1,", "40,", "40)"]


def test_npe2_manifest_validates() -> None:
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-vldun"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


#: the import layers of docs/architecture.md, bottom first: a unit may import only units of strictly lower layers.
LAYERS = {
    "io": 0, "metrics": 0, "__version__": 0,
    "degradation": 1,
    "model": 2, "tiling": 2,
    "postprocess": 2.5,  # label rules: reads checkpoint paths (model), used by inference
    "inference": 3, "data": 3,
    "train": 4, "evaluate": 4,
    "pipeline": 5, "measure": 5,
    "cli": 6, "_reader": 6,
    "_writer": 7,
    "_widgets": 8,
    "_sample_data": 9,
}


def _package_imports() -> dict[str, set[str]]:
    """Top-level unit of ``napari_vldun`` (``io``, ``model``, ``pipeline``, ...) -> the units it imports
    (``import napari_vldun.x``, ``from napari_vldun.x import``, relative imports; module-level and
    function-local alike), read from the source with :mod:`ast`."""
    import ast
    from pathlib import Path

    import napari_vldun

    root = Path(napari_vldun.__file__).parent
    edges: dict[str, set[str]] = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        pkg = parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts:
            continue
        targets: list[list[str]] = []
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "napari_vldun"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[:len(pkg) - node.level + 1]
                elif node.module and node.module.split(".")[0] == "napari_vldun":
                    base, node_module = [], node.module.split(".", 1)[1:]
                    targets += [node_module[0].split(".")] if node_module else [[a.name] for a in node.names]
                    continue
                else:
                    continue
                targets += [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
        for target in targets:
            if target and target[0] != parts[0]:
                edges.setdefault(parts[0], set()).add(target[0])
    return edges


def test_imports_point_down_the_layers() -> None:
    """docs/architecture.md's import direction holds in the source: every unit imports only units of strictly
    lower layers (so ``train`` or ``evaluate`` importing ``pipeline``, ``data`` importing ``inference`` or the
    core importing a napari hook all fail), and every unit is placed in a layer."""
    edges = _package_imports()
    unplaced = sorted((set(edges) | {t for ts in edges.values() for t in ts}) - set(LAYERS))
    assert not unplaced, f"units without a layer in LAYERS: {unplaced}"
    wrong = sorted(f"{a} -> {b}" for a, ts in edges.items() for b in ts if LAYERS[b] >= LAYERS[a])
    assert not wrong, f"imports that do not point down: {wrong}"
    assert "degradation" in edges["model"] and "inference" in edges["pipeline"]  # the scan sees real imports
