"""Pieces of the comparison runner that do not need data: BN re-estimation and the summary."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from coreprune.harness.comparison import (
    FIELDS,
    CompareConfig,
    SettingsMismatch,
    markdown_table,
    plot_summary,
    prepare_run_folder,
    read_rows,
    recalibrated_copy,
    settings_differences,
    summarize,
    write_summary,
)
from coreprune.harness.comparison.results import append_row


def test_recalibration_re_estimates_running_stats_on_a_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 3) * 3 + 1
    loader = [(x[:32], None), (x[32:], None)]
    fresh = recalibrated_copy(model, loader, torch.device("cpu"))
    norm = fresh.get_submodule("1")
    assert isinstance(norm, nn.BatchNorm1d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        h = model[0](x)
    # momentum=None: the cumulative average of the two batch means / unbiased variances
    torch.testing.assert_close(norm.running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    halves = [h[:32].var(0, unbiased=True), h[32:].var(0, unbiased=True)]
    torch.testing.assert_close(norm.running_var, (halves[0] + halves[1]) / 2)
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
    assert (
        "**70.00 ± 14.14**" in table
        and "60.0 / — →" in table
        and "| m | 50% params | 50.0% / 40.0% | 90.00 |" in table
    )


def test_results_written_by_an_older_version_are_rewritten_under_todays_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.csv"
    old = list(FIELDS[:5])
    path.write_text(",".join(old) + "\nresnet20,0,coreset,params,0.5\n")
    append_row(path, {"model": "resnet20", "seed": 1, "method": "random", "metric": "macs",
                   "target": 0.9, "agreement": 0.8})  # fmt: skip
    rows = read_rows(path)
    assert [r["method"] for r in rows] == ["coreset", "random"]
    assert rows[0]["agreement"] is None and rows[1]["agreement"] == 0.8
    assert all(None not in r for r in rows)


def test_the_default_folder_is_named_after_the_settings() -> None:
    base = CompareConfig()
    assert base.out == CompareConfig().out  # the same command resumes the same folder
    assert CompareConfig(epochs=2).out != base.out
    assert CompareConfig(seeds=(0, 1)).out != base.out
    # where the data is and which device runs it do not shape the results
    assert CompareConfig(data_root="/elsewhere", device="cpu").out == base.out
    assert str(base.out).startswith("runs/compare-")


def test_settings_differences_name_each_setting_and_treat_unrecorded_ones_as_default() -> None:
    asked = CompareConfig(epochs=2, train_limit=None, out="x")
    recorded = CompareConfig(out="y").settings()
    assert settings_differences(asked, recorded) == [
        "train_limit: 4000 in the folder, null asked",
        "epochs: 3 in the folder, 2 asked",
    ]
    older = {k: v for k, v in recorded.items() if k != "at_init"}  # written before at_init
    assert settings_differences(CompareConfig(out="x"), older) == []
    assert settings_differences(CompareConfig(at_init=True, out="x"), older) == [
        "at_init: false in the folder, true asked"
    ]


def test_a_folder_of_other_settings_is_refused_and_overwrite_deletes_only_run_files(
    tmp_path: Path,
) -> None:
    config = CompareConfig(out=str(tmp_path))
    prepare_run_folder(config)  # an empty folder is fine
    (tmp_path / "config.json").write_text(json.dumps(CompareConfig(epochs=9, out="z").settings()))
    (tmp_path / "results.csv").write_text("model\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SettingsMismatch, match="epochs: 9 in the folder, 3 asked"):
        prepare_run_folder(config)
    (tmp_path / "config.json").unlink()
    with pytest.raises(SettingsMismatch, match=r"no config\.json"):
        prepare_run_folder(config)
    prepare_run_folder(config, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": (1.5,)}, "targets"),
        ({"methods": ("magic",)}, "methods"),
        ({"models": ("alexnet",)}, "models"),
        ({"seeds": (0, 0)}, "more than once"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"finetune_epochs": -1}, "finetune_epochs must be >= 0"),
        ({"train_limit": 0}, "train_limit must be >= 1"),
        ({"calibration": -1}, "calibration must be >= 0"),
        ({"lr": 0.0}, r"lr must lie in \(0, inf\)"),
        ({"image_size": 20}, "smaller than"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"methods": ("dpf",), "finetune_epochs": 0}, "dpf"),
    ],
)
def test_compare_config_refuses_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CompareConfig(**kwargs)  # type: ignore[arg-type]


def test_without_matplotlib_the_plot_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"model": "m", "metric": "params", "target": 0.5, "method": "random", "seed": 0,
             "dense_accuracy": 0.9, "pruned_accuracy": 0.5, "recalibrated_accuracy": 0.6,
             "finetuned_accuracy": 0.7, "params_removed": 0.5, "macs_removed": 0.4,
             "prune_seconds": 1.0}]  # fmt: skip
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'coreprune\[plots\]'"):
        plot_summary(summarize(rows), tmp_path / "x.png")
    write_summary(rows, tmp_path)
    assert (tmp_path / "summary.md").exists() and not (tmp_path / "summary.png").exists()
    assert "coreprune[plots]" in capsys.readouterr().out
