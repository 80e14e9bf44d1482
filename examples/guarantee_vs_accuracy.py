"""Sweep the pruning budget on LeNet-300-100 and put each certified eps next to the measured
layer error (on held-out data and by adversarial search) and the test accuracy.

For each target (fc1 alone, fc2 alone, or every hidden layer via `coreprune.compress`), each
query space (data-free, or the calibration subspace), each mode (select, sample) and each
request (an eps, or a kept fraction of units) it records one row. It writes them to a CSV and
draws two plots: certified eps against measured worst error (log-log, with the line y = x that
no point may cross) and accuracy against the fraction of units kept.

With every hidden layer pruned, a row reports the worst layer: the largest certified eps and the
largest measured error over the pruned pairs. Each pair's error is measured as `compress` saw it,
in the network with the earlier pairs already pruned (that is what its certificate covers).

    python examples/guarantee_vs_accuracy.py                 # a few minutes on a 2-core CPU
    python examples/guarantee_vs_accuracy.py --eps 0.1 0.3 --keep-fractions 0.5 --targets fc2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import (
    accuracy,
    add_training_args,
    fashion_loaders,
    images,
    layer_inputs,
    load_or_train,
    model_kwargs,
    with_modules,
)
from torch import nn

from coreprune import (
    PruneResult,
    QuerySpace,
    adversarial_search,
    compress,
    coreset_prune,
    measure_error,
)
from coreprune.compress import DEFAULT_RANK, MAX_CALIBRATION_ROWS, CompressResult
from coreprune.coreset import Sensitivities
from coreprune.coreset.prune import MODES
from coreprune.coreset.sensitivity import METHODS

# LeNet-300-100 is Sequential(Flatten, fc1, ReLU, fc2, ReLU, fc3): (producer, consumer) names.
LAYERS = {"fc1": ("layers.1", "layers.3"), "fc2": ("layers.3", "layers.5")}
TARGETS = (*LAYERS, "all")
QUERIES = ("data-free", "calibration")
FIELDS = (
    "target", "query", "mode", "request", "eps_requested", "keep_fraction_requested", "units",
    "kept", "kept_fraction", "params", "cert_eps", "cert_delta", "vacuous", "data_error",
    "data_error_raw", "adversarial_error", "ratio_data", "ratio_adversarial", "violations",
    "accuracy", "seconds",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, model=None, epochs=3, limit=None, threads=1)
    p.add_argument(
        "--eps", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0], help="eps sweep"
    )
    p.add_argument(
        "--keep-fractions",
        type=float,
        nargs="*",
        default=[0.9, 0.75, 0.5],
        help="kept fractions of units (with every layer: 1 - the params target of compress)",
    )
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--queries", nargs="+", choices=QUERIES, default=list(QUERIES))
    p.add_argument("--rank", type=int, default=DEFAULT_RANK, help="calibration subspace dimension")
    p.add_argument(
        "--calibration",
        type=int,
        default=2000,
        help=f"validation images spanning Q (at most {MAX_CALIBRATION_ROWS}, compress's cap)",
    )
    p.add_argument("--held-out", type=int, default=2000, help="test inputs for measured error")
    p.add_argument("--sensitivity", choices=METHODS, default="auto", help="sensitivity bound")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability (sample mode)")
    p.add_argument("--restarts", type=int, default=16, help="adversarial search restarts")
    p.add_argument("--steps", type=int, default=100, help="adversarial search steps")
    p.add_argument("--out", type=Path, default=Path("runs") / "guarantee_vs_accuracy")
    args = p.parse_args(argv)
    if not 1 <= args.calibration <= MAX_CALIBRATION_ROWS:
        p.error(f"--calibration must lie in [1, {MAX_CALIBRATION_ROWS}]")
    if any(not 0 < f <= 1 for f in args.keep_fractions):
        p.error("--keep-fractions must lie in (0, 1]")
    if not args.eps and not args.keep_fractions:
        p.error("give at least one --eps or --keep-fractions value")
    return args


class Sweep:
    """The trained model, its data and the measuring routine shared by every row."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, loaders: Any) -> None:
        self.args = args
        self.model = model
        self.test_loader = loaders.test
        self.calib_images = images(loaders.val, args.calibration)
        self.test_images = images(loaders.test, args.held_out)
        self.gen = torch.Generator().manual_seed(args.seed)
        # Computed once per dense layer (the SVD of the calibration inputs takes seconds):
        self.sens: dict[tuple[str, str], Sensitivities] = {}  # (producer, query)
        self.queries: dict[tuple[str, str], QuerySpace | None] = {}
        self.held: dict[str, torch.Tensor] = {}

    def query_for(
        self, net: nn.Module, name: str, query: str, dense: bool = True
    ) -> QuerySpace | None:
        """Data-free (None), or the calibration subspace of layer `name`'s inputs in `net`."""
        if query == "data-free":
            return None
        if dense and (name, query) in self.queries:
            return self.queries[(name, query)]
        inputs = layer_inputs(net, net.get_submodule(name), self.calib_images)
        space = QuerySpace.from_calibration(inputs, self.args.rank)
        if dense:
            self.queries[(name, query)] = space
        return space

    def measure(
        self, net: nn.Module, name: str, result: PruneResult, dense: bool = True
    ) -> dict[str, Any]:
        """Worst error on held-out inputs projected into Q, unprojected, and adversarially in Q,
        and whether either exceeds the certificate (1 = a violation)."""
        held = self.held.get(name) if dense else None
        if held is None:
            held = layer_inputs(net, net.get_submodule(name), self.test_images)
            if dense:
                self.held[name] = held
        inside = measure_error(result, result.query.project(held)).worst
        raw = measure_error(result, held).worst
        adv = adversarial_search(
            result,
            restarts=self.args.restarts,
            steps=self.args.steps,
            starts=held[:16],
            generator=self.gen,
        ).worst
        eps = result.certificate.eps
        broken = max(inside, adv) > eps * (1 + 1e-9) + 1e-12  # the 1e-9 of theory.md section 6
        return {
            "data_error": inside,
            "data_error_raw": raw,
            "adversarial_error": adv,
            "violations": int(broken),
        }

    def one_layer(
        self, target: str, query: str, mode: str, eps: float | None, keep: float | None
    ) -> dict[str, Any]:
        """Prune one hidden layer with `coreset_prune`; the rest of the network stays dense."""
        producer_name, consumer_name = LAYERS[target]
        layer = self.model.get_submodule(producer_name)
        next_layer = self.model.get_submodule(consumer_name)
        q = self.query_for(self.model, producer_name, query)
        n = layer.out_features
        count = None if keep is None else max(1, round(keep * n))
        result = coreset_prune(
            layer,
            eps,
            next_layer,
            mode=mode,
            keep=count,
            query=q,
            delta=self.args.delta,
            generator=self.gen,
            sensitivity=self.args.sensitivity,
            sensitivities=self.sens.get((producer_name, query)),
        )
        self.sens[(producer_name, query)] = result.sensitivities
        errors = self.measure(self.model, producer_name, result)
        new_layer, new_next = result.apply()
        pruned = with_modules(self.model, {producer_name: new_layer, consumer_name: new_next})
        cert = result.certificate
        return {
            "units": n,
            "kept": cert.kept,
            "params": sum(p.numel() for p in pruned.parameters()),
            "cert_eps": cert.eps,
            "cert_delta": cert.delta,
            "vacuous": cert.vacuous,
            **errors,
            "accuracy": accuracy(pruned, self.test_loader),
        }

    def all_layers(
        self, query: str, mode: str, eps: float | None, keep: float | None
    ) -> dict[str, Any]:
        """Prune every hidden layer with `compress`, then measure each pair as compress saw it."""
        calibration = None if query == "data-free" else self.calib_images
        result = compress(
            self.model,
            eps=eps,
            target=None if keep is None else 1 - keep,
            mode=mode,
            calibration=calibration,
            rank=None if calibration is None else self.args.rank,
            delta=self.args.delta,
            generator=self.gen,
            sensitivity=self.args.sensitivity,
            progress=False,
        )
        errors = self.replay(result, query)
        report = result.report
        certs = [r.certificate for r in report if r.certificate is not None]
        worst = max(certs, key=lambda c: c.eps)
        return {
            "units": sum(r.units_before for r in report),
            "kept": sum(r.units_after for r in report),
            "params": report.params_after,
            "cert_eps": worst.eps,
            "cert_delta": max(c.delta for c in certs),
            "vacuous": worst.vacuous,
            **errors,
            "accuracy": accuracy(result.model, self.test_loader),
        }

    def replay(self, result: CompressResult, query: str) -> dict[str, Any]:
        """Redo compress's pairs in order on a dense copy, measuring each pair's layer error.

        Each pair gets a `PruneResult` for its current modules and query space whose kept units,
        scales and certificate are the report row's, so the library's own error algebra
        (`measure_error`, `adversarial_search`) checks exactly what compress did. The rebuilt
        network must equal `result.model`; a mismatch is an error, not a silent difference.
        """
        work = with_modules(self.model, {})
        worst = {"data_error": 0.0, "data_error_raw": 0.0, "adversarial_error": 0.0}
        violations = 0
        for index, row in enumerate(result.report):
            layer = work.get_submodule(row.producer)
            next_layer = work.get_submodule(row.consumer)
            dense = index == 0  # the first pair sees the dense network
            q = self.query_for(work, row.producer, query, dense)
            base = coreset_prune(
                layer,
                None,
                next_layer,
                keep=layer.out_features,
                mode="select",
                query=q,
                sensitivity=self.args.sensitivity,
                sensitivities=self.sens.get((row.producer, query)) if dense else None,
            )
            if dense:
                self.sens[(row.producer, query)] = base.sensitivities
            if row.certificate is None or base.query.describe() != row.query:
                raise RuntimeError(f"{row.producer}: cannot rebuild compress's query space")
            pair = dataclasses.replace(
                base,
                keep=row.keep,
                scale=row.scale.to(torch.float64),
                certificate=row.certificate,
            )
            errors = self.measure(work, row.producer, pair, dense)
            violations += errors.pop("violations")
            for key, value in errors.items():
                worst[key] = max(worst[key], value)
            new_layer, new_next = pair.apply()
            work = with_modules(work, {row.producer: new_layer, row.consumer: new_next})
        final = dict(result.model.state_dict())
        for name, tensor in work.state_dict().items():
            if final[name].shape != tensor.shape or not torch.allclose(final[name], tensor):
                raise RuntimeError(f"replay differs from compress's model at {name}")
        return {**worst, "violations": violations}


