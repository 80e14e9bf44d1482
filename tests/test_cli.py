"""The command line and the comparison example run end to end at tiny size on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coreprune.harness.cli import main
from coreprune.harness.comparison import CompareConfig, read_rows
from coreprune.harness.data import DEFAULT_FASHION_MNIST_ROOT

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_ROOT).exists(), reason="Fashion-MNIST is not installed"
)

TINY = ["--limit", "96", "--batch-size", "32", "--threads", "1"]


def test_train_then_compress_with_fine_tuning(tmp_path: Path) -> None:
    run = tmp_path / "train"
    assert main(["train", "--model", "lenet300100", "--epochs", "1", "--out", str(run), *TINY]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test"]["accuracy"] <= 1 and (run / "model").is_dir()
    assert json.loads((run / "config.json").read_text())["model"] == "lenet300100"
    for method in ("coreset", "synflow", "snip"):
        out = tmp_path / f"compress-{method}"
        code = main(["compress", "--model-dir", str(run / "model"), "--target", "0.5",
                     "--method", method, "--calibration", "64", "--finetune-epochs", "1",
                     "--out", str(out), *TINY])  # fmt: skip
        assert code == 0
        result = json.loads((out / "metrics.json").read_text())
        assert result["params_after"] <= 0.5 * result["params_before"]
        assert "finetuned_accuracy" in result and (out / "report.md").exists()
        assert (out / "model" / "architecture.json").exists()


def test_compare_then_report_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare"
    args = ["compare", "--models", "lenet300100", "--seeds", "0", "1", "--targets", "0.5",
            "--metrics", "params", "macs", "--train-limit", "96", "--test-limit", "64",
            "--epochs", "1", "--synflow-rounds", "3", "--calibration", "32", "--batch-size", "32",
            "--out", str(out), "--threads", "1", "--beyond-accuracy"]  # fmt: skip
    assert main(args) == 0
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 * 2 * 5  # seeds x metrics x methods
    by_budget: dict[tuple[object, ...], set[object]] = {}
    for r in rows:  # every method reaches the same architecture at each budget
        by_budget.setdefault((r["seed"], r["metric"]), set()).add(r["params_after"])
    assert all(len(v) == 1 for v in by_budget.values())
    assert (out / "summary.md").exists() and (out / "summary.png").exists()
    assert "agreement" in (out / "summary.md").read_text()
    assert main(args) == 0  # resumes: nothing new to run
    assert len(read_rows(out / "results.csv")) == len(rows)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "| lenet300100 | 50% params |" in capsys.readouterr().out


def test_compare_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="targets"):
        CompareConfig(targets=(1.5,))
    with pytest.raises(ValueError, match="methods"):
        CompareConfig(methods=("magic",))
    torch.manual_seed(0)


def test_compare_accepts_the_neighbouring_methods(tmp_path: Path) -> None:
    out = tmp_path / "more"
    methods = ["grasp", "magnitude_l2", "loss_preservation", "gradnorm_increase",
               "gradnorm_preservation", "bn_scale", "dpf"]  # fmt: skip
    args = ["compare", "--models", "resnet20", "--seeds", "0", "--targets", "0.5",
            "--metrics", "params", "--train-limit", "256", "--test-limit", "32", "--epochs", "1",
            "--batch-size", "64", "--out", str(out), "--threads", "1", "--methods", *methods]  # fmt: skip
    assert main(args) == 0
    rows = read_rows(out / "results.csv")
    assert sorted(r["method"] for r in rows) == sorted(methods)
    assert len({r["params_after"] for r in rows}) == 1  # one architecture for every method


def test_compare_prunes_at_initialisation_and_keeps_settings_apart(tmp_path: Path) -> None:
    out = tmp_path / "init"
    args = ["compare", "--models", "lenet300100", "--seeds", "0", "--targets", "0.5",
            "--metrics", "params", "--train-limit", "96", "--test-limit", "32", "--epochs", "1",
            "--batch-size", "32", "--synflow-rounds", "3", "--calibration", "32",
            "--methods", "coreset", "snip", "synflow", "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main([*args, "--at-init"]) == 0
    rows = read_rows(out / "results.csv")
    assert {r["when"] for r in rows} == {"init"} and len(rows) == 3
    assert "Pruned at initialisation" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="another --out"):
        main(args)  # trained-model results may not be mixed into an at-init folder
