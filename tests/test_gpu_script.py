"""benchmarks/gpu/run.py in its CPU smoke mode (toy widths, a few hundred images): every phase
runs and writes what the GPU run writes, so the one-call GPU script cannot rot unnoticed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu import run
from coreprune.serialization import load_model

SMOKE: dict[str, Any] = run.SMOKE


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("gpu_smoke")
    rows = run.main(["--smoke", "--out", str(out), "--train-limit", "128", "--test-limit", "100"])
    return out, rows


def test_smoke_run_writes_models_rows_and_table(smoke: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = smoke
    assert rows and all(r["status"] == "ok" for r in rows), [r["note"] for r in rows]
    for name in SMOKE["models"]:
        manifest = json.loads((out / f"dense_{name}.json").read_text())
        for key in ("device", "torch", "epochs", "train_seconds", "test_accuracy", "history"):
            assert key in manifest, key
        assert manifest["epochs"] == 1 and manifest["device"] and manifest["torch"]
        folder = out / "models" / name
        assert (folder / "weights.safetensors").exists()
        assert sum(p.numel() for p in load_model(folder).parameters()) > 0
        mine = [r for r in rows if r["model"] == name and r["method"] != "dense"]
        specs = run.row_specs(run.parse_args(["--smoke"]))
        if run.importlib_find("torch_pruning") is None:  # its rows are skipped with a note
            specs = [s for s in specs if not s.method.startswith("tp_")]
        assert len(mine) == len(specs) * len(SMOKE["budgets"])
        assert len({(r["params"], r["macs"], r["widths"]) for r in mine}) == 1  # matched widths
        for r in mine:
            tuned = r["acc_finetuned_all"].split()
            assert len(tuned) == len(SMOKE["finetune_seeds"])
            assert 0.0 <= float(r["acc_pruned"]) <= 1.0 and r["acc_bn"] != ""
            assert r["device"] == "cpu"
    summary = (out / "summary.md").read_text()
    assert "| coreset (default) + lstsq |" in summary and "| magnitude + none |" in summary
    assert "→" in summary and "skipped" not in summary.split("Cells:")[0]
    record = json.loads((out / "run.json").read_text())
    assert set(record["seconds"]) == {"tests", "training", "benchmark"}
    with (out / "results.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == run.FIELDS


def test_rerun_loads_the_models_and_skips_finished_rows(
    smoke: tuple[Path, list[dict[str, str]]],
) -> None:
    out, rows = smoke
    again = run.main(["--smoke", "--out", str(out), "--train-limit", "128", "--test-limit", "100"])
    assert len(again) == len(rows)
    assert "loading the trained model" in (out / "log.txt").read_text()


def test_time_budget_skips_rows_and_says_so(tmp_path: Path) -> None:
    rows = run.main(["--smoke", "--out", str(tmp_path), "--models", "resnet20", "--seconds", "0",
                     "--train-limit", "64", "--test-limit", "50"])  # fmt: skip
    pruned = [r for r in rows if r["method"] != "dense"]
    assert pruned and {r["status"] for r in pruned} == {"skipped"}
    assert "skipped" in (tmp_path / "summary.md").read_text()


def test_rows_are_one_entry_per_method_or_choice() -> None:
    args = run.parse_args(["--methods", "coreset", "magnitude", "obs", "tp_l2",
                           "--choices", "default", "certified", "refit"])  # fmt: skip
    specs = run.row_specs(args)
    assert [s.choice for s in specs if s.method == "coreset"][:3] == [
        "default",
        "certified",
        "refit",
    ]
    assert {s.compensate for s in specs if s.method == "obs"} == {"none", "lstsq"}
    ranks = [(s.method.startswith("tp_"), s.compensate) for s in specs]
    first_none = next(i for i, (tp, c) in enumerate(ranks) if c == "none" and not tp)
    assert all(c == "lstsq" for tp, c in ranks[:first_none] if not tp)  # rewired rows first


def test_row_order_runs_each_budget_for_every_rewired_method_first() -> None:
    args = run.parse_args(["--methods", "coreset", "magnitude", "tp_l2", "--budgets", "0.5", "0.9"])
    order = [(s.method, s.compensate, t) for s, t in run.row_order(args)]
    tp = 1 + hasattr(run.bench, "prune_tp_refit")  # TP as shipped, and + lstsq where it exists
    assert order[:4] == [("coreset", "lstsq", 0.5), ("coreset", "lstsq", 0.5),
                         ("magnitude", "lstsq", 0.5), ("tp_l2", "none", 0.5)]  # fmt: skip
    assert [t for _, _, t in order[: 2 * (3 + tp)]] == [0.5] * (3 + tp) + [0.9] * (3 + tp)
    assert all(c == "none" and m != "tp_l2" for m, c, _ in order[2 * (3 + tp) :])
    assert len(order) == len(run.row_specs(args)) * 2


@pytest.mark.parametrize(
    "argv",
    [["--epochs", "nomodel=3"], ["--epochs", "zero"], ["--calibration", "0"],
     ["--compensate", "glue"], ["--smoke", "--snip-batch", "1000"]],
)  # fmt: skip
def test_bad_arguments_fail_before_work(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(ValueError):
        run.main([*argv, "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
