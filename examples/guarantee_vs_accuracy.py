"""What each certificate says as compression grows: worst-case eps next to held-out certificates
next to the measured test values, for the coreset and the magnitude and random baselines.

The worst-case certificate of each layer (`row.eps` in the compress report) holds for every
input of its query space, but at the budgets people prune to it is often vacuous (eps >= 1).
The held-out certificates (`coreprune.certify`) answer the question a user asks instead: on the
deployment distribution, how often does the pruned model agree with the dense one, how accurate
is it, and how often does a layer's output move by more than `--layer-eps`? They hold with
probability `--confidence` from a held-out sample that nothing else has seen.

The Fashion-MNIST test set is cut in two by a seeded permutation: the held-out part certifies,
the rest measures (so the plot shows each certified lower bound next to a value measured on
other data). Compression is data-free, or calibrated on validation images (never the test set).

    python examples/guarantee_vs_accuracy.py                    # pretrained LeNet-300-100
    python examples/guarantee_vs_accuracy.py --methods coreset --targets 0.5 0.8 --guarantee agreement=0.95
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import add_training_args, fashion_loaders, images, load_or_train, model_kwargs
from torch import nn

from coreprune import compress
from coreprune.certify import (
    Guarantee,
    certified_compress,
    certify,
    layer_exceedance,
)

METHODS = ("coreset", "magnitude", "random")
FIELDS = (
    "method", "target", "params_removed", "worst_eps", "vacuous_layers", "layers",
    "agreement_lower", "agreement_heldout", "agreement_test", "accuracy_lower",
    "accuracy_heldout", "accuracy_test", "drop_upper", "drop_test", "layer_exceed_upper",
    "layer_exceed_test", "seconds",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, model=None, epochs=3, limit=None, threads=1)
    p.add_argument(
        "--train",
        action="store_true",
        help="train LeNet-300-100 (cached) instead of loading the shipped pretrained weights",
    )
    p.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="fractions of params to remove",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--confidence", type=float, default=0.95, help="of every certificate")
    p.add_argument(
        "--holdout-fraction", type=float, default=0.5, help="share of the test set that certifies"
    )
    p.add_argument("--layer-eps", type=float, default=0.2, help="layer error threshold")
    p.add_argument(
        "--calibration",
        type=int,
        default=2000,
        help="validation images for the coreset's calibration query space (0: data-free)",
    )
    p.add_argument(
        "--guarantee",
        default=None,
        help="also run certified_compress for this guarantee, e.g. agreement=0.95",
    )
    p.add_argument("--out", type=Path, default=Path("runs") / "guarantee_vs_accuracy")
    args = p.parse_args(argv)
    if any(not 0 < t < 1 for t in args.targets):
        p.error("--targets must lie in (0, 1)")
    if not 0 < args.holdout_fraction < 1:
        p.error("--holdout-fraction must lie in (0, 1)")
    args.targets = sorted(set(args.targets))
    return args


def load_model(args: argparse.Namespace, loaders: Any) -> tuple[nn.Module, str]:
    """The shipped pretrained LeNet-300-100, or one trained here with --train (or if missing)."""
    if not args.train:
        try:
            from coreprune.harness.pretrained import load_pretrained

            return load_pretrained("lenet300100"), "pretrained"
        except (ImportError, FileNotFoundError) as err:
            print(f"no pretrained LeNet-300-100 ({err}); training one")
    model, _ = load_or_train(args, "lenet300100", model_kwargs("lenet300100"), loaders)
    return model, f"trained {args.epochs} epochs"


def split_test(loader: Any, fraction: float, seed: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """(held-out inputs, labels), (test inputs, labels): a seeded split of the test set."""
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = round(fraction * len(y))
    held, test = perm[:cut], perm[cut:]
    return (x[held], y[held]), (x[test], y[test])


def run(
    args: argparse.Namespace,
    model: nn.Module,
    method: str,
    target: float,
    holdout: tuple[torch.Tensor, ...],
    test: tuple[torch.Tensor, ...],
    calibration: torch.Tensor | None,
) -> dict[str, Any]:
    """Compress to `target` with `method`; certify on the holdout; measure on the test part."""
    t0 = time.perf_counter()
    result = compress(model, **compress_options(args, method, calibration), target=target)
    cert = certify(model, result.model, (holdout[0], holdout[1]), args.confidence)
    measured = certify(model, result.model, (test[0], test[1]), args.confidence)
    rows = result.report.rows
    layers = layer_exceedance(model, result.model, rows, holdout[0], args.layer_eps,
                              args.confidence)  # fmt: skip
    layers_test = layer_exceedance(model, result.model, rows, test[0], args.layer_eps,
                                   args.confidence)  # fmt: skip
    eps = [r.eps for r in rows if r.eps is not None]
    return {
        "method": method,
        "target": target,
        "params_removed": result.report.params_removed,
        "worst_eps": max(eps) if eps else math.nan,
        "vacuous_layers": sum(bool(r.vacuous) for r in rows),
        "layers": len(rows),
        "agreement_lower": cert.agreement_lower,
        "agreement_heldout": cert.agreement,
        "agreement_test": measured.agreement,
        "accuracy_lower": cert.accuracy_lower,
        "accuracy_heldout": cert.accuracy,
        "accuracy_test": measured.accuracy,
        "drop_upper": cert.accuracy_drop_upper,
        "drop_test": measured.accuracy_drop,
        "layer_exceed_upper": max(r.exceed_upper for r in layers),
        "layer_exceed_test": max(r.exceed_fraction for r in layers_test),
        "seconds": time.perf_counter() - t0,
    }


def compress_options(
    args: argparse.Namespace, method: str, calibration: torch.Tensor | None
) -> dict[str, Any]:
    options: dict[str, Any] = {"method": method, "progress": False}
    if method == "coreset" and calibration is not None:
        # the worst-case eps is what this example sets beside the held-out bounds
        options.update(calibration=calibration, worst_case=True)
    if method == "random":
        options["generator"] = torch.Generator().manual_seed(args.seed)
    return options


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep; returns the rows written to the CSV."""
    args = parse_args(argv)
    start = time.perf_counter()
    loaders = fashion_loaders(args)
    model, source = load_model(args, loaders)
    model = model.cpu().eval()
    holdout, test = split_test(loaders.test, args.holdout_fraction, args.seed)
    calibration = images(loaders.val, args.calibration) if args.calibration else None
    print(
        f"LeNet-300-100 ({source}); {len(holdout[1])} held-out images certify, "
        f"{len(test[1])} other test images measure; confidence {args.confidence:g} per row "
        f"(agreement, accuracy and drop hold together within a row)\n"
    )
    print(
        f"{'method':9} {'target':>6} {'removed':>7} {'worst eps':>10} | {'agree >=':>8} "
        f"{'test':>6} | {'acc >=':>6} {'test':>6} | {'drop <=':>7} {'test':>6} | "
        f"{'P(layer err>' + format(args.layer_eps, 'g') + ') <=':>18} {'test':>6}"
    )
    rows: list[dict[str, Any]] = []
    for method in args.methods:
        for target in args.targets:
            row = run(args, model, method, target, holdout, test, calibration)
            rows.append(row)
            _print_row(row)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "guarantee_vs_accuracy.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {csv_path}")
    with torch.no_grad():
        dense_acc = float((model(test[0]).argmax(1) == test[1]).double().mean())
    plot(rows, args, dense_acc, args.out / "guarantee_vs_accuracy.png")
    if args.guarantee:
        demo_certified(args, model, holdout, calibration)
    print(f"total {time.perf_counter() - start:.1f} s")
    return rows


