"""The command line: end to end at tiny size, and every bad input a one-line usage error."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import coreprune
from coreprune.harness import cli
from coreprune.harness.cli import main
from coreprune.harness.comparison import CompareConfig, read_rows
from coreprune.harness.data import DEFAULT_FASHION_MNIST_ROOT
from coreprune.harness.evaluation.metrics import count_macs
from coreprune.harness.models import build_model
from coreprune.harness.training import model_kwargs
from coreprune.serialization import load_model, save_model

from . import cli_factory_model

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_ROOT).exists(), reason="Fashion-MNIST is not installed"
)

TINY = ["--limit", "96", "--batch-size", "32", "--threads", "1"]
TINY_COMPARE = ["--seeds", "0", "--targets", "0.5", "--metrics", "params", "--train-limit", "96",
                "--test-limit", "32", "--batch-size", "32", "--calibration", "32",
                "--synflow-rounds", "3", "--threads", "1"]  # fmt: skip


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting exit code 2; return stderr (one line, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------
# End to end


def test_train_then_compress_with_fine_tuning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "train"
    train = ["train", "--model", "lenet300100", "--epochs", "1", "--out", str(run), *TINY]
    assert main(train) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    config = (run / "config.json").read_text()
    # an earlier run is neither overwritten nor resumed with other settings
    assert "holds an earlier run" in _usage_error(train, capsys)
    err = _usage_error([*train, "--resume", "--lr", "0.1"], capsys)
    assert "lr: 0.05 in the folder, 0.1 asked" in err
    assert (run / "config.json").read_text() == config
    assert main([*train, "--resume"]) == 0  # the same settings: continues (here: already done)
    assert json.loads((run / "metrics.json").read_text())["test"] == metrics["test"]
    assert 0 <= metrics["test"]["accuracy"] <= 1 and (run / "model").is_dir()
    assert json.loads((run / "config.json").read_text())["model"] == "lenet300100"
    one_image = torch.zeros(1, 1, 28, 28)
    for method in ("coreset", "synflow", "snip"):
        out = tmp_path / f"compress-{method}"
        code = main(["compress", "--model-dir", str(run / "model"), "--target", "0.5",
                     "--method", method, "--calibration", "64", "--finetune-epochs", "1",
                     "--out", str(out), *TINY])  # fmt: skip
        assert code == 0
        result = json.loads((out / "metrics.json").read_text())
        assert result["params_after"] <= 0.5 * result["params_before"]
        assert "finetuned_accuracy" in result and (out / "report.md").exists()
        assert "recalibrated_accuracy" not in result  # LeNet-300-100 has no batch norm
        # MACs of one image, not of a batch
        assert result["macs_per_image_before"] == count_macs(load_model(run / "model"), one_image)
        assert result["macs_per_image_after"] == count_macs(load_model(out / "model"), one_image)


def test_compare_then_report_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare"
    args = ["compare", "--models", "lenet300100", "--seeds", "0", "1", "--targets", "0.5",
            "--metrics", "params", "macs", "--train-limit", "96", "--test-limit", "64",
            "--epochs", "1", "--synflow-rounds", "3", "--calibration", "32", "--batch-size", "32",
            "--out", str(out), "--threads", "1", "--beyond-accuracy"]  # fmt: skip
    assert main(args) == 0
    assert "compare" in capsys.readouterr().err  # the progress bar of the run loop
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 * 2 * 5  # seeds x metrics x methods
    by_budget: dict[tuple[object, ...], set[object]] = {}
    for r in rows:  # every method reaches the same architecture at each budget
        by_budget.setdefault((r["seed"], r["metric"]), set()).add(r["params_after"])
    assert all(len(v) == 1 for v in by_budget.values())
    assert (out / "summary.md").exists() and (out / "summary.png").exists()
    assert "agreement" in (out / "summary.md").read_text()
    assert main(args) == 0  # resumes: nothing new to run
    assert "20 of 20 runs already done" in capsys.readouterr().out
    assert len(read_rows(out / "results.csv")) == len(rows)
    assert main(["report", str(out)]) == 0
    assert "| lenet300100 | 50% params |" in capsys.readouterr().out


def test_compare_refuses_a_folder_of_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["compare", "--models", "lenet300100", "--methods", "magnitude", "--out", str(out),
            *TINY_COMPARE]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    config = (out / "config.json").read_text()
    rows = read_rows(out / "results.csv")
    err = _usage_error([*args, "--epochs", "2"], capsys)
    assert "epochs: 1 in the folder, 2 asked" in err
    assert "--out" in err and "--overwrite" in err
    assert (out / "config.json").read_text() == config  # never rewritten over other results
    assert read_rows(out / "results.csv") == rows
    err = _usage_error([*args, "--epochs", "2", "--finetune-epochs", "0", "--test-limit", "16"],
                       capsys)  # fmt: skip
    assert "finetune_epochs: 1 in the folder, 0 asked" in err and "test_limit" in err
    # --overwrite replaces the old results with the new settings' ones
    assert main([*args, "--epochs", "2", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert len(read_rows(out / "results.csv")) == len(rows)


def test_compare_at_init_and_after_training_never_share_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "init"
    args = ["compare", "--models", "lenet300100", "--epochs", "1",
            "--methods", "coreset", "snip", "synflow", "--out", str(out), *TINY_COMPARE]  # fmt: skip
    assert main([*args, "--at-init"]) == 0
    rows = read_rows(out / "results.csv")
    assert {r["when"] for r in rows} == {"init"} and len(rows) == 3
    assert "Pruned at initialisation" in (out / "summary.md").read_text()
    assert "at_init: true in the folder, false asked" in _usage_error(args, capsys)


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


# --------------------------------------------------------------------------------------------
# Models sized from the dataset's description


def _cifar_batch(n: int, offset: int) -> dict[bytes, object]:
    data = ((np.arange(n * 3072) + offset) % 256).astype(np.uint8).reshape(n, 3072)
    return {b"data": data, b"labels": [(i + offset) % 10 for i in range(n)], b"batch_label": b"b"}


def _write_tiny_cifar10(root: Path, per_batch: int = 16) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for offset, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (root / name).write_bytes(pickle.dumps(_cifar_batch(per_batch, offset), protocol=2))


@pytest.mark.parametrize(
    ("dataset", "model", "expected"),
    [
        ("cifar10", "lenet300100", {"in_features": 3 * 32 * 32, "num_classes": 10}),
        ("cifar100", "lenet300100", {"in_features": 3 * 32 * 32, "num_classes": 100}),
        ("fashion_mnist", "lenet300100", {"in_features": 28 * 28, "num_classes": 10}),
        ("cifar10", "lenet5", {"in_channels": 3, "num_classes": 10, "image_size": 32}),
        ("mnist", "vgg16", {"in_channels": 1, "num_classes": 10}),
        ("cifar100", "resnet18", {"in_channels": 3, "num_classes": 100, "small_input": True}),
        ("fashion_mnist", "vgg_small", {"in_channels": 1, "num_classes": 10, "image_size": 28}),
    ],
)
def test_model_arguments_follow_the_dataset_spec(
    dataset: str, model: str, expected: dict[str, object]
) -> None:
    assert model_kwargs(model, dataset) == expected


def test_padding_enlarges_a_flattening_model_and_shrinking_is_refused() -> None:
    assert model_kwargs("lenet300100", "fashion_mnist", 32)["in_features"] == 32 * 32
    with pytest.raises(ValueError, match="smaller than"):
        model_kwargs("lenet300100", "cifar10", 28)


@pytest.mark.parametrize("command", ["compare", "train"])
def test_lenet300100_on_cifar_shaped_data_runs(tmp_path: Path, command: str) -> None:
    root = tmp_path / "cifar"
    _write_tiny_cifar10(root)
    out = tmp_path / "out"
    data = ["--dataset", "cifar10", "--data-root", str(root), "--batch-size", "16"]
    if command == "compare":
        argv = ["compare", "--models", "lenet300100", "--methods", "magnitude", "--epochs", "1",
                "--seeds", "0", "--targets", "0.5", "--train-limit", "0", "--test-limit", "0",
                "--calibration", "0", "--threads", "1", "--out", str(out), *data]  # fmt: skip
        model_dir = out / "dense" / "lenet300100-seed0"
    else:
        argv = ["train", "--model", "lenet300100", "--epochs", "1", "--threads", "1",
                "--out", str(out), *data]  # fmt: skip
        model_dir = out / "model"
    assert main(argv) == 0
    spec = json.loads((model_dir / "architecture.json").read_text())
    assert spec["arch_kwargs"] == {"in_features": 3072, "num_classes": 10}


# --------------------------------------------------------------------------------------------
# Anyone's model: --model-factory and --weights


@pytest.fixture
def factory_on_path(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(Path(cli_factory_model.__file__).parent))
    return "cli_factory_model:small_convnet"


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_compress_a_factory_model_with_weights(
    tmp_path: Path, factory_on_path: str, suffix: str
) -> None:
    torch.manual_seed(3)
    source = cli_factory_model.small_convnet()
    weights = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, weights)
    else:
        save_file(state, str(weights))
    out = tmp_path / "out"
    argv = ["compress", "--model-factory", factory_on_path, "--weights", str(weights),
            "--target", "0.5", "--method", "magnitude", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "recalibrated_accuracy" in metrics  # the model has batch norm: re-estimated
    assert metrics["params_after"] < metrics["params_before"]
    pruned = load_model(out / "model", factory=cli_factory_model.small_convnet)
    # magnitude pruning from the given weights: the first conv keeps 4 of the 8 filters with
    # the largest L1 norm, copied unchanged
    dense_conv, pruned_conv = source.get_submodule("0"), pruned.get_submodule("0")
    assert isinstance(dense_conv, nn.Conv2d) and isinstance(pruned_conv, nn.Conv2d)
    norms = dense_conv.weight.abs().sum(dim=(1, 2, 3))
    kept = torch.sort(torch.topk(norms, pruned_conv.out_channels).indices).values
    torch.testing.assert_close(pruned_conv.weight, dense_conv.weight[kept])


def test_compress_refuses_weights_of_another_shape(
    tmp_path: Path, factory_on_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = cli_factory_model.small_convnet().state_dict()
    state["9.weight"] = torch.zeros(10, 32)
    del state["1.running_mean"]
    weights = tmp_path / "bad.pt"
    torch.save(state, weights)
    out = tmp_path / "out"
    err = _usage_error(["compress", "--model-factory", factory_on_path, "--weights", str(weights),
                        "--target", "0.5", "--out", str(out), *TINY], capsys)  # fmt: skip
    assert "9.weight (10, 32) vs (10, 16)" in err and "missing 1.running_mean" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Bad input: one-line usage error, exit code 2, no run folder


@pytest.fixture
def saved_lenet(tmp_path: Path) -> Path:
    folder = tmp_path / "lenet"
    save_model(build_model("lenet300100"), folder, arch="lenet300100",
               arch_kwargs={"in_features": 784, "num_classes": 10})  # fmt: skip
    return folder


BAD_INPUTS: list[tuple[list[str], str]] = [
    (["train", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["train", "--epochs", "two"], "'two' is not an integer"),
    (["train", "--lr", "-0.1"], "--lr: must be > 0"),
    (["train", "--lr", "nan"], "must be finite"),
    (["train", "--limit", "-5"], "--limit: must be >= 1"),
    (["train", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", "--seed", "-1"], "--seed: must be >= 0"),
    (["train", "--threads", "0"], "--threads: must be >= 1"),
    (["train", "--model", "alexnet"], "invalid choice: 'alexnet'"),
    (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["train", "--image-size", "20"], "smaller than fashion_mnist's 28 px"),
    (["train", "--resume"], "--resume: no checkpoint"),
    (["train", "--resume", "--overwrite"], "pick one"),
    (["train", "--dataset", "cifar10"], "needs root="),
    (["train", "--dataset", "cifar10", "--data-root", "/no/such/folder"], "does not exist"),
    (["train", "--device", "tpu"], "--device tpu is not available here; available: auto, cpu"),
    (["compress", "--target", "0.5"], "one of the arguments --model-dir --model-factory"),
    (["compress", "--model-dir", "{lenet}"], "one of the arguments --target --eps"),
    (["compress", "--model-dir", "{lenet}", "--target", "1.5"], "fraction in (0, 1), got 1.5"),
    (["compress", "--model-dir", "{lenet}", "--target", "0.5", "--eps", "0.1"], "not allowed"),
    (["compress", "--model-dir", "{lenet}", "--target", "0.5", "--calibration", "-1"],
     "--calibration: must be >= 0"),
    (["compress", "--model-dir", "{lenet}", "--target", "0.5", "--finetune-epochs", "-1"],
     "--finetune-epochs: must be >= 0"),
    (["compress", "--model-dir", "{lenet}", "--target", "0.5", "--rank", "0"], "--rank"),
    (["compress", "--model-dir", "{lenet}", "--eps", "0.1", "--method", "magnitude"],
     "eps needs method='coreset'"),
    (["compress", "--model-dir", "{lenet}", "--target", "0.5", "--dataset", "cifar10",
      "--data-root", "{cifar}"], "does not accept cifar10 images of shape (1, 3, 32, 32)"),
    (["compress", "--model-dir", "/no/such/model", "--target", "0.5"], "no architecture.json"),
    (["compress", "--model-dir", "{lenet}", "--weights", "w.pt", "--target", "0.5"],
     "--weights goes with --model-factory"),
    (["compress", "--model-factory", "no_such_module_xyz:f", "--target", "0.5"], "cannot import"),
    (["compress", "--model-factory", "cli_factory_model", "--target", "0.5"], "MODULE:FUNCTION"),
    (["compress", "--model-factory", "cli_factory_model:nothing", "--target", "0.5"],
     "has no function 'nothing'"),
    (["compress", "--model-factory", "cli_factory_model:not_a_model", "--target", "0.5"],
     "returned a str, not an nn.Module"),
    (["compress", "--model-factory", "cli_factory_model:small_convnet", "--weights",
      "/no/such.pt", "--target", "0.5"], "no such file"),
    (["compare", "--targets", "0"], "--targets: must be a fraction in (0, 1), got 0"),
    (["compare", "--seeds", "-1"], "--seeds: must be >= 0"),
    (["compare", "--train-limit", "-1"], "--train-limit: must be >= 0"),
    (["compare", "--finetune-epochs", "-2"], "--finetune-epochs: must be >= 0"),
    (["compare", "--models", "lenet5", "lenet5"], "models lists lenet5 more than once"),
    (["compare", "--image-size", "20"], "smaller than fashion_mnist's 28 px"),
    (["compare", "--methods", "magic"], "invalid choice: 'magic'"),
    (["compare", "--methods", "dpf", "--finetune-epochs", "0"], "needs finetune_epochs >= 1"),
    (["compare", "--device", "cuda:7"], "--device cuda:7 is not available here"),
    (["report", "{empty}"], "no results.csv with rows"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "fragment"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_a_usage_error(
    argv: list[str], fragment: str, tmp_path: Path, saved_lenet: Path, factory_on_path: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    _write_tiny_cifar10(tmp_path / "cifar")
    places = {"{lenet}": str(saved_lenet), "{empty}": str(tmp_path / "empty"),
              "{cifar}": str(tmp_path / "cifar")}  # fmt: skip
    argv = [places.get(a, a) for a in argv]
    out = tmp_path / "run"
    if argv[0] != "report":
        argv = [*argv, "--out", str(out)]
    err = _usage_error(argv, capsys)
    assert fragment in err, err
    assert err.startswith(f"coreprune {argv[0]}: error:")
    assert not out.exists()  # no run folder for invalid inputs


def test_cuda_without_a_gpu_names_the_available_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = _usage_error(["train", "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert "--device cuda is not available here; available: auto, cpu" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"coreprune {coreprune.__version__}"


def test_help_describes_every_flag_and_shows_its_default() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"oneshot", "train", "compress", "compare", "report"}
    for name, command in commands.items():
        text = command.format_help()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default is not None:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
    assert CompareConfig(out="x").epochs == commands["compare"].get_default("epochs")


def test_oneshot_refuses_unknown_methods_before_any_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["oneshot", "--methods", "coreset+refit"])
    assert info.value.code == 2
    assert "unknown rewiring 'refit'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["oneshot", "--methods", "magnitud"])
    assert "unknown method 'magnitud'" in capsys.readouterr().err


def test_oneshot_prints_a_table_with_its_legend(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([
        "oneshot", "--models", "lenet300100", "--budgets", "0.5", "--methods",
        "coreset+lstsq", "magnitude", "--calibration", "64", "--test-images", "200",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "| coreset + lstsq |" in out and "| magnitude |" in out
    assert "Every row of a column has the same widths" in out
