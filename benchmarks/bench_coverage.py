"""Coverage and tightness of the held-out certificates on trained Fashion-MNIST models.

Run from the repository root (``python -m benchmarks.bench_coverage``) to write
``benchmarks/results/coverage.md`` and ``.csv``; ``--help`` lists the options.

For each pretrained model (``coreprune.harness.pretrained``), pruning method and budget, the
dense and pruned models' predictions on the 10,000 Fashion-MNIST test images are computed once;
every split then costs only counting. Magnitude pruning is data-free and the coreset is
calibrated on validation images (training split) for the models in ``--calibrated-models``
and data-free for the others: no test image influences a pruned model.

Each of ``--splits`` random permutations cuts the test set into a held-out part (5,000) and a
fresh part (5,000). The certificate is computed on the held-out part, at confidence 0.95, both
with the simultaneous split of delta (the default of ``certify``) and with each bound on its
own at the full delta. A failure is a bound on the wrong side of a reference value:

* ``population``: the value on all 10,000 test images. Sampling the held-out half without
  replacement from them is less variable than i.i.d. sampling, so the failure rate must be at
  most delta (up to binomial noise over the splits).
* ``iid``: held-out sets drawn with replacement from the 10,000 images, i.e. exactly i.i.d.
  from the empirical test distribution, against its value: the theorem's setting verbatim.
* ``fresh``: the value measured on the fresh half. This reference is itself a noisy estimate
  of the same size, so even an exact bound fails it more often than delta: for a bound at
  z-score z, about P(Z > z / sqrt(2)) (0.12 at delta 0.05). Reported because it is what a user
  checking a certificate on new data sees; the column ``expected`` gives that rate.

Tightness: the certified agreement lower bound against the agreement measured on the fresh
part, in points, averaged over the splits (target: within 1.5 points at n = 5,000, delta 0.05).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import binom, norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks._machine import machine
from coreprune.certify import (
    HeldOutCertificate,
    Predictions,
    certify_predictions,
)
from coreprune.compress import compress
from coreprune.harness.data import make_loaders

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("lenet300100", "vgg_small", "resnet20")
METRICS = ("agreement", "accuracy", "accuracy_drop")
REFERENCES = ("population", "iid", "fresh")


@dataclass(frozen=True)
class Setting:
    model: str
    method: str
    target: float
    params_removed: float
    dense_accuracy: float
    calibrated: bool
    predictions: Predictions  # on all 10,000 test images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=["magnitude", "coreset"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    p.add_argument("--splits", type=int, default=1000, help="random held-out / fresh splits")
    p.add_argument("--holdout", type=int, default=5000, help="held-out part of each split")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument(
        "--calibration",
        type=int,
        default=2000,
        help="validation images (training split) for the coreset's calibration; 0: data-free",
    )
    p.add_argument(
        "--calibrated-models",
        nargs="*",
        default=["lenet300100"],
        help="models whose coreset is calibrated (the others are pruned data-free: a calibrated "
        "coreset of the conv models took over 10 minutes on the shared 2-core CPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.splits < 200:
        p.error("--splits must be >= 200")
    return args


def data(calibration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All 10,000 test images and labels, normalised as the pretrained models were trained, and
    the first `calibration` validation images (from the training split, never the test set)."""
    loaders = make_loaders("fashion_mnist", batch_size=1000, augment=False)
    xs, ys = zip(*loaders.test, strict=True)
    calib = torch.cat([x for x, _ in loaders.val])[:calibration] if calibration else None
    return torch.cat(xs), torch.cat(ys), calib