def demo_certified(
    args: argparse.Namespace,
    model: nn.Module,
    holdout: tuple[torch.Tensor, ...],
    calibration: torch.Tensor | None,
) -> None:
    """certified_compress: the strongest budget of --targets whose guarantee is certified."""
    metric, _, level = args.guarantee.partition("=")
    guarantee = Guarantee(metric, float(level))
    try:
        out = certified_compress(
            model, guarantee=guarantee, holdout=(holdout[0], holdout[1]),
            confidence=args.confidence, targets=args.targets,
            **compress_options(args, "coreset", calibration),
        )  # fmt: skip
    except ValueError as err:
        print(f"\ncertified_compress: {err}")
        return
    print(f"\n{out}")


def _print_row(row: dict[str, Any]) -> None:
    eps = "—" if math.isnan(row["worst_eps"]) else f"{row['worst_eps']:.3g}"
    if row["vacuous_layers"]:
        eps += f" ({row['vacuous_layers']}/{row['layers']} vac.)"
    print(
        f"{row['method']:9} {row['target']:>6g} {100 * row['params_removed']:>6.1f}% "
        f"{eps:>10} | {row['agreement_lower']:>8.4f} {row['agreement_test']:>6.4f} | "
        f"{row['accuracy_lower']:>6.4f} {row['accuracy_test']:>6.4f} | "
        f"{row['drop_upper']:>+7.4f} {row['drop_test']:>+6.4f} | "
        f"{row['layer_exceed_upper']:>18.4f} {row['layer_exceed_test']:>6.4f}"
    )


def plot(
    rows: Sequence[dict[str, Any]], args: argparse.Namespace, dense_acc: float, path: Path
) -> None:
    """Certified lower bound (dashed) vs measured value (solid) as compression grows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'coreprune[plots]')")
        return
    colors = {"coreset": "tab:blue", "magnitude": "tab:orange", "random": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("agreement", "agreement with the dense model"),
        ("accuracy", "accuracy"),
    )
    for ax, (key, title) in zip(axes, panels, strict=False):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["target"])
            x = [100 * r["params_removed"] for r in mine]
            color = colors.get(method, "k")
            ax.plot(x, [r[f"{key}_test"] for r in mine], "-o", color=color, ms=4,
                    label=f"{method}: measured on test part")  # fmt: skip
            ax.plot(x, [r[f"{key}_lower"] for r in mine], "--v", color=color, ms=4,
                    label=f"{method}: certified lower bound")  # fmt: skip
        if key == "accuracy":
            ax.axhline(dense_acc, color="gray", ls=":", lw=1, label="dense model (test part)")
        ax.set_title(f"{title} (confidence {args.confidence:g})")
        ax.set_xlabel("params removed (%)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["target"])
        drawn = [r for r in mine if not math.isnan(r["worst_eps"]) and r["worst_eps"] > 0]
        if drawn:
            ax.plot([100 * r["params_removed"] for r in drawn], [r["worst_eps"] for r in drawn],
                    "-s", color=colors.get(method, "k"), ms=4,
                    label=f"{method}: worst-case eps (largest layer)")  # fmt: skip
        ax.plot([100 * r["params_removed"] for r in mine],
                [r["layer_exceed_upper"] for r in mine], "--v", color=colors.get(method, "k"),
                ms=4, alpha=0.6,
                label=f"{method}: certified P(layer error > {args.layer_eps:g})")  # fmt: skip
    ax.axhline(1.0, color="gray", ls=":", lw=1, label="1 (eps >= 1 is vacuous)")
    ax.set_yscale("log")
    ax.set_title("worst-case eps vs held-out layer exceedance")
    ax.set_xlabel("params removed (%)")
    ax.set_ylabel("eps / probability (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
