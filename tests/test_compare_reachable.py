"""`coreprune compare` checks that every target is reachable before any training, and its own
defaults are reachable.

The comparison prunes single pairs only (`groups=False`), so ResNet-20 keeps its residual
stream whole and at most 87.3% of its params can go; a target above that used to fail in
`compress` after the dense model was trained and the lower targets were run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coreprune.compress import compress
from coreprune.harness.cli import main
from coreprune.harness.comparison import CompareConfig, check_run, reachable_maximum
from coreprune.harness.training import build_for_dataset


def test_resnet20_reach_matches_what_compress_can_do() -> None:
    model, _ = build_for_dataset("resnet20", "fashion_mnist")
    example = torch.zeros(1, 1, 28, 28)
    best = reachable_maximum(model, "params", example)
    assert 0.87 < best < 0.875
    with pytest.raises(ValueError, match="cannot be reached"):
        compress(model, target=best + 0.001, groups=False, method="random", progress=False)


def test_the_defaults_are_reachable(tmp_path: Path) -> None:
    config = CompareConfig(out=str(tmp_path / "run"))
    check_run(config)  # raises when a default target is out of reach
    assert (tmp_path / "run").is_dir()


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_an_unreachable_target_is_refused_before_any_work(tmp_path: Path, metric: str) -> None:
    out = tmp_path / "run"
    config = CompareConfig(targets=(0.5, 0.9), metrics=(metric,), out=str(out))
    with pytest.raises(ValueError, match=r"targets 0\.9 cannot be reached on resnet20") as err:
        check_run(config)
    message = str(err.value)
    assert "single pairs" in message and "pass targets <= 0.87" in message
    assert "\n" not in message
    assert not out.exists()  # nothing written, nothing trained


def test_the_cli_gives_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--targets", "0.5", "0.9", "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "0.9 cannot be reached" in error and "at most 0.873" in error
    assert not out.exists()
