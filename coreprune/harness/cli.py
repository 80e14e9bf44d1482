"""The `coreprune` command line: oneshot, train, compress (with held-out certificates), compare,
report.

Every command writes to a run folder (--out): the config it ran with (config.json), its
metrics (metrics.json), tables (CSV, markdown) and plots, plus models saved without pickle.
Inputs are checked first: a bad value is a one-line usage error (exit code 2), and the run
folder is only created once the inputs are valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

import coreprune
from coreprune.certify import CertifiedCompression, certify
from coreprune.certify.bounds import min_holdout_size
from coreprune.certify.heldout import INFORMATIVE
from coreprune.certify.search import DEFAULT_TARGETS, certified_compress
from coreprune.compress import CompressResult, compress
from coreprune.harness.comparison import (
    METHODS,
    CompareConfig,
    check_run,
    first_inputs,
    make_pruner,
    read_rows,
    run_comparison,
    write_summary,
)
from coreprune.harness.data import DATASETS, Loaders, make_loaders
from coreprune.harness.evaluation.machine import describe_device
from coreprune.harness.models import MODEL_NAMES
from coreprune.harness.oneshot import (
    DEFAULT_BUDGETS,
    DEFAULT_METHODS,
    DEFAULT_MODELS,
    format_table,
    parse_method,
    run_oneshot,
)
from coreprune.harness.pretrained import PRETRAINED
from coreprune.harness.training import (
    build_for_dataset,
    default_image_size,
    evaluate,
    fit,
    recalibrated_copy,
    set_seed,
)
from coreprune.scoring import SCORERS
from coreprune.serialization import ARCH_FILE, load_model, save_model
from coreprune.torch_utils import eval_mode, resolve_device

__all__ = ["DEFAULT_THREADS", "add_compare_arguments", "compare_config", "main"]

# torch CPU threads unless --threads says otherwise: the fastest count measured for compression
# and training on the project's loaded 2-core CPU (benchmarks/results/threads.md: 1 thread was
# 2 to 80 times faster than 2 there).
DEFAULT_THREADS = 1

_INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (usage errors exit with 2 via argparse)."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.parser
    torch.set_num_threads(args.threads)
    try:
        _check_device(args.device)
        work = args.prepare(args)  # every input check; nothing written yet
    except _INPUT_ERRORS as err:
        command.error(" ".join(str(err).split()))  # exits with code 2
    return int(work() or 0)


# --------------------------------------------------------------------------------------------
# Argument types: refuse, never clamp


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def _guarantee(text: str) -> dict[str, float]:
    metric, sep, level = text.partition("=")
    if not sep or not metric:
        raise argparse.ArgumentTypeError(
            f"expected METRIC=LEVEL such as agreement=0.97, got {text!r}"
        )
    return {metric.strip(): _number(level)}


_COUNT = _int_at_least(0)
_POSITIVE_INT = _int_at_least(1)


def _available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _check_device(name: str | None) -> None:
    if name is None:
        return
    available = _available_devices()
    if name not in available:
        raise ValueError(
            f"--device {name} is not available here; available: {', '.join(available)}"
        )


# --------------------------------------------------------------------------------------------
# Parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, descriptions kept as written."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coreprune", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"coreprune {coreprune.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.set_defaults(parser=p, device=None)
        return p

    train = command("train", "train a zoo model from scratch; saves it to --out/model")
    _data_arguments(train)
    train.add_argument("--model", default="lenet5", choices=MODEL_NAMES, metavar="MODEL",
                       help="zoo model: " + ", ".join(MODEL_NAMES))  # fmt: skip
    train.add_argument("--epochs", type=_POSITIVE_INT, default=3, help="training epochs")
    train.add_argument("--lr", type=_positive, default=0.05, help="peak SGD learning rate")
    train.add_argument("--seed", type=_COUNT, default=0, help="initialisation and shuffling seed")
    train.add_argument("--resume", action="store_true",
                       help="continue from --out/checkpoint.pt (the same settings only)")  # fmt: skip
    train.add_argument("--out", default="runs/train", help="run folder")
    _overwrite_argument(train)
    train.set_defaults(prepare=_prepare_train)

    comp = command(
        "compress", "compress a saved or user-built model; writes a report, accuracies, the model"
    )
    _data_arguments(comp)
    source = comp.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="a model folder written by `coreprune train`")
    source.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="import MODULE (the current folder is searched too) and call FUNCTION() for the "
        "nn.Module to compress",
    )
    comp.add_argument(
        "--weights",
        help="with --model-factory: a state dict to load first (.pt, read with weights_only=True, "
        "or .safetensors); keys and shapes must match the model",
    )
    comp.add_argument(
        "--factory-trained",
        action="store_true",
        help="with --model-factory and no --weights: FUNCTION() returns a trained model (it "
        "loads its own weights); without this flag or --weights the run is refused, so that a "
        "freshly initialised model is never pruned by mistake",
    )
    budget = comp.add_mutually_exclusive_group(required=True)
    budget.add_argument("--target", type=_fraction, help="fraction of params (or MACs) to remove")
    budget.add_argument("--eps", type=_positive, help="per-layer certificate target (coreset only)")
    budget.add_argument(
        "--guarantee",
        type=_guarantee,
        metavar="METRIC=LEVEL",
        help="certified compression: the most compressed of --budgets whose guarantee the test "
        "split certifies at --confidence, e.g. agreement=0.97, accuracy=0.85 or "
        "accuracy_drop=0.01 (coreprune.certify.certified_compress; fixed-sequence testing); "
        "the certified model is saved as it is, with no batch-norm re-estimation or fine-tuning",
    )
    comp.add_argument("--budgets", nargs="+", type=_fraction, default=list(DEFAULT_TARGETS),
                      help="with --guarantee: the targets tested, mildest first")  # fmt: skip
    comp.add_argument(
        "--certify",
        action="store_true",
        help="held-out certificate of the final model against the dense one on the test split "
        "(coreprune.certify: Clopper-Pearson bounds on agreement, accuracy and accuracy drop); "
        "the test split is used for nothing else",
    )
    comp.add_argument("--confidence", type=_fraction, default=0.95,
                      help="confidence of --certify and --guarantee")  # fmt: skip
    comp.add_argument("--method", default="coreset", choices=[m for m in METHODS if m != "dpf"],
                      help="pruning method")  # fmt: skip
    comp.add_argument("--mode", default="select", choices=("select", "sample"),
                      help="coreset: keep the most important units, or sample them")  # fmt: skip
    comp.add_argument("--metric", default="params", choices=("params", "macs"),
                      help="what --target counts")  # fmt: skip
    comp.add_argument("--allocation", default="uniform", choices=("uniform", "global"),
                      help="same fraction per layer, or one budget across layers")  # fmt: skip
    comp.add_argument("--calibration", type=_COUNT, default=256,
                      help="coreset: training images spanning each layer's inputs; "
                      "0 = data-free certificates")  # fmt: skip
    comp.add_argument("--rank", type=_POSITIVE_INT, default=8,
                      help="coreset: principal directions kept from the calibration inputs")  # fmt: skip
    comp.add_argument("--finetune-epochs", type=_COUNT, default=0,
                      help="epochs of fine-tuning after pruning")  # fmt: skip
    comp.add_argument("--finetune-lr", type=_positive, default=0.01, help="fine-tuning rate")
    comp.add_argument("--seed", type=_COUNT, default=0, help="seed of sampling and fine-tuning")
    comp.add_argument("--out", default="runs/compress", help="run folder")
    _overwrite_argument(comp)
    comp.set_defaults(prepare=_prepare_compress)

    cmp = command("compare", "coreset vs baselines at matched params and MACs")
    add_compare_arguments(cmp)
    cmp.set_defaults(prepare=_prepare_compare)

    one = command(
        "oneshot",
        "prune the shipped pretrained Fashion-MNIST models with the coreset and the baselines "
        "to the same widths, and print their test accuracy (no fine-tuning)",
    )
    one.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=PRETRAINED,
                     help="pretrained models")  # fmt: skip
    one.add_argument("--budgets", nargs="+", type=_fraction, default=list(DEFAULT_BUDGETS),
                     help="fractions of params removed")  # fmt: skip
    one.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                     help="NAME or NAME+REWIRING (none, merge, lstsq); NAME is coreset or a "
                     "scorer: " + ", ".join(sorted(SCORERS)))  # fmt: skip
    one.add_argument("--calibration", type=_int_at_least(2), default=1024,
                     help="training images for the coreset's choice, SNIP and lstsq rewiring")  # fmt: skip
    one.add_argument("--test-images", type=_POSITIVE_INT, default=2000,
                     help="first test images the accuracy is measured on")  # fmt: skip
    one.add_argument("--seed", type=_COUNT, default=0, help="seed of the random baseline")
    one.add_argument("--out", default=None, help="also write the table to this markdown file")
    one.set_defaults(prepare=_prepare_oneshot)

    report = command("report", "summary table and plot from a compare run folder")
    report.add_argument("run_dir", help="a folder written by `coreprune compare`")
    report.set_defaults(prepare=_prepare_report)

    for p in (one, train, comp, cmp, report):
        p.add_argument("--threads", type=_POSITIVE_INT, default=DEFAULT_THREADS,
                       help="torch CPU threads; the default was the fastest measured on a "
                       "busy 2-core CPU (benchmarks/results/threads.md); try 2 or more on an "
                       "idle machine")  # fmt: skip
    return parser


def _overwrite_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (otherwise it is refused)")  # fmt: skip


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", choices=tuple(DATASETS), help="dataset")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (Fashion-MNIST has a default)")  # fmt: skip
    p.add_argument("--limit", type=_POSITIVE_INT, default=None,
                   help="cap each split at this many images (quick runs); default: all")  # fmt: skip
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=128, help="training batch size")
    p.add_argument("--image-size", type=_POSITIVE_INT, default=None,
                   help="zero-pad images to this side; default: native (32 for VGG)")  # fmt: skip
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present), cpu, cuda, cuda:N")  # fmt: skip


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `coreprune compare` (examples/compare_baselines.py runs the same command)."""
    d = CompareConfig(out="unused")
    p.add_argument("--models", nargs="+", default=list(d.models), choices=MODEL_NAMES,
                   metavar="MODEL", help="zoo models, each trained once per seed; any of "
                   + ", ".join(MODEL_NAMES))  # fmt: skip
    p.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS,
                   metavar="METHOD", help="pruning methods compared; any of "
                   + ", ".join(METHODS))  # fmt: skip
    p.add_argument("--targets", nargs="+", type=_fraction, default=list(d.targets),
                   help="fractions of params (or MACs) removed")  # fmt: skip
    p.add_argument("--metrics", nargs="+", default=list(d.metrics), choices=("params", "macs"),
                   help="what the targets count")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=_COUNT, default=list(d.seeds),
                   help="one dense model and one run per seed")  # fmt: skip
    p.add_argument("--dataset", default=d.dataset, choices=tuple(DATASETS), help="dataset")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (Fashion-MNIST has a default)")  # fmt: skip
    p.add_argument("--train-limit", type=_COUNT, default=d.train_limit,
                   help="training images used; 0 = all")  # fmt: skip
    p.add_argument("--test-limit", type=_COUNT, default=d.test_limit,
                   help="test images used; 0 = all")  # fmt: skip
    p.add_argument("--image-size", type=_POSITIVE_INT, default=None,
                   help="zero-pad images to this side; default: native (32 for VGG)")  # fmt: skip
    p.add_argument("--epochs", type=_POSITIVE_INT, default=d.epochs,
                   help="dense training epochs (at init: the pruned model's)")  # fmt: skip
    p.add_argument("--lr", type=_positive, default=d.lr, help="dense training rate")
    p.add_argument("--finetune-epochs", type=_COUNT, default=d.finetune_epochs,
                   help="fine-tuning epochs after pruning, the same for every method")  # fmt: skip
    p.add_argument("--finetune-lr", type=_positive, default=d.finetune_lr, help="fine-tuning rate")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=d.batch_size, help="batch size")
    p.add_argument("--calibration", type=_COUNT, default=d.calibration,
                   help="coreset: training images spanning each layer's inputs; 0 = data-free")  # fmt: skip
    p.add_argument("--rank", type=_POSITIVE_INT, default=d.rank,
                   help="coreset: principal directions kept from the calibration inputs")  # fmt: skip
    p.add_argument("--synflow-rounds", type=_POSITIVE_INT, default=d.synflow_rounds,
                   help="SynFlow re-scoring rounds")  # fmt: skip
    p.add_argument("--beyond-accuracy", action="store_true",
                   help="also agreement with dense, accuracy under input noise, ECE")  # fmt: skip
    p.add_argument("--at-init", action="store_true",
                   help="prune the initialised model, then train it (instead of prune + "
                   "fine-tune)")  # fmt: skip
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", default=None,
                   help="run folder; default: runs/compare-<digest of the settings>, so "
                   "different settings never share a folder")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="delete the results already in --out instead of resuming them")  # fmt: skip


