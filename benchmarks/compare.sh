#!/usr/bin/env bash
# The comparison committed in benchmarks/results/compare/ (coreset vs baselines on ResNet-20,
# Fashion-MNIST, 3 seeds), compare_more/ (every method, one seed, beyond-accuracy metrics) and
# compare_init/ (pruning at initialisation, then training the pruned model).
# On this 2-core CPU the first takes about 90 minutes, the second about 30. With a GPU, raise
# --train-limit/--epochs/--finetune-epochs and add --models resnet56 vgg11 vgg16.
set -euo pipefail
cd "$(dirname "$0")/.."
python -u examples/compare_baselines.py --models resnet20 --metrics params macs \
    --targets 0.5 0.75 0.9 --seeds 0 1 2 --train-limit 4000 --test-limit 2000 --epochs 3 \
    --finetune-epochs 1 --threads 2 --out runs/compare_resnet20
python -u examples/compare_baselines.py --models resnet20 --metrics params --targets 0.5 \
    --seeds 0 --train-limit 4000 --test-limit 2000 --epochs 3 --finetune-epochs 1 --threads 1 \
    --beyond-accuracy --out runs/compare_more --methods coreset magnitude snip synflow random \
    grasp magnitude_l2 loss_preservation gradnorm_preservation gradnorm_increase bn_scale dpf
python -u examples/compare_baselines.py --at-init --models resnet20 --metrics params \
    --targets 0.5 0.9 --seeds 0 1 2 --train-limit 4000 --test-limit 2000 --epochs 3 --threads 2 \
    --out runs/compare_init
for run in compare_resnet20:compare compare_more:compare_more compare_init:compare_init; do
    src="runs/${run%%:*}" dst="benchmarks/results/${run##*:}"
    mkdir -p "$dst"
    cp "$src"/results.csv "$src"/summary.csv "$src"/summary.md "$src"/summary.png \
        "$src"/config.json "$dst"/
done
