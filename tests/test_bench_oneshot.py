"""Smoke run of benchmarks/bench_oneshot.py on the shipped LeNet-300-100 and a slice of the data:
every row of a budget must come out at the same architecture, the rows must land in the CSV and
the summary, and a rerun must skip the finished rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks import bench_oneshot

HAS_TP = importlib.util.find_spec("torch_pruning") is not None


def _argv(out: Path) -> list[str]:
    methods = ["magnitude", "random"] + (["tp_l2"] if HAS_TP else [])
    return [
        "--models", "lenet300100", "--budgets", "0.5", "--methods", *methods,
        "--random-seeds", "0", "1", "--calibration", "64", "--snip-batch", "32",
        "--finetune-images", "128", "--bn-batches", "1", "--test-limit", "200",
        "--threads", "1", "--out", str(out),
    ]  # fmt: skip


def test_smoke_run_matches_widths_and_resumes(tmp_path: Path) -> None:
    rows = bench_oneshot.main(_argv(tmp_path))
    assert [r["status"] for r in rows] == ["ok"] * len(rows)
    budgets = {r["budget"] for r in rows if r["method"] != "dense"}
    assert budgets == {"hidden 80%", "50%"}
    per_budget = 2 + 2 * 2 + (2 if HAS_TP else 0)  # magnitude x2, random 2 seeds x2, TP x2
    for budget in budgets:
        mine = [r for r in rows if r["budget"] == budget]
        assert len(mine) == per_budget
        assert len({(r["params"], r["macs"], r["widths"]) for r in mine}) == 1
        for r in mine:
            assert 0.0 <= float(r["acc_pruned"]) <= 1.0
            assert 0.0 <= float(r["acc_finetuned"]) <= 1.0
            assert r["acc_bn"] == ""  # LeNet has no batch norm
    hidden = [r for r in rows if r["budget"] == "hidden 80%"]
    assert hidden[0]["widths"] == "layers.1:60; layers.3:20"
    half = next(r for r in rows if r["budget"] == "50%")
    assert abs(float(half["params_removed"]) - 0.5) < 0.01
    summary = (tmp_path / "summary.md").read_text()
    assert "| magnitude + lstsq |" in summary and "±" in summary  # random: mean±std of 2 seeds
    assert "rows differ" not in summary
    again = bench_oneshot.main(_argv(tmp_path))
    assert len(again) == len(rows)  # every finished row skipped


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--finetune-images", "nomodel=3"), ("--finetune-images", "many"), ("--calibration", "0")],
)
def test_bad_arguments_fail_before_work(tmp_path: Path, flag: str, value: str) -> None:
    with pytest.raises(ValueError, match=flag.lstrip("-").split("-")[0]):
        bench_oneshot.main(["--out", str(tmp_path / "never"), flag, value])
    assert not (tmp_path / "never").exists()


def test_widths_round_trip_with_group_names() -> None:
    widths = {"conv1 + layer1.0.conv2": 12, "layer1.0.conv1": 9}
    text = bench_oneshot._width_text(widths)
    assert bench_oneshot._parse_widths(text) == widths
    assert bench_oneshot._parse_widths("layers.1:60 layers.3:20") == {
        "layers.1": 60,
        "layers.3": 20,
    }
