#!/usr/bin/env bash
# One-time setup on a fresh machine: Fashion-MNIST from Debian, the CPU build of torch, coreprune.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
# torch is pinned so pip takes the local CPU build instead of several GB of CUDA wheels.
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev,plots]"
