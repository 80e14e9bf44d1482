#!/usr/bin/env bash
# One call on one GPU (about 8 minutes on one H100, by design; see docs/gpu.md):
#   bash benchmarks/gpu/run.sh [OUT] [run.py options...]
# trains VGG-16-BN and ResNet-56 on Fashion-MNIST (32 px), runs the one-shot benchmark on both
# at 50/75/90% of params, runs `pytest -m cuda`, and prints the table. Results go to OUT
# (default benchmarks/results/gpu); the trained weights to $WEIGHTS (default OUT/models).
# Fashion-MNIST is read from $FASHION_MNIST, else .data/fashion-mnist, else the Debian
# package's /usr/share/datasets/fashion-mnist. Wheels in .whl/ (e.g. torch-pruning 1.6.1) are
# installed into a temporary folder first, so a machine without a package index can use them.
# `bash benchmarks/gpu/run.sh /tmp/smoke --smoke` is the CPU smoke run (seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${1:-benchmarks/results/gpu}
shift || true
DATA=${FASHION_MNIST:-}
if [[ -z "$DATA" ]]; then
    for candidate in .data/fashion-mnist /usr/share/datasets/fashion-mnist; do
        if [[ -f "$candidate/train-images-idx3-ubyte.gz" ]]; then DATA=$candidate; break; fi
    done
fi
if [[ -z "$DATA" ]]; then
    echo "run.sh: no Fashion-MNIST found: set FASHION_MNIST=<folder with the four IDX files>" >&2
    exit 2
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/coreprune-wheels .whl/*.whl
    export PYTHONPATH=/tmp/coreprune-wheels${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
weights=()
if [[ -n "${WEIGHTS:-}" ]]; then weights=(--weights "$WEIGHTS"); fi
exec python3 benchmarks/gpu/run.py --out "$OUT" --data-root "$DATA" "${weights[@]}" "$@"
