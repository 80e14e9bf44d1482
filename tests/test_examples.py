"""The example scripts run end to end at tiny size, in-process, on real Fashion-MNIST.

They are what a new user runs first, so a broken example is a broken library. Each runs with
--limit 512 --epochs 1 and a short adversarial search; the trained LeNet-300-100 is shared
through a cache folder so it is trained once for the two scripts that use it.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--limit", "512", "--epochs", "1", "--no-progress"]

pytestmark = pytest.mark.skipif(
    not FASHION.is_dir(), reason="dataset-fashion-mnist not installed (apt-get install it)"
)


@pytest.fixture(scope="module")
def examples() -> Iterator[dict[str, ModuleType]]:
    """The example modules, imported the way `python examples/x.py` sees them."""
    torch.set_num_threads(1)
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("prune_layer", "compress_model", "guarantee_vs_accuracy")
        }
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("model-cache"))


def test_prune_layer(examples: dict[str, ModuleType], cache: str) -> None:
    extra = shlex.split("--calibration 256 --held-out 256 --restarts 4 --steps 20 --eps 0.3")
    out = examples["prune_layer"].main([*TINY, "--cache", cache, *extra])
    assert out["mode"] == "select" and out["delta"] == 0
    assert 1 <= out["kept"] <= out["units"] == 300
    assert out["eps"] <= 0.3
    # A select certificate holds for every input in Q: nothing measured may exceed it.
    assert not out["violated"]
    assert max(out["data_in_q"], out["adversarial"]) <= out["eps"] * (1 + 1e-9) + 1e-12
    assert 0 <= out["accuracy"] <= 1


def test_compress_model(examples: dict[str, ModuleType], cache: str, tmp_path: Path) -> None:
    summary = examples["compress_model"].main(
        [*TINY, "--cache", cache, "--calibration", "64", "--out", str(tmp_path)]
    )
    stages = summary["stages"]
    assert list(stages) == ["dense", "compressed", "fine-tuned"]
    assert stages["compressed"]["params"] < stages["dense"]["params"]
    assert stages["compressed"]["macs"] < stages["dense"]["macs"]
    assert stages["fine-tuned"]["params"] == stages["compressed"]["params"]
    assert all(0 <= s["accuracy"] <= 1 for s in stages.values())
    assert summary["layers"] and all(
        r["units_after"] <= r["units_before"] for r in summary["layers"]
    )
    assert (tmp_path / "report.md").is_file() and (tmp_path / "summary.json").is_file()
    assert summary["reload_max_abs_diff"] == 0.0  # saved without pickle, loaded back exactly


def test_guarantee_vs_accuracy(examples: dict[str, ModuleType], cache: str, tmp_path: Path) -> None:
    extra = shlex.split("--targets 0.3 0.6 --calibration 64 --guarantee agreement=0.5")
    rows = examples["guarantee_vs_accuracy"].main(
        [*TINY, "--cache", cache, "--out", str(tmp_path), *extra]
    )
    assert len(rows) == 3 * 2  # methods x targets
    with (tmp_path / "guarantee_vs_accuracy.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    for row in rows:
        # a lower confidence bound never exceeds the value observed on the same held-out data
        assert 0 <= row["agreement_lower"] <= row["agreement_heldout"] <= 1
        assert 0 <= row["accuracy_lower"] <= row["accuracy_heldout"] <= 1
        assert 0 <= row["layer_exceed_upper"] <= 1
        assert 0 < row["params_removed"] < 1
        assert (row["method"] == "coreset") == (row["worst_eps"] == row["worst_eps"])  # NaN: none
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "guarantee_vs_accuracy.png").stat().st_size > 0
