"""Pieces of the comparison runner that do not need data: BN re-estimation and the summary."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from coreprune.harness.comparison import (
    FIELDS,
    _append,
    markdown_table,
    read_rows,
    recalibrated_copy,
    summarize,
)


def test_recalibration_re_estimates_running_stats_on_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 3) * 3 + 1
    loader = [(x[:32], None), (x[32:], None)]
    fresh = recalibrated_copy(model, loader, torch.device("cpu"))  # type: ignore[arg-type]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        h = model[0](x)
    # momentum=None: the cumulative average of the two batch means / unbiased variances
    torch.testing.assert_close(fresh[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    halves = [h[:32].var(0, unbiased=True), h[32:].var(0, unbiased=True)]
    torch.testing.assert_close(fresh[1].running_var, (halves[0] + halves[1]) / 2)
    assert not fresh.training


def test_summary_means_and_stds_over_seeds() -> None:
    rows = [
        {"model": "m", "metric": "params", "target": 0.5, "method": method, "seed": seed,
         "dense_accuracy": 0.9, "pruned_accuracy": acc, "recalibrated_accuracy": acc,
         "finetuned_accuracy": acc + 0.1, "params_removed": 0.5, "macs_removed": 0.4,
         "prune_seconds": 1.0}
        for method, accs in (("coreset", (0.5, 0.7)), ("random", (0.1, 0.1)))
        for seed, acc in enumerate(accs)
    ]  # fmt: skip
    for r in rows:
        r["recalibrated_accuracy"] = math.nan  # a column measured for no seed (e.g. at init)
    summary = summarize(rows)
    coreset = next(s for s in summary if s["method"] == "coreset")
    assert math.isnan(coreset["recalibrated_accuracy"])
    assert math.isclose(coreset["pruned_accuracy"], 0.6)
    assert math.isclose(coreset["pruned_accuracy_std"], math.sqrt(0.02))
    table = markdown_table(summary)
    assert "**70.00 ± 14.14**" in table and "60.0 / — →" in table and "| m | 50% params | 50.0% / 40.0% | 90.00 |" in table


def test_results_written_by_an_older_version_are_rewritten_under_todays_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.csv"
    old = list(FIELDS[:5])
    path.write_text(",".join(old) + "\nresnet20,0,coreset,params,0.5\n")
    _append(path, {"model": "resnet20", "seed": 1, "method": "random", "metric": "macs",
                   "target": 0.9, "agreement": 0.8})  # fmt: skip
    rows = read_rows(path)
    assert [r["method"] for r in rows] == ["coreset", "random"]
    assert rows[0]["agreement"] is None and rows[1]["agreement"] == 0.8
    assert all(None not in r for r in rows)
