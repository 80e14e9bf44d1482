"""The summary of the rows: mean ± std over seeds, the markdown tables and the plot."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from coreprune.harness.comparison.config import METHODS
from coreprune.harness.evaluation.robustness import DEFAULT_SIGMAS


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (model, metric, target, method)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["metric"], float(r["target"]), r["method"]), []).append(r)
    out = []
    for (model, metric, target, method), group in sorted(groups.items(), key=_order):
        entry: dict[str, Any] = {"model": model, "metric": metric, "target": target,
                                 "method": method, "seeds": len(group),
                                 "when": group[0].get("when") or "trained"}  # fmt: skip
        for col in ("dense_accuracy", "pruned_accuracy", "recalibrated_accuracy",
                    "finetuned_accuracy", "params_removed", "macs_removed", "prune_seconds",
                    "agreement", "ece", *(f"noise_{s:g}" for s in DEFAULT_SIGMAS)):  # fmt: skip
            values = [float(r[col]) for r in group if r.get(col) is not None]
            values = [v for v in values if not math.isnan(v)]  # e.g. no BN step at init
            entry[col] = statistics.fmean(values) if values else math.nan
            entry[col + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def _order(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
    model, metric, target, method = item[0]
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (model, metric, target, rank, method)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """One row per (model, budget), one column pair per method: pruned | fine-tuned accuracy."""
    methods = [m for m in METHODS if any(s["method"] == m for s in summary)]
    methods += sorted({s["method"] for s in summary} - set(methods))
    head = "| model | budget | removed (params / MACs) | dense | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    budgets: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for s in summary:
        budgets.setdefault((s["model"], s["metric"], s["target"]), {})[s["method"]] = s
    for (model, metric, target), by_method in budgets.items():
        first = next(iter(by_method.values()))
        best_tuned = max(v["finetuned_accuracy"] for v in by_method.values())
        cells = []
        for m in methods:
            if m not in by_method:
                cells.append("—")
                continue
            s = by_method[m]
            tuned = _pm(s["finetuned_accuracy"], s["finetuned_accuracy_std"], s["seeds"])
            if s["finetuned_accuracy"] == best_tuned:
                tuned = f"**{tuned}**"
            cells.append(
                f"{_pct(s['pruned_accuracy'])} / {_pct(s['recalibrated_accuracy'])} → {tuned}"
            )
        removed = f"{100 * first['params_removed']:.1f}% / " + (
            "—" if math.isnan(first["macs_removed"]) else f"{100 * first['macs_removed']:.1f}%"
        )
        lines.append(
            f"| {model} | {100 * target:g}% {metric} | {removed} | "
            f"{100 * first['dense_accuracy']:.2f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    if any(s.get("when") == "init" for s in summary):
        lines.append(
            "Pruned at initialisation: accuracy of the untrained pruned model / — → after "
            "training the pruned model for the dense model's epochs (± std over seeds)."
        )
        return "\n".join(lines)
    lines.append(
        "Test accuracy (%), mean over seeds: right after pruning / after re-estimating batch-norm "
        "statistics (no gradient step) → after the same fine-tuning (± std over seeds); the best "
        "fine-tuned accuracy of each budget in bold. Every method has the same architecture, so "
        "the same params and MACs, at each budget."
    )
    return "\n".join(lines)


def beyond_accuracy_table(summary: Sequence[dict[str, Any]]) -> str:
    """Fine-tuned accuracy next to agreement with the dense model, ECE and accuracy under
    Gaussian input noise ("Lost in Pruning"), one row per (model, budget, method)."""
    noise = [f"noise_{s:g}" for s in DEFAULT_SIGMAS]
    head = ("| model | budget | method | accuracy | agreement | ECE | "
            + " | ".join(f"acc @ σ={s:g}" for s in DEFAULT_SIGMAS) + " |")  # fmt: skip
    lines = [head, "|" + "---|" * (6 + len(noise))]
    for s in summary:
        if math.isnan(s.get("agreement", math.nan)):
            continue
        cells = [_pm(s["finetuned_accuracy"], s["finetuned_accuracy_std"], s["seeds"]),
                 _pm(s["agreement"], s["agreement_std"], s["seeds"]), f"{s['ece']:.4f}"]  # fmt: skip
        cells += [f"{100 * s[n]:.2f}" for n in noise]
        lines.append(f"| {s['model']} | {100 * s['target']:g}% {s['metric']} | {s['method']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "After fine-tuning; mean (± std) over seeds; agreement = top-1 agreement with "
              "the dense model on the test set; noise = Gaussian noise of std σ added to the "
              "normalised inputs, the same noise for every method."]  # fmt: skip
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def _pm(mean: float, std: float, seeds: int) -> str:
    """Mean ± std in percent; just the mean for a single seed (no spread was measured)."""
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if seeds > 1 else "")


def plot_summary(summary: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Accuracy vs fraction removed, one line per method, one panel per (model, metric).

    Needs matplotlib, the "plots" extra: without it, ImportError says how to install it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'coreprune[plots]'") from err
    panels = sorted({(s["model"], s["metric"]) for s in summary})
    kinds: tuple[tuple[str, str], ...] = (
        ("pruned_accuracy", "no fine-tuning"), ("recalibrated_accuracy", "BN re-estimated"),
        ("finetuned_accuracy", "fine-tuned"),
    )  # fmt: skip
    # A kind no run measured (BN re-estimation at init, say) gets no row of empty panels.
    kinds = tuple(k for k in kinds if any(_finite(s[k[0]]) for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    # Up to 20 methods get a colour each (tab10, then tab20); markers tell them apart beyond.
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    palette = [cmap(i) for i in range(cmap.N)]
    style = {m: (palette[i % len(palette)], "osD^v<>ph*"[i // len(palette) % 10])
             for i, m in enumerate(methods)}  # fmt: skip
    fig, axes = plt.subplots(len(kinds), len(panels), figsize=(4.2 * len(panels), 3.4 * len(kinds)),
                             squeeze=False)  # fmt: skip
    for col, (model, metric) in enumerate(panels):
        targets = sorted(
            {s["target"] for s in summary if (s["model"], s["metric"]) == (model, metric)}
        )
        single = len(targets) == 1  # one budget: methods side by side, not a line over targets
        for row, (key, label) in enumerate(kinds):
            ax = axes[row][col]
            for index, method in enumerate(methods):
                pts = sorted((s["target"], s[key], s[key + "_std"]) for s in summary
                             if s["model"] == model and s["metric"] == metric
                             and s["method"] == method and _finite(s[key]))  # fmt: skip
                if pts:
                    xs, ys, es = zip(*pts, strict=True)
                    color, marker = style[method]
                    where = [index] if single else xs
                    ax.errorbar(where, ys, yerr=es, marker=marker, color=color, capsize=3,
                                ls="none" if single else "-", label=method)  # fmt: skip
            dense = [s["dense_accuracy"] for s in summary if s["model"] == model]
            if dense:
                ax.axhline(statistics.fmean(dense), color="gray", ls="--", lw=1, label="dense")
            ax.set_title(f"{model}, matched {metric}, {label}", fontsize=9)
            if single:
                ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
                ax.set_xlabel(f"method, at {100 * targets[0]:g}% of {metric} removed", fontsize=8)
            else:
                ax.set_xticks(targets)
                ax.set_xlabel(f"fraction of {metric} removed (target)")
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # every method once, even one missing from the first panel
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    labels = [m for m in (*methods, "dense") if m in legend]
    handles = [legend[m] for m in labels]
    fig.tight_layout()
    # beside the panels, so that no legend covers a data point
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_summary(rows: Sequence[dict[str, Any]], out: str | Path) -> str:
    """summary.csv, summary.md and summary.png in `out` from the per-run rows; returns the table.

    Without matplotlib (the "plots" extra) the plot is left out and a line says how to get it.
    """
    out = Path(out)
    summary = summarize(rows)
    if not summary:
        raise ValueError(f"no results to summarise in {out}")
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    table = markdown_table(summary)
    if any(not math.isnan(s.get("agreement", math.nan)) for s in summary):
        table += "\n\n" + beyond_accuracy_table(summary)
    (out / "summary.md").write_text(table + "\n")
    try:
        plot_summary(summary, out / "summary.png")
    except ImportError as err:  # the table and CSV are complete without the plot; say so
        print(f"no summary.png: {err}")
    return table
