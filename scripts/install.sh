#!/usr/bin/env bash
# Install vdiff (editable) into the current Python >= 3.11 environment.
#   bash scripts/install.sh          # the package and its runtime dependencies
#   bash scripts/install.sh --dev    # plus test and lint tools (pytest, ruff, pre-commit, ray)
# PyTorch: if torch is already installed it is kept (install your CUDA build first on GPU
# machines, see README). Otherwise an NVIDIA GPU gets the default (CUDA) wheel and a machine
# without one gets the CPU build $VDIFF_CPU_TORCH (default torch==2.13.0, which these
# machines hold in their local wheel cache; plain `pip install torch` would pull GBs of CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRA=""
[[ "${1:-}" == "--dev" ]] && EXTRA="[dev]"

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"vdiff needs Python >= 3.11; {sys.executable} is {sys.version.split()[0]}")
PYCHECK

if "$PY" -c "import torch" 2>/dev/null; then
  echo "install.sh: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install.sh: NVIDIA GPU found, installing the CUDA build of torch"
  "$PY" -m pip install --quiet "torch>=2.5"
else
  echo "install.sh: no CUDA GPU, installing the CPU build ${VDIFF_CPU_TORCH:-torch==2.13.0}"
  "$PY" -m pip install --quiet "${VDIFF_CPU_TORCH:-torch==2.13.0}"
fi
"$PY" -m pip install --quiet -e ".${EXTRA}"

if [[ -n "$EXTRA" ]]; then
  # Test media: Debian's opencv-doc ships vtest.avi (real footage); ffmpeg is what
  # PySceneDetect's own `split-video` (the anchor in bench/curate.py) calls.
  if [[ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi || -z "$(command -v ffmpeg)" ]]; then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == "0" ]]; then
      apt-get install -y -qq opencv-doc ffmpeg >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq opencv-doc ffmpeg >/dev/null 2>&1; } \
        || echo "install.sh: could not apt-get opencv-doc/ffmpeg; tests that need vtest.avi will be skipped"
    else
      echo "install.sh: no root apt-get; tests that need vtest.avi (Debian opencv-doc) will be skipped"
    fi
  fi
fi
