#!/usr/bin/env bash
# Install vdiff (editable) and its dependencies.
#   bash scripts/install.sh          # the package and its runtime dependencies
#   bash scripts/install.sh --dev    # plus test and lint tools (pytest, ruff, pre-commit, ray)
# Where it installs:
#   - an active virtual environment or conda env ($VIRTUAL_ENV / $CONDA_PREFIX): there;
#   - a Python that allows pip installs (pyenv, a user-built Python): that Python;
#   - an externally managed Python (PEP 668: Debian's and Ubuntu's system python3, where pip
#     refuses to install): a project virtual environment .venv/ (created here with that Python).
# The chosen environment is recorded in .vdiff-env ($VDIFF_ENV_FILE); `scripts/run CMD...` runs CMD inside it
# (README). $PYTHON picks the interpreter (default python3); $VDIFF_VENV the venv folder.
# PyTorch: if torch is already installed it is kept (install your CUDA build first on GPU
# machines, see README) when it is at least $TORCH_MIN; an older one is refused (exit 2, before
# pip is run: pip would otherwise replace a CUDA build with PyPI's default one). Otherwise an NVIDIA GPU gets the default (CUDA) wheel and a machine
# without one gets the CPU build $VDIFF_CPU_TORCH (default torch==2.13.0, which these
# machines hold in their local wheel cache; plain `pip install torch` would pull GBs of CUDA).
# --print-env: only choose (and create) the environment, check its torch, print its interpreter,
# install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_MIN="2.9"  # NOTE: the torch bound of pyproject.toml (torch.optim.Muon appeared in 2.9)
PY="${PYTHON:-python3}"
VENV="${VDIFF_VENV:-.venv}"
EXTRA=""
PRINT_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --dev) EXTRA="[dev]" ;;
    --print-env) PRINT_ONLY=1 ;;
    *) echo "install.sh: unknown option $arg (use --dev or --print-env)" >&2; exit 2 ;;
  esac
done

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"vdiff needs Python >= 3.11; {sys.executable} is {sys.version.split()[0]}")
PYCHECK

# NOTE: pip refuses (PEP 668) when the interpreter's stdlib holds EXTERNALLY-MANAGED and it is
# not a virtual environment; the same test decides here, before pip is ever asked.
KIND="$("$PY" - <<'PYKIND'
import os, sys, sysconfig
if sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX") == sys.prefix:
    print("env")
elif os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")):
    print("managed")
else:
    print("plain")
PYKIND
)"
if [[ "$KIND" == "managed" ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "install.sh: $("$PY" -c 'import sys; print(sys.executable)') is externally managed (PEP 668); creating the project environment $VENV" >&2
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == "0" ]]; then
        apt-get install -y -qq python3-venv >/dev/null 2>&1 \
          || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq python3-venv >/dev/null 2>&1; } || true
      fi
      "$PY" -m venv "$VENV" >/dev/null 2>&1 || {
        echo "install.sh: cannot create $VENV with $PY (no venv module): install python3-venv (sudo apt install python3-venv) and run this again" >&2
        exit 1
      }
    fi
  fi
  PY="$VENV/bin/python"
fi
PY_ABS="$("$PY" -c 'import sys; print(sys.executable)')"

# check_torch: exit 2 with one line when the environment's torch is older than TORCH_MIN; prints
# the installed version (empty when torch is not installed).
check_torch() {
  "$PY" - "$TORCH_MIN" "$PY_ABS" <<'PYTORCH'
import importlib.util, re, sys
need, exe = sys.argv[1], sys.argv[2]
if importlib.util.find_spec("torch") is None:
    sys.exit(0)
import torch
have = torch.__version__
def key(v): return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", v).groups())
if key(have) < key(need):
    print(f"install.sh: torch {have} in {exe} is older than vdiff needs (>= {need}); upgrade it "
          f"first (GPU: pip install 'torch>={need}' --index-url https://download.pytorch.org/whl/cuXXX, "
          f"your CUDA) and run this again", file=sys.stderr)
    sys.exit(2)
print(have)
PYTORCH
}
HAVE_TORCH="$(check_torch)" || exit 2

BIN_DIR="$(dirname "$PY_ABS")"
echo "$BIN_DIR" > "${VDIFF_ENV_FILE:-.vdiff-env}"
if [[ "$PRINT_ONLY" == "1" ]]; then
  echo "$PY_ABS"
  exit 0
fi

if [[ -n "$HAVE_TORCH" ]]; then
  echo "install.sh: keeping installed torch $HAVE_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install.sh: NVIDIA GPU found, installing the CUDA build of torch"
  "$PY" -m pip install --quiet "torch>=$TORCH_MIN"
else
  echo "install.sh: no CUDA GPU, installing the CPU build ${VDIFF_CPU_TORCH:-torch==2.13.0}"
  "$PY" -m pip install --quiet "${VDIFF_CPU_TORCH:-torch==2.13.0}"
  check_torch >/dev/null || exit 2  # NOTE: a $VDIFF_CPU_TORCH older than TORCH_MIN
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
if [[ "$KIND" == "managed" ]]; then
  echo "install.sh: installed into $VENV; run commands with scripts/run (e.g. scripts/run vdiff --help) or 'source $VENV/bin/activate'"
fi