def classes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def settings(
    args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[list[Setting], list[str]]:
    """Predictions of every (model, method, budget) on the test set; missing models noted."""
    from coreprune.harness.pretrained import load_pretrained

    x, y, calib = data(args.calibration)
    out, notes = [], []
    for name in args.models:
        try:
            dense = load_pretrained(name)
        except FileNotFoundError as err:
            notes.append(f"{name}: not run ({err})")
            log(notes[-1])
            continue
        dense_pred = classes(dense, x)
        dense_acc = float((dense_pred == y).double().mean())
        for method in args.methods:
            for target in args.targets:
                t0 = time.perf_counter()
                use = calib if method == "coreset" and name in args.calibrated_models else None
                result = compress(dense, target=target, method=method, progress=False,
                                  calibration=use)  # fmt: skip
                pred = classes(result.model, x)
                out.append(Setting(name, method, target, result.report.params_removed, dense_acc,
                                   use is not None, Predictions(dense_pred, pred, y)))  # fmt: skip
                log(f"{name} {method} target {target}: params removed "
                    f"{100 * result.report.params_removed:.1f}%, test accuracy "
                    f"{float((pred == y).double().mean()):.4f} (dense {dense_acc:.4f}), "
                    f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return out, notes


def values(p: Predictions) -> dict[str, float]:
    """Agreement, pruned accuracy and accuracy drop measured on these predictions."""
    n = p.labels.numel()
    dense_right = int((p.dense == p.labels).sum())
    right = int((p.pruned == p.labels).sum())
    return {
        "agreement": int((p.dense == p.pruned).sum()) / n,
        "accuracy": right / n,
        "accuracy_drop": (dense_right - right) / n,
    }


def bound(cert: HeldOutCertificate, metric: str) -> float:
    return {
        "agreement": cert.agreement_lower,
        "accuracy": cert.accuracy_lower,
        "accuracy_drop": cert.accuracy_drop_upper,
    }[metric]


def fails(metric: str, b: float, reference: float) -> bool:
    return b < reference if metric == "accuracy_drop" else b > reference


def subset(p: Predictions, index: torch.Tensor) -> Predictions:
    return Predictions(p.dense[index], p.pruned[index], p.labels[index])


def run_setting(s: Setting, args: argparse.Namespace) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(args.seed)
    full = values(s.predictions)
    total = s.predictions.labels.numel()
    rows = []
    for simultaneous in (True, False):
        count = {(m, r): 0 for m in METRICS for r in REFERENCES}
        joint = {r: 0 for r in REFERENCES}
        gaps: list[float] = []
        bounds: dict[str, list[float]] = {m: [] for m in METRICS}
        fresh_values: dict[str, list[float]] = {m: [] for m in METRICS}
        cert = None
        for _ in range(args.splits):
            perm = torch.randperm(total, generator=gen)
            held, fresh = perm[: args.holdout], perm[args.holdout :]
            draw = torch.randint(0, total, (args.holdout,), generator=gen)
            cert = certify_predictions(subset(s.predictions, held), args.confidence,
                                       simultaneous=simultaneous)  # fmt: skip
            iid = certify_predictions(subset(s.predictions, draw), args.confidence,
                                      simultaneous=simultaneous)  # fmt: skip
            new = values(subset(s.predictions, fresh))
            any_fail = dict.fromkeys(REFERENCES, False)
            for m in METRICS:
                b = bound(cert, m)
                bounds[m].append(b)
                fresh_values[m].append(new[m])
                for ref, bb, value in (("population", b, full[m]), ("iid", bound(iid, m), full[m]),
                                       ("fresh", b, new[m])):  # fmt: skip
                    if fails(m, bb, value):
                        count[(m, ref)] += 1
                        any_fail[ref] = True
            for ref in REFERENCES:
                joint[ref] += any_fail[ref]
            gaps.append(new["agreement"] - cert.agreement_lower)
        assert cert is not None
        delta = 1 - args.confidence
        for m in METRICS:
            d = {"agreement": cert.delta_agreement, "accuracy": cert.delta_accuracy,
                 "accuracy_drop": cert.delta_drop}[m]  # fmt: skip
            for ref in REFERENCES:
                rows.append(row(s, args, simultaneous, m, ref, d, count[(m, ref)],
                                bounds[m], fresh_values[m], full[m], gaps))  # fmt: skip
        if simultaneous:
            for ref in REFERENCES:
                rows.append(row(s, args, True, "all three", ref, delta, joint[ref], [], [],
                                math.nan, gaps))  # fmt: skip
    return rows


def expected_fresh(metric: str, delta: float, n: int) -> float:
    """Failure rate of an exact normal-approximation bound against an equally noisy fresh half."""
    z = norm.isf(delta / 2 if metric == "accuracy_drop" else delta)
    return float(norm.sf(z / math.sqrt(2)))


def row(s: Setting, args: argparse.Namespace, simultaneous: bool, metric: str, ref: str,
        delta: float, failures: int, bounds: list[float], fresh: list[float], full: float,
        gaps: list[float]) -> dict[str, object]:  # fmt: skip
    splits = args.splits
    allowed = delta + 2 * math.sqrt(delta * (1 - delta) / splits)
    expected = (
        expected_fresh(metric, delta, args.holdout) if ref == "fresh" and bounds else math.nan
    )
    return {
        "model": s.model,
        "method": s.method,
        "target": s.target,
        "params_removed": round(s.params_removed, 4),
        "dense_accuracy": round(s.dense_accuracy, 4),
        "bounds": "simultaneous" if simultaneous else "each alone",
        "metric": metric,
        "reference": ref,
        "delta": round(delta, 5),
        "splits": splits,
        "failures": failures,
        "failure_rate": round(failures / splits, 4),
        "allowed": round(allowed, 4) if ref != "fresh" else math.nan,
        "expected": round(expected, 4),
        "ok": (failures / splits <= allowed) if ref != "fresh" else "",
        # P(at least this many failures | a bound failing with probability exactly delta)
        "p_value": round(float(binom.sf(failures - 1, splits, delta)), 4)
        if ref != "fresh"
        else math.nan,
        "population_value": round(full, 4),
        "mean_bound": round(statistics.fmean(bounds), 4) if bounds else math.nan,
        "mean_fresh": round(statistics.fmean(fresh), 4) if fresh else math.nan,
        "agreement_gap_points_mean": round(100 * statistics.fmean(gaps), 3),
        "agreement_gap_points_p95": round(100 * sorted(gaps)[int(0.95 * len(gaps))], 3),
    }


def markdown(rows: list[dict[str, object]], setting_rows: list[Setting], notes: list[str],
             args: argparse.Namespace, header: str, seconds: float) -> str:  # fmt: skip
    delta = 1 - args.confidence
    lines = [
        "# Held-out certificate coverage and tightness",
        "",
        f"Machine: {header}; torch threads {args.threads}. Wall time {seconds:.0f} s.",
        "",
        "    python -m benchmarks.bench_coverage "
        + " ".join(
            [
                f"--splits {args.splits}",
                f"--holdout {args.holdout}",
                f"--confidence {args.confidence}",
                "--models " + " ".join(args.models),
                "--methods " + " ".join(args.methods),
                "--targets " + " ".join(f"{t:g}" for t in args.targets),
            ]
        ),
        "",
        f"Fashion-MNIST test set (10,000 images), {args.splits} random splits into "
        f"{args.holdout:,} held-out and {10000 - args.holdout:,} fresh images; confidence "
        f"{args.confidence:g} (delta {delta:g}). Pruning: `compress(..., target=t, method=m)` with "
        "default options; the coreset is calibrated on "
        f"{args.calibration} validation images (training split) where the table says so and "
        "data-free otherwise, magnitude is data-free: no test image shaped a pruned model. See "
        "the docstring of `benchmarks/bench_coverage.py` for the three references.",
        "",
        "## Models",
        "",
        "| model | method | calibration | target | params removed | dense test acc | "
        "pruned test acc | test agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in setting_rows:
        v = values(s.predictions)
        lines.append(
            f"| {s.model} | {s.method} | "
            f"{f'{args.calibration} val images' if s.calibrated else 'data-free'} | "
            f"{s.target:g} | {100 * s.params_removed:.1f}% | "
            f"{s.dense_accuracy:.4f} | {v['accuracy']:.4f} | {v['agreement']:.4f} |"
        )
    lines += [f"- {n}" for n in notes]
    valid = [r for r in rows if r["reference"] in ("population", "iid")]
    broken = [r for r in valid if not r["ok"]]
    worst = max(valid, key=lambda r: float(r["failure_rate"]) / float(r["delta"]))  # type: ignore[arg-type]
    gaps = [r for r in rows if r["metric"] == "agreement" and r["reference"] == "fresh"]
    smallest = min(valid, key=lambda r: float(r["p_value"]))  # type: ignore[arg-type]
    adjusted = min(1.0, float(smallest["p_value"]) * len(valid))  # type: ignore[arg-type]
    lines += [
        "",
        "## Summary",
        "",
        f"- validity: {len(valid) - len(broken)} of {len(valid)} (setting, bound, reference) "
        "rows have a failure rate within delta + 2 binomial standard deviations"
        + (f"; above it: {len(broken)}" if broken else "")
        + f" (a bound failing with probability exactly delta would put about "
        f"{0.023 * len(valid):.1f} rows above it by chance). Highest failure rate relative to "
        f"its delta: {worst['failure_rate']:.3f} at delta {worst['delta']:.4f} "
        f"({worst['model']}, {worst['method']}, target {worst['target']}, {worst['bounds']}, "
        f"{worst['metric']}, {worst['reference']}). Smallest one-sided binomial p-value of a "
        f"row's failure count under 'fails with probability delta': {smallest['p_value']:.4f}, "
        f"{adjusted:.3f} after Bonferroni over the {len(valid)} rows "
        + (
            "(no evidence of a bound failing more often than delta)."
            if adjusted > 0.05
            else "(EVIDENCE of a bound failing more often than delta)."
        ),
        "- tightness (certified agreement lower bound vs fresh agreement, mean over splits): "
        + ", ".join(
            f"{r['model']} {r['method']} {r['target']:g} {r['bounds']}: "
            f"{float(r['agreement_gap_points_mean']):.2f}"  # type: ignore[arg-type]
            for r in gaps
        )
        + " points.",
    ]
    lines += [
        "",
        "## Coverage: how often a bound lands on the wrong side",
        "",
        "`population` and `iid` are the tests of validity: the failure rate must not exceed "
        "`allowed` = delta + 2 binomial standard deviations over the splits. `fresh` compares "
        "with a second noisy sample of the same size; `expected` is the rate an exact bound "
        "shows there (see above), not a limit.",
        "",
        "| model | method | target | bounds | metric | delta | population | iid | allowed | "
        "ok | min p-value | fresh | expected (fresh) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    index: dict[tuple[object, ...], dict[str, object]] = {}
    for r in rows:
        index[(r["model"], r["method"], r["target"], r["bounds"], r["metric"], r["reference"])] = r
    seen = set()
    for r in rows:
        key = (r["model"], r["method"], r["target"], r["bounds"], r["metric"])
        if key in seen:
            continue
        seen.add(key)
        full_keys = [tuple([*key, ref]) for ref in REFERENCES]
        pop, iid, fresh = (index[k] for k in full_keys)
        ok = "yes" if pop["ok"] and iid["ok"] else "NO"
        exp = "—" if math.isnan(float(fresh["expected"])) else f"{fresh['expected']:.3f}"  # type: ignore[arg-type]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]:g} | {key[3]} | {key[4]} | {pop['delta']:.4f} | "
            f"{pop['failure_rate']:.3f} | {iid['failure_rate']:.3f} | {pop['allowed']:.3f} | "
            f"{ok} | {min(float(pop['p_value']), float(iid['p_value'])):.3f} | "  # type: ignore[arg-type]
            f"{fresh['failure_rate']:.3f} | {exp} |"
        )
    lines += [
        "",
        "## Tightness: certified agreement lower bound vs agreement on the fresh part",
        "",
        "Gap = fresh agreement − certified lower bound, in points (mean and 95th percentile over "
        f"the splits). Target: mean gap ≤ 1.5 points at n = {args.holdout:,}.",
        "",
        "| model | method | target | bounds | mean bound | mean fresh | gap mean | gap p95 | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["metric"] == "agreement" and r["reference"] == "fresh":
            gap = float(r["agreement_gap_points_mean"])  # type: ignore[arg-type]
            lines.append(
                f"| {r['model']} | {r['method']} | {r['target']:g} | {r['bounds']} | "
                f"{r['mean_bound']:.4f} | {r['mean_fresh']:.4f} | {gap:.2f} | "
                f"{r['agreement_gap_points_p95']:.2f} | {'yes' if gap <= 1.5 else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header = machine()
    start = time.perf_counter()
    setting_rows, notes = settings(args, print)
    rows = [r for s in setting_rows for r in run_setting(s, args)]
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "coverage.csv").open("w", newline="") as handle:
        handle.write(f"# {header}; torch threads {args.threads}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, setting_rows, notes, args, header, seconds)
    (args.out / "coverage.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
