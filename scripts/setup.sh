#!/usr/bin/env bash
# One-time setup on a fresh machine: Fashion-MNIST from Debian, then a virtual environment in
# .venv holding the CPU build of torch and coreprune (editable, with its dev and plots extras).
#
# Everything Python goes into .venv, never into the system interpreter: Debian's own python3
# refuses `pip install` outside a virtual environment (PEP 668, "externally-managed-environment"),
# and a venv works the same there and under pyenv or conda, with no flag that breaks the system.
# The README's commands and .ci/run then call .venv/bin/python and .venv/bin/coreprune.
# Running it again reuses .venv and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"   # the interpreter the venv is made from (3.10 or newer)
VENV=.venv

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "setup: please install $* (no apt-get on this machine)" >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO apt-get install -y -qq "$@"
}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt_install dataset-fashion-mnist
fi
if ! command -v "$PYTHON" >/dev/null; then
  if [ "$PYTHON" != python3 ]; then
    echo "setup: PYTHON=$PYTHON is not a command" >&2
    exit 1
  fi
  apt_install python3 python3-venv
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: coreprune needs Python 3.10 or newer; $PYTHON is $("$PYTHON" -V 2>&1)." \
       "Set PYTHON=/path/to/python3.X and run again" >&2
  exit 1
fi

# A venv without a working pip (left by an interrupted run, or made where ensurepip was missing)
# is made again. Debian ships venv's pip bootstrap separately, in python3-venv.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PYTHON" -m venv "$VENV"
  fi
fi

# torch is pinned here (the package needs only torch>=2.1) so that pip takes the CPU build that
# lies in this machine's local wheel folder instead of several GB of CUDA wheels.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev,plots]"
echo "setup: done; run .venv/bin/coreprune or .venv/bin/python (or: source .venv/bin/activate)"
