#!/usr/bin/env bash
# Create .venv in the repository root and install napari-vldun with everything its tests need.
# Versions are pinned in requirements/constraints.txt (pyproject.toml keeps loose ranges for users
# who bring their own CUDA build of torch). Idempotent: re-running only fills in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System libraries for napari under Xvfb (GUI tests, screenshots). Needs root + apt; skipped otherwise.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=$(while read -r p; do [ -n "$p" ] && ! dpkg -s "$p" >/dev/null 2>&1 && echo "$p"; done < .ci/apt-packages.txt || true)
  if [ -n "$missing" ]; then
    echo "setup: installing system packages: $(echo $missing)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "setup: not root or no apt-get; GUI tests need: $(tr '\n' ' ' < .ci/apt-packages.txt)" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip >/dev/null
# torch/torchvision first, exact versions (they come from local wheels on the project's machines).
"${PIP[@]}" install -c requirements/constraints.txt torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install -c requirements/constraints.txt -e ".[napari,testing]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import napari_vldun, torch, open_clip, napari; print('setup: ok, torch', torch.__version__)"
