"""examples/gradient_flow.py runs end to end at tiny size on real Fashion-MNIST."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gradient_flow.py"
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(
    not FASHION.is_dir(), reason="dataset-fashion-mnist not installed (apt-get install it)"
)


def test_gradient_flow_example_prints_the_table_and_the_three_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("gradient_flow_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results.json"
    argv = [
        "--limit", "200", "--rounds", "2", "--epochs-after", "1", "--samples", "64",
        "--samples-per-class", "4", "--probe", "64", "--target", "0.5", "--json", str(out),
        "--methods", "magnitude_l2", "loss_preservation", "gradnorm_preservation",
        "gradnorm_increase",
    ]  # fmt: skip
    assert module.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| method | dL@1 |" in printed
    results = json.loads(out.read_text())
    assert set(results["table"]) == set(module.METHODS) - {"random"}
    for row in results["table"].values():
        assert row["removed"] >= 0.5
        assert 0.0 <= row["test acc"] <= 1.0 and row["|g|@1"] > 0
    assert [v["claim"][:5] for v in results["verdicts"]] == ["(i) m", "(ii) ", "(iii)"]
    assert all(isinstance(v["reproduced"], bool) for v in results["verdicts"])
    for verdict in results["verdicts"]:
        assert ("REPRODUCED" if verdict["reproduced"] else "NOT reproduced") in printed