def requests(args: argparse.Namespace) -> list[tuple[str, float | None, float | None]]:
    """(label, eps, kept fraction) for each point of the sweep."""
    out: list[tuple[str, float | None, float | None]] = [(f"eps={e:g}", e, None) for e in args.eps]
    out += [(f"keep={f:g}", None, f) for f in args.keep_fractions]
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the sweep; returns the rows written to the CSV."""
    args = parse_args(argv)
    start = time.perf_counter()
    loaders = fashion_loaders(args)
    model, _ = load_or_train(args, "lenet300100", model_kwargs("lenet300100"), loaders)
    model = model.cpu().eval()  # small float64 geometry: the CPU is the right place
    dense_acc = accuracy(model, loaders.test)
    print(f"dense LeNet-300-100: test accuracy {dense_acc:.4f}\n")
    sweep = Sweep(args, model, loaders)
    rows: list[dict[str, Any]] = []
    header = (
        f"{'target':6} {'query':11} {'mode':6} {'request':10} {'kept':>8} {'cert eps':>9} "
        f"{'data':>9} {'advers.':>9} {'adv/eps':>7} {'test acc':>8}"
    )
    print(header)
    for target in args.targets:
        for query in args.queries:
            for mode in args.modes:
                for label, eps, keep in requests(args):
                    t0 = time.perf_counter()
                    if target == "all":
                        row = sweep.all_layers(query, mode, eps, keep)
                    else:
                        row = sweep.one_layer(target, query, mode, eps, keep)
                    row = _finish(row, target, query, mode, label, eps, keep, t0)
                    rows.append(row)
                    _print_row(row)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "guarantee_vs_accuracy.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {csv_path}")
    broken = [r for r in rows if r["violations"]]
    print(
        f"{len(broken)} of {len(rows)} rows have a layer whose measured error exceeds its "
        "certified eps"
        + (" (sampled certificates may fail with probability delta)" if broken else "")
    )
    plot(rows, dense_acc, args.out / "guarantee_vs_accuracy.png")
    print(f"total {time.perf_counter() - start:.1f} s")
    return rows


def _finish(
    row: dict[str, Any],
    target: str,
    query: str,
    mode: str,
    label: str,
    eps: float | None,
    keep: float | None,
    t0: float,
) -> dict[str, Any]:
    cert = row["cert_eps"]
    return {
        "target": target,
        "query": query,
        "mode": mode,
        "request": label,
        "eps_requested": eps,
        "keep_fraction_requested": keep,
        **row,
        "kept_fraction": row["kept"] / row["units"],
        "ratio_data": row["data_error"] / cert if cert > 0 else math.nan,
        "ratio_adversarial": row["adversarial_error"] / cert if cert > 0 else math.nan,
        "seconds": time.perf_counter() - t0,
    }


def _print_row(row: dict[str, Any]) -> None:
    eps = f"{row['cert_eps']:.3g}" + ("*" if row["vacuous"] else "")
    print(
        f"{row['target']:6} {row['query']:11} {row['mode']:6} {row['request']:10} "
        f"{row['kept']:>4}/{row['units']:<3} {eps:>9} {row['data_error']:>9.2e} "
        f"{row['adversarial_error']:>9.2e} {row['ratio_adversarial']:>7.3f} "
        f"{row['accuracy']:>8.4f}" + ("  VIOLATION" if row["violations"] else "")
    )


def plot(rows: Sequence[dict[str, Any]], dense_acc: float, path: Path) -> None:
    """Certified eps vs measured error (log-log, y = x) and accuracy vs kept fraction."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'coreprune[plots]')")
        return
    targets = list(dict.fromkeys(r["target"] for r in rows))
    colors = {"data-free": "tab:red", "calibration": "tab:blue"}
    markers = {"select": "o", "sample": "^"}
    fig, axes = plt.subplots(len(targets), 2, figsize=(11, 3.6 * len(targets)), squeeze=False)
    for (left, right), target in zip(axes, targets, strict=True):
        mine = [r for r in rows if r["target"] == target]
        drawn = [r for r in mine if r["cert_eps"] > 0 and r["adversarial_error"] > 0]
        for query, color in colors.items():
            for mode, marker in markers.items():
                group = [r for r in drawn if r["query"] == query and r["mode"] == mode]
                everyone = [r for r in mine if r["query"] == query and r["mode"] == mode]
                if group:
                    eps = [r["cert_eps"] for r in group]
                    left.scatter(eps, [r["adversarial_error"] for r in group], c=color,
                                 marker=marker, label=f"{query}, {mode}: adversarial")  # fmt: skip
                    left.scatter(eps, [r["data_error"] for r in group], facecolors="none",
                                 edgecolors=color, marker=marker, label=f"{query}, {mode}: data")  # fmt: skip
                if everyone:
                    right.scatter([r["kept_fraction"] for r in everyone],
                                  [r["accuracy"] for r in everyone], c=color, marker=marker,
                                  label=f"{query}, {mode}")  # fmt: skip
        if drawn:
            values = [r["cert_eps"] for r in drawn] + [
                v for r in drawn for v in (r["adversarial_error"], r["data_error"]) if v > 0
            ]
            lo, hi = min(values) / 2, max(values) * 2
            left.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (certificate)")
            if hi > 1:
                left.axvline(1.0, color="gray", ls=":", lw=1, label="eps = 1 (vacuous beyond)")
            left.set_xscale("log")
            left.set_yscale("log")
            left.legend(fontsize=7)
        skipped = len(mine) - len(drawn)
        left.set_title(f"{target}: worst error vs certified eps")
        if skipped:
            left.text(0.98, 0.02, f"not drawn (eps or error 0): {skipped} rows", ha="right",
                      va="bottom", transform=left.transAxes, fontsize=7)  # fmt: skip
        left.set_xlabel("certified eps")
        left.set_ylabel("measured worst relative error")
        right.axhline(dense_acc, color="gray", ls=":", label="dense")
        right.set_title(f"{target}: test accuracy vs units kept")
        right.set_xlabel("fraction of units kept")
        right.set_ylabel("test accuracy")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
