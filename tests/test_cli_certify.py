"""`coreprune compress` certifies on held-out data (--certify, --guarantee) with the Python API's
bounds, prints a `load_with` hint that is valid Python, and refuses to prune a factory model
that no weights were loaded into unless told the factory trains its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from coreprune import certify
from coreprune.harness.cli import main
from coreprune.harness.data import make_loaders
from coreprune.harness.models import build_model
from coreprune.serialization import load_model, save_model
from tests import cli_factory_model

TINY = ["--limit", "96", "--batch-size", "32", "--threads", "1"]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(Path(cli_factory_model.__file__).parent))
    return "cli_factory_model:small_convnet"


@pytest.fixture
def saved_lenet(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "lenet"
    save_model(build_model("lenet300100"), folder, arch="lenet300100",
               arch_kwargs={"in_features": 784, "num_classes": 10})  # fmt: skip
    return folder


def test_a_factory_without_weights_is_refused(
    tmp_path: Path, factory: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["compress", "--model-factory", factory, "--target", "0.5", "--out", str(out), *TINY]
    err = _usage_error(argv, capsys)
    assert "without --weights" in err and "--factory-trained" in err
    assert not out.exists()


def test_factory_trained_lets_it_run_and_load_with_is_valid_python(
    tmp_path: Path, factory: str
) -> None:
    out = tmp_path / "out"
    argv = ["compress", "--model-factory", factory, "--factory-trained", "--target", "0.5",
            "--method", "magnitude", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    code = json.loads((out / "metrics.json").read_text())["load_with"]
    namespace: dict[str, object] = {}
    exec(compile(code, "load_with", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, nn.Module)
    expected = load_model(out / "model", factory=cli_factory_model.small_convnet)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--factory-trained"], "--factory-trained goes with --model-factory"),
        (["--budgets", "0.2", "0.4"], "--budgets goes with --guarantee"),
        (["--certify", "--confidence", "1.5"], "--confidence: must be a fraction"),
    ],
)
def test_certify_options_are_checked(
    argv: list[str], fragment: str, saved_lenet: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "out"
    base = ["compress", "--model-dir", str(saved_lenet), "--target", "0.5", "--out", str(out)]
    assert fragment in _usage_error([*base, *argv, *TINY], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--guarantee", "agreement"], "expected METRIC=LEVEL"),
        (["--guarantee", "speed=0.9"], "guarantee metric must be one of"),
        (["--guarantee", "agreement=0.9", "--finetune-epochs", "1"], "void the guarantee"),
        (["--guarantee", "agreement=0.9", "--certify"], "drop --certify"),
        (["--guarantee", "agreement=0.9", "--limit", "3"], "needs at least"),
    ],
)
def test_guarantee_options_are_checked(
    argv: list[str], fragment: str, saved_lenet: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "out"
    base = ["compress", "--model-dir", str(saved_lenet), "--out", str(out)]
    assert fragment in _usage_error([*base, *TINY, *argv], capsys)
    assert not out.exists()


def test_certify_gives_the_python_api_bounds(saved_lenet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["compress", "--model-dir", str(saved_lenet), "--target", "0.5", "--method",
            "magnitude", "--certify", "--confidence", "0.9", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    got = metrics["certificate"]
    loaders = make_loaders("fashion_mnist", batch_size=32, limit=96)
    expected = certify(load_model(saved_lenet), load_model(out / "model"), loaders.test, 0.9)
    assert got["n"] == expected.n == len(loaders.test.dataset)  # type: ignore[arg-type]
    for key in ("agreement_lower", "accuracy_lower", "accuracy_drop_upper", "agreement"):
        assert got[key] == pytest.approx(getattr(expected, key), abs=1e-12), key
    assert "held-out certificate" in (out / "report.md").read_text()


def test_guarantee_saves_the_certified_model(saved_lenet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["compress", "--model-dir", str(saved_lenet), "--guarantee", "accuracy_drop=0.3",
            "--budgets", "0.2", "0.4", "--method", "magnitude", "--out", str(out),
            *TINY]  # fmt: skip
    assert main(argv) == 0
    certified = json.loads((out / "metrics.json").read_text())["certified_compression"]
    assert certified["guarantee"] == {"metric": "accuracy_drop", "level": 0.3}
    assert [t["target"] for t in certified["tests"]] == [0.2, 0.4][: len(certified["tests"])]
    assert "certified compression" in (out / "report.md").read_text()


def test_weights_given_still_work(tmp_path: Path, factory: str) -> None:
    weights = tmp_path / "w.safetensors"
    save_file(dict(cli_factory_model.small_convnet().state_dict()), str(weights))
    out = tmp_path / "out"
    argv = ["compress", "--model-factory", factory, "--weights", str(weights), "--target",
            "0.5", "--method", "magnitude", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