def compare_config(a: argparse.Namespace) -> CompareConfig:
    """The CompareConfig of parsed `compare` arguments (0 limits mean all images)."""
    return CompareConfig(
        models=tuple(a.models), methods=tuple(a.methods), targets=tuple(a.targets),
        metrics=tuple(a.metrics), seeds=tuple(a.seeds), dataset=a.dataset,
        data_root=a.data_root, train_limit=a.train_limit or None,
        test_limit=a.test_limit or None, image_size=a.image_size, epochs=a.epochs, lr=a.lr,
        finetune_epochs=a.finetune_epochs, finetune_lr=a.finetune_lr,
        batch_size=a.batch_size, calibration=a.calibration, rank=a.rank,
        synflow_rounds=a.synflow_rounds, beyond_accuracy=a.beyond_accuracy, at_init=a.at_init,
        device=a.device, out=a.out,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Commands: `_prepare_*` checks every input and returns the work to do


def _prepare_train(a: argparse.Namespace) -> Callable[[], int]:
    out = Path(a.out)
    if a.resume and a.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite replaces it: pick one")
    if a.resume and not (out / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    _check_run_folder(out, a, resume=a.resume)
    model, kwargs = build_for_dataset(a.model, a.dataset, a.image_size)
    loaders = _loaders(a, default_image_size(a.model, a.dataset))
    device = resolve_device(a.device)

    def work() -> int:
        _run_dir(out, a, device)
        set_seed(a.seed)
        fresh, _ = build_for_dataset(a.model, a.dataset, a.image_size)  # seeded initialisation
        print(f"training {a.model} on {a.dataset} for {a.epochs} epochs ({device})")
        history = fit(
            fresh, loaders.train, epochs=a.epochs, lr=a.lr, val_loader=loaders.val,
            device=device, checkpoint=out / "checkpoint.pt", resume=a.resume, seed=a.seed,
        )  # fmt: skip
        test = evaluate(fresh, loaders.test, device=device)
        save_model(fresh.cpu(), out / "model", arch=a.model, arch_kwargs=kwargs)
        _write_json(out / "metrics.json", {"test": test, "history": history.to_dict()})
        print(f"{a.model}: test accuracy {test['accuracy']:.4f}; saved to {out / 'model'}")
        return 0

    del model  # built only to check the arguments before anything is written
    return work


@dataclass
class _Source:
    """The model to compress, and how to save it again (architecture name and kwargs)."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] | None


def _prepare_compress(a: argparse.Namespace) -> Callable[[], int]:
    if a.weights is not None and a.model_factory is None:
        raise ValueError("--weights goes with --model-factory (a --model-dir holds its weights)")
    if a.factory_trained and (a.model_factory is None or a.weights is not None):
        raise ValueError("--factory-trained goes with --model-factory and no --weights")
    if a.guarantee is None and a.budgets != list(DEFAULT_TARGETS):
        raise ValueError("--budgets goes with --guarantee (--target sets one budget)")
    if a.guarantee is not None and a.finetune_epochs > 0:
        raise ValueError("--guarantee certifies the model as compressed; fine-tuning would "
                         "change it and void the guarantee: drop --finetune-epochs")  # fmt: skip
    if a.guarantee is not None and a.certify:
        raise ValueError("--guarantee already certifies the saved model: drop --certify")
    _check_run_folder(Path(a.out), a, resume=False)
    source = _factory_model(a.model_factory, a.weights) if a.model_factory else _saved_model(a)
    if a.model_factory and a.weights is None and not a.factory_trained:
        raise ValueError(
            f"--model-factory {a.model_factory} without --weights would prune the model exactly "
            "as the factory builds it, usually untrained; pass --weights FILE, or "
            "--factory-trained if the factory loads its own trained weights"
        )
    size = a.image_size
    if size is None and a.model_dir is not None:
        arch = source.arch
        size = default_image_size(arch, a.dataset) if arch in MODEL_NAMES else None
    loaders = _loaders(a, size)
    device = resolve_device(a.device)
    model = source.model.to(device)
    example = next(iter(loaders.train))[0][:1].to(device)  # MACs are counted per image
    _check_accepts(model, example, a.dataset)
    set_seed(a.seed)
    kwargs: dict[str, Any] = {"example_input": example, "metric": a.metric,
                              "allocation": a.allocation, "mode": a.mode}  # fmt: skip
    if a.method == "coreset" and a.calibration > 0:
        kwargs.update(
            calibration=first_inputs(loaders.train, a.calibration).to(device), rank=a.rank
        )
    if a.eps is not None:
        kwargs.update(eps=a.eps)
        kwargs.pop("metric"), kwargs.pop("allocation")
    elif a.guarantee is None:
        kwargs.update(target=a.target)
    if a.certify or a.guarantee is not None:
        _check_holdout_size(loaders, a.confidence)
    method = make_pruner(CompareConfig(out="unused"), a.method, loaders.train, a.seed)
    print(f"compressing with {a.method} ({device})")
    generator = torch.Generator().manual_seed(a.seed)
    certified = None
    if a.guarantee is not None:  # the test split is the holdout, used for nothing else
        certified = certified_compress(
            model, guarantee=a.guarantee, holdout=loaders.test, confidence=a.confidence,
            targets=a.budgets, method=method, generator=generator, **kwargs,
        )  # fmt: skip
        result = certified.result
    else:
        result = compress(model, method=method, generator=generator, **kwargs)

    def work() -> int:
        _compress_rest(a, source, model, result, loaders, device, certified)
        return 0

    return work


def _check_holdout_size(loaders: Loaders, confidence: float) -> None:
    """A held-out certificate needs enough test images to say anything: refuse fewer."""
    need = min_holdout_size(1 - confidence, INFORMATIVE)
    have = len(loaders.test.dataset)  # type: ignore[arg-type]
    if have < need:
        raise ValueError(
            f"--certify/--guarantee: the test split has {have} images; at --confidence "
            f"{confidence:g} a held-out bound needs at least {need} (raise --limit or lower "
            "--confidence)"
        )


def _compress_rest(
    a: argparse.Namespace, source: _Source, dense: nn.Module, result: CompressResult,
    loaders: Loaders, device: torch.device, certified: CertifiedCompression | None = None,
) -> None:  # fmt: skip
    """Everything after the (validated) compression: accuracies, BN repair, fine-tuning, files."""
    out = _run_dir(Path(a.out), a, device)
    report = result.report
    metrics: dict[str, Any] = {
        "dense_accuracy": evaluate(dense, loaders.test, device=device)["accuracy"],
        "pruned_accuracy": evaluate(result.model, loaders.test, device=device)["accuracy"],
        "params_before": report.params_before, "params_after": report.params_after,
        "macs_per_image_before": report.macs_before, "macs_per_image_after": report.macs_after,
    }  # fmt: skip
    pruned = result.model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())
    if has_bn and certified is not None:
        print("batch-norm statistics left as compressed: re-estimating them would change the "
              "certified model and void its guarantee")  # fmt: skip
    elif has_bn:
        print("re-estimating batch-norm statistics on training batches")
        pruned = recalibrated_copy(pruned, loaders.train, device)
        metrics["recalibrated_accuracy"] = evaluate(pruned, loaders.test, device=device)["accuracy"]
    if a.finetune_epochs > 0:
        print(f"fine-tuning for {a.finetune_epochs} epochs")
        fit(pruned, loaders.train, epochs=a.finetune_epochs, lr=a.finetune_lr, device=device,
            seed=a.seed)  # fmt: skip
        metrics["finetuned_accuracy"] = evaluate(pruned, loaders.test, device=device)["accuracy"]
    certificate_text = None
    if certified is not None:
        certificate_text = str(certified)
        metrics["certified_compression"] = {
            "guarantee": dataclasses.asdict(certified.guarantee),
            "confidence": certified.confidence, "n": certified.n, "target": certified.target,
            "tests": [dataclasses.asdict(test) for test in certified.tests],
            "untested": list(certified.untested), "assumption": certified.assumption,
        }  # fmt: skip
    elif a.certify:
        cert = certify(dense, pruned, loaders.test, confidence=a.confidence, device=device)
        certificate_text = str(cert)
        metrics["certificate"] = dataclasses.asdict(cert)
    report_text = report.to_markdown()
    if certificate_text is not None:
        report_text += "\n\n```\n" + certificate_text + "\n```"
    (out / "report.md").write_text(report_text + "\n")
    save_model(pruned.cpu(), out / "model", arch=source.arch, arch_kwargs=source.arch_kwargs)
    if a.model_factory:
        metrics["load_with"] = load_with_code(str(out / "model"), source.arch)
    _write_json(out / "metrics.json", metrics)
    print(report_text)
    print(json.dumps(metrics, indent=2))


def load_with_code(folder: str, factory: str) -> str:
    """Python that loads a model `compress --model-factory MODULE:FUNCTION` saved in `folder`."""
    module, _, function = factory.partition(":")
    return (
        f"from {module} import {function}; "
        "from coreprune.serialization import load_model; "
        f"model = load_model({folder!r}, factory={function})"
    )


def _saved_model(a: argparse.Namespace) -> _Source:
    folder = Path(a.model_dir)
    if not (folder / ARCH_FILE).is_file():
        raise FileNotFoundError(f"--model-dir {folder}: no {ARCH_FILE}; pass a folder written by "
                                "`coreprune train` (its model/ subfolder)")  # fmt: skip
    try:
        spec = json.loads((folder / ARCH_FILE).read_text())
        model = load_model(folder)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        # json.JSONDecodeError is a ValueError; load_model names what is wrong with the folder
        raise ValueError(f"--model-dir {folder}: {err}") from err
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(f"--model-dir {folder}: {ARCH_FILE} names no architecture (arch)")
    return _Source(model, spec["arch"], spec.get("arch_kwargs"))


def _factory_model(reference: str, weights: str | None) -> _Source:
    """Call the user's `module:function` for a model, and load `weights` into it if given."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--model-factory must be MODULE:FUNCTION, got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model-factory: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ValueError(f"--model-factory: {module_name!r} has no function {function_name!r}")
    try:
        model = factory()
    except Exception as err:  # the user's code: any failure is theirs to fix, shown in one line
        raise ValueError(
            f"--model-factory: {reference}() failed ({type(err).__name__}: {err}); it must "
            "build the model with no arguments"
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model-factory: {reference}() returned a {type(model).__name__}, "
                        "not an nn.Module")  # fmt: skip
    if weights is not None:
        _load_weights(model, Path(weights))
    return _Source(model.eval(), reference, None)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a plain state dict, refusing anything that is not one tensor per model entry."""
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for a broken file
            raise ValueError(f"--weights {path}: not a readable safetensors file "
                             f"({type(err).__name__}: {err})") from err  # fmt: skip
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"--weights {path}: not a state dict readable with "
                             f"weights_only=True ({type(err).__name__}: {err})") from err  # fmt: skip
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"--weights {path}: expected a state dict (names -> tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))  # fmt: skip
    if wrong:
        problems.append(f"shape (file vs model) {'; '.join(wrong[:5])}")
    if problems:
        raise ValueError(f"--weights {path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _check_accepts(model: nn.Module, example: torch.Tensor, dataset: str) -> None:
    try:
        with eval_mode(model, no_grad=True):
            model(example)
    except RuntimeError as err:
        raise ValueError(f"the model does not accept {dataset} images of shape "
                         f"{tuple(example.shape)}: {err}") from err  # fmt: skip


def _prepare_compare(a: argparse.Namespace) -> Callable[[], int]:
    config = compare_config(a)
    data = check_run(config, overwrite=a.overwrite)

    def work() -> int:
        rows = run_comparison(config, data=data, progress=True)
        print()
        print(write_summary(rows, config.folder))
        print(f"\nresults in {config.folder}/ (results.csv, summary.md, summary.png, config.json)")
        return 0

    return work


def _prepare_oneshot(a: argparse.Namespace) -> Callable[[], int]:
    for method in a.methods:
        parse_method(method)  # a bad name is a usage error before any work
    out = None if a.out is None else Path(a.out)

    def work() -> int:
        print(
            f"oneshot: {', '.join(a.models)} at {', '.join(f'{b:g}' for b in a.budgets)} of "
            f"params removed; {a.threads} thread(s) on {describe_device(torch.device('cpu'))}"
        )
        rows = run_oneshot(
            a.models, a.budgets, a.methods, calibration=a.calibration,
            test_images=a.test_images, seed=a.seed,
        )  # fmt: skip
        table = format_table(rows)
        print(table)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(table + "\n", encoding="utf-8")
        return 0

    return work


def _prepare_report(a: argparse.Namespace) -> Callable[[], int]:
    folder = Path(a.run_dir)
    rows = read_rows(folder / "results.csv")
    if not rows:
        raise FileNotFoundError(f"no results.csv with rows in {folder}")

    def work() -> int:
        print(write_summary(rows, folder))
        return 0

    return work


# --------------------------------------------------------------------------------------------
# Helpers


# Files `train` and `compress` write into their run folder (all that --overwrite deletes).
_RUN_FILES = ("config.json", "metrics.json", "checkpoint.pt", "report.md", "model")
# Recorded options that do not shape a run's results.
_NOT_SETTINGS = ("machine", "started", "resume", "overwrite", "threads", "device", "out",
                 "data_root")  # fmt: skip


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(a).items() if k not in ("prepare", "parser")}


def _check_run_folder(out: Path, a: argparse.Namespace, *, resume: bool) -> None:
    """Refuse to write over an earlier run, unless --overwrite; --resume needs its settings."""
    recorded_file = out / "config.json"
    if a.overwrite or not recorded_file.exists():
        return
    if not resume:
        raise ValueError(f"{out} holds an earlier run; use a new --out folder, or --overwrite "
                         "to replace it")  # fmt: skip
    recorded = json.loads(recorded_file.read_text())
    asked = json.loads(json.dumps(_settings(a), default=str))
    differences = [f"{k}: {json.dumps(recorded.get(k))} in the folder, {json.dumps(v)} asked"
                   for k, v in asked.items()
                   if k not in _NOT_SETTINGS and recorded.get(k) != v]  # fmt: skip
    if differences:
        raise ValueError(f"--resume: {out} was run with other settings ({'; '.join(differences)}); "
                         "resume with the same ones, or use a new --out folder")  # fmt: skip


def _run_dir(out: Path, a: argparse.Namespace, device: torch.device) -> Path:
    if a.overwrite:
        for name in _RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    config = _settings(a)
    config.update(machine=describe_device(device), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    _write_json(out / "config.json", config)
    return out


def _loaders(a: argparse.Namespace, image_size: int | None) -> Loaders:
    return make_loaders(a.dataset, a.data_root, batch_size=a.batch_size, limit=a.limit,
                        image_size=a.image_size or image_size)  # fmt: skip


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
