"""Prune one hidden layer of a trained LeNet-300-100 with `coreset_prune`, then check the
certificate: measure the error on held-out data inside the query space Q and hunt for a worse
input with an adversarial search.

The certificate promises |z_j(x) - z^_j(x)| <= eps * e_j(x) for every x in Q and every next unit
j (e_j is the envelope). This script prints that promise next to what is measured, and the ratio
measured / eps (how tight the bound is), so the reader sees both that it holds and how loose it is.

    python examples/prune_layer.py                              # fc1, calibration Q, select, eps 0.3
    python examples/prune_layer.py --layer fc2 --mode sample --keep-fraction 0.5
    python examples/prune_layer.py --query data-free --keep 150   # vacuous: theory.md section 7
    python examples/prune_layer.py --layer fc2 --sensitivity exact --eps 0.3   # the LP bound
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import (
    accuracy,
    add_training_args,
    fashion_loaders,
    fmt_ratio,
    images,
    layer_inputs,
    load_or_train,
    model_kwargs,
    show_progress,
    with_modules,
)

from coreprune import QuerySpace, adversarial_search, coreset_prune, measure_error
from coreprune.coreset.prune import MODES
from coreprune.coreset.sensitivity import METHODS

# LeNet-300-100 is Sequential(Flatten, fc1, ReLU, fc2, ReLU, fc3): (producer, consumer) names.
LAYERS = {"fc1": ("layers.1", "layers.3"), "fc2": ("layers.3", "layers.5")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, model=None, epochs=3, limit=None, threads=1)
    p.add_argument("--layer", choices=tuple(LAYERS), default="fc1", help="the layer to prune")
    p.add_argument("--mode", choices=MODES, default="select")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--eps", type=float, default=None, help="certificate target; 0.3 when no budget is given"
    )
    budget.add_argument("--keep", type=int, default=None, help="units to keep instead of eps")
    budget.add_argument("--keep-fraction", type=float, default=None, help="fraction of units kept")
    p.add_argument(
        "--query",
        choices=("calibration", "data-free"),
        default="calibration",
        help="Q: the top-rank principal subspace of real layer inputs, or all of R^d",
    )
    p.add_argument("--rank", type=int, default=8, help="dimension of the calibration Q")
    p.add_argument("--calibration", type=int, default=2000, help="validation inputs spanning Q")
    p.add_argument("--held-out", type=int, default=2000, help="test inputs for measured error")
    p.add_argument(
        "--sensitivity",
        choices=METHODS,
        default="auto",
        help="bound: auto (leverage, plus the paper's ellipsoid when small), paper, leverage, "
        "exact (one LP per unit and next unit: slow on fc1 data-free), all",
    )
    p.add_argument("--delta", type=float, default=0.1, help="failure probability (sample mode)")
    p.add_argument("--restarts", type=int, default=32, help="adversarial search restarts")
    p.add_argument("--steps", type=int, default=150, help="adversarial search steps per restart")
    args = p.parse_args(argv)
    if args.eps is None and args.keep is None and args.keep_fraction is None:
        args.eps = 0.3
    if args.keep_fraction is not None and not 0 < args.keep_fraction <= 1:
        p.error(f"--keep-fraction must lie in (0, 1], got {args.keep_fraction}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the measured numbers (the tests check them)."""
    args = parse_args(argv)
    start = time.perf_counter()
    loaders = fashion_loaders(args)
    model, _ = load_or_train(args, "lenet300100", model_kwargs("lenet300100"), loaders)
    model = model.cpu().eval()  # small float64 geometry: the CPU is the right place
    dense_acc = accuracy(model, loaders.test)
    tested = len(loaders.test.dataset)  # type: ignore[arg-type]
    print(f"dense LeNet-300-100: test accuracy {dense_acc:.4f} on {tested} test images")

    producer_name, consumer_name = LAYERS[args.layer]
    layer = model.get_submodule(producer_name)
    next_layer = model.get_submodule(consumer_name)
    calib = layer_inputs(model, layer, images(loaders.val, args.calibration))
    held_out = layer_inputs(model, layer, images(loaders.test, args.held_out))
    if args.query == "data-free":
        query = None
        print(f"\nquery space: all of R^{layer.in_features} (data-free)")
    else:
        query = QuerySpace.from_calibration(calib, args.rank)
        print(
            f"\nquery space: the top-{args.rank} principal affine subspace of {len(calib)} "
            f"validation inputs of {args.layer} (in R^{layer.in_features})"
        )

    n = layer.out_features
    keep = args.keep
    if args.keep_fraction is not None:
        keep = max(1, round(args.keep_fraction * n))
    request = f"eps={args.eps:g}" if keep is None else f"keep={keep}"
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    result = coreset_prune(
        layer,
        next_layer,
        eps=None if keep is not None else args.eps,
        mode=args.mode,
        keep=keep,
        query=query,
        delta=args.delta,
        generator=gen,
        sensitivity=args.sensitivity,
        progress=show_progress(args),
    )
    prune_s = time.perf_counter() - t0
    cert = result.certificate
    s = result.sensitivity
    removed = sorted(set(range(n)) - set(result.keep.tolist()))
    print(
        f"pruning {args.layer} ({producer_name}, {n} units), read by {consumer_name} "
        f"({next_layer.out_features} next "
        f"units), mode={args.mode}, {request}, sensitivity={args.sensitivity} ({prune_s:.2f} s)"
    )
    print(
        f"sensitivity bounds ({cert.sensitivity}): min {s.min():.3g}, median {s.median():.3g}, "
        f"max {s.max():.3g}, total t = {cert.total_sensitivity:.4g}"
    )
    if bool(s.min() == s.max()) and removed:
        print("all sensitivities are equal (every unit can matter alone): ties are broken by index")
    shown = f": {removed}" if 0 < len(removed) <= 20 else ""
    print(f"kept {result.keep.numel()}/{n} units, removed {len(removed)}{shown}")
    print(f"certificate: {cert}")

    inside = measure_error(result, result.query.project(held_out))
    raw = measure_error(result, held_out)
    outside = result.query.residual(held_out)
    t0 = time.perf_counter()
    adv = adversarial_search(
        result, restarts=args.restarts, steps=args.steps, starts=held_out[:16], generator=gen
    )
    adv_s = time.perf_counter() - t0
    print(
        f"\nmeasured on {len(held_out)} held-out test inputs projected into Q (covered): "
        f"worst {inside.worst:.3e}, mean {inside.mean:.3e}; measured / eps = "
        f"{fmt_ratio(inside.worst, cert.eps)}"
    )
    if query is not None:
        print(
            f"the same inputs unprojected (NOT covered; they stick out of Q by "
            f"{outside.median():.1%} median, {outside.max():.1%} max): worst {raw.worst:.3e}"
        )
    print(
        f"adversarial search inside Q ({args.restarts} restarts x {args.steps} steps, "
        f"{adv_s:.1f} s): worst {adv.worst:.3e}; measured / eps = {fmt_ratio(adv.worst, cert.eps)}"
    )
    worst = max(inside.worst, adv.worst)
    violated = worst > cert.eps * (1 + 1e-9) + 1e-12
    if not violated:
        verdict = "no input in Q found that breaks the certificate"
    elif cert.delta > 0:
        verdict = (
            f"VIOLATION found: allowed for a sampled certificate with probability <= {cert.delta}"
        )
    else:
        verdict = "VIOLATION of a deterministic certificate: please report this as a bug"
    print(verdict + ("" if not cert.vacuous else " (the certificate is vacuous: eps >= 1)"))

    new_layer, new_next = result.apply()
    pruned = with_modules(model, {producer_name: new_layer, consumer_name: new_next})
    pruned_acc = accuracy(pruned, loaders.test)
    print(
        f"\ntest accuracy with {args.layer} pruned: {pruned_acc:.4f} (dense {dense_acc:.4f}); "
        f"total {time.perf_counter() - start:.1f} s"
    )
    return {
        "layer": args.layer,
        "mode": args.mode,
        "query": cert.query,
        "units": n,
        "kept": int(result.keep.numel()),
        "eps": cert.eps,
        "delta": cert.delta,
        "vacuous": cert.vacuous,
        "data_in_q": inside.worst,
        "data_raw": raw.worst,
        "adversarial": adv.worst,
        "violated": violated,
        "dense_accuracy": dense_acc,
        "accuracy": pruned_acc,
    }


if __name__ == "__main__":
    main()
