"""The command line's parser: one subcommand per command, each bound to the `prepare_*` that
checks its inputs."""

from __future__ import annotations

import argparse
from typing import NoReturn

from coreprune._version import __version__
from coreprune.certify.search import DEFAULT_TARGETS
from coreprune.harness.cli.arguments import (
    COUNT,
    POSITIVE_INT,
    fraction,
    guarantee,
    int_at_least,
    positive,
)
from coreprune.harness.cli.commands import (
    prepare_compare,
    prepare_oneshot,
    prepare_report,
    prepare_train,
)
from coreprune.harness.cli.compress_command import prepare_compress
from coreprune.harness.comparison import (
    METHODS,
    CompareConfig,
)
from coreprune.harness.data import DATASETS
from coreprune.harness.oneshot import (
    DEFAULT_BUDGETS,
    DEFAULT_METHODS,
    DEFAULT_MODELS,
)
from coreprune.harness.pretrained import PRETRAINED
from coreprune.scoring import SCORERS
from coreprune.zoo import MODEL_NAMES

# torch CPU threads unless --threads says otherwise: the fastest count measured for compression
# and training on the project's loaded 2-core CPU (benchmarks/results/threads.md: 1 thread was
# 2 to 80 times faster than 2 there).
DEFAULT_THREADS = 1

# The top of `coreprune --help`.
DESCRIPTION = """The `coreprune` command line: oneshot, train, compress (with held-out certificates), compare,
report.

Every command writes to a run folder (--out): the config it ran with (config.json), its
metrics (metrics.json), tables (CSV, markdown) and plots, plus models saved without pickle.
Inputs are checked first: a bad value is a one-line usage error (exit code 2), and the run
folder is only created once the inputs are valid.
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, descriptions kept as written."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coreprune", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"coreprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.set_defaults(parser=p, device=None)
        return p

    train = command("train", "train a zoo model from scratch; saves it to --out/model")
    _data_arguments(train)
    train.add_argument("--model", default="lenet5", choices=MODEL_NAMES, metavar="MODEL",
                       help="zoo model: " + ", ".join(MODEL_NAMES))  # fmt: skip
    train.add_argument("--epochs", type=POSITIVE_INT, default=3, help="training epochs")
    train.add_argument("--lr", type=positive, default=0.05, help="peak SGD learning rate")
    train.add_argument("--seed", type=COUNT, default=0, help="initialisation and shuffling seed")
    train.add_argument("--resume", action="store_true",
                       help="continue from --out/checkpoint.pt (the same settings only)")  # fmt: skip
    train.add_argument("--out", default="runs/train", help="run folder")
    _overwrite_argument(train)
    train.set_defaults(prepare=prepare_train)

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
    budget.add_argument("--target", type=fraction, help="fraction of params (or MACs) to remove")
    budget.add_argument("--eps", type=positive, help="per-layer certificate target (coreset only)")
    budget.add_argument(
        "--guarantee",
        type=guarantee,
        metavar="METRIC=LEVEL",
        help="certified compression: the most compressed of --budgets whose guarantee the test "
        "split certifies at --confidence, e.g. agreement=0.97, accuracy=0.85 or "
        "accuracy_drop=0.01 (coreprune.certify.certified_compress; fixed-sequence testing); "
        "the certified model is saved as it is, with no batch-norm re-estimation or fine-tuning",
    )
    comp.add_argument("--budgets", nargs="+", type=fraction, default=list(DEFAULT_TARGETS),
                      help="with --guarantee: the targets tested, mildest first")  # fmt: skip
    comp.add_argument(
        "--certify",
        action="store_true",
        help="held-out certificate of the final model against the dense one on the test split "
        "(coreprune.certify: Clopper-Pearson bounds on agreement, accuracy and accuracy drop); "
        "the test split is used for nothing else",
    )
    comp.add_argument("--confidence", type=fraction, default=0.95,
                      help="confidence of --certify and --guarantee")  # fmt: skip
    comp.add_argument("--method", default="coreset", choices=[m for m in METHODS if m != "dpf"],
                      help="pruning method")  # fmt: skip
    comp.add_argument("--mode", default="select", choices=("select", "sample"),
                      help="coreset: keep the most important units, or sample them")  # fmt: skip
    comp.add_argument("--metric", default="params", choices=("params", "macs"),
                      help="what --target counts")  # fmt: skip
    comp.add_argument("--allocation", default="uniform", choices=("uniform", "global"),
                      help="same fraction per layer, or one budget across layers")  # fmt: skip
    comp.add_argument("--calibration", type=COUNT, default=256,
                      help="coreset: training images spanning each layer's inputs; "
                      "0 = data-free certificates")  # fmt: skip
    comp.add_argument("--rank", type=POSITIVE_INT, default=8,
                      help="coreset: principal directions kept from the calibration inputs")  # fmt: skip
    comp.add_argument("--finetune-epochs", type=COUNT, default=0,
                      help="epochs of fine-tuning after pruning")  # fmt: skip
    comp.add_argument("--finetune-lr", type=positive, default=0.01, help="fine-tuning rate")
    comp.add_argument("--seed", type=COUNT, default=0, help="seed of sampling and fine-tuning")
    comp.add_argument("--out", default="runs/compress", help="run folder")
    _overwrite_argument(comp)
    comp.set_defaults(prepare=prepare_compress)

    cmp = command("compare", "coreset vs baselines at matched params and MACs")
    add_compare_arguments(cmp)
    cmp.set_defaults(prepare=prepare_compare)

    one = command(
        "oneshot",
        "prune the shipped pretrained Fashion-MNIST models with the coreset and the baselines "
        "to the same widths, and print their test accuracy (no fine-tuning)",
    )
    one.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=PRETRAINED,
                     help="pretrained models")  # fmt: skip
    one.add_argument("--budgets", nargs="+", type=fraction, default=list(DEFAULT_BUDGETS),
                     help="fractions of params removed")  # fmt: skip
    one.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                     help="NAME or NAME+REWIRING (none, merge, lstsq); NAME is coreset or a "
                     "scorer: " + ", ".join(sorted(SCORERS)))  # fmt: skip
    one.add_argument("--calibration", type=int_at_least(2), default=1024,
                     help="training images for the coreset's choice, SNIP and lstsq rewiring")  # fmt: skip
    one.add_argument("--test-images", type=POSITIVE_INT, default=2000,
                     help="first test images the accuracy is measured on")  # fmt: skip
    one.add_argument("--seed", type=COUNT, default=0, help="seed of the random baseline")
    one.add_argument("--out", default=None, help="also write the table to this markdown file")
    one.set_defaults(prepare=prepare_oneshot)

    report = command("report", "summary table and plot from a compare run folder")
    report.add_argument("run_dir", help="a folder written by `coreprune compare`")
    report.set_defaults(prepare=prepare_report)

    for p in (one, train, comp, cmp, report):
        p.add_argument("--threads", type=POSITIVE_INT, default=DEFAULT_THREADS,
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
    p.add_argument("--limit", type=POSITIVE_INT, default=None,
                   help="cap each split at this many images (quick runs); default: all")  # fmt: skip
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="training batch size")
    p.add_argument("--image-size", type=POSITIVE_INT, default=None,
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
    p.add_argument("--targets", nargs="+", type=fraction, default=list(d.targets),
                   help="fractions of params (or MACs) removed")  # fmt: skip
    p.add_argument("--metrics", nargs="+", default=list(d.metrics), choices=("params", "macs"),
                   help="what the targets count")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=COUNT, default=list(d.seeds),
                   help="one dense model and one run per seed")  # fmt: skip
    p.add_argument("--dataset", default=d.dataset, choices=tuple(DATASETS), help="dataset")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (Fashion-MNIST has a default)")  # fmt: skip
    p.add_argument("--train-limit", type=COUNT, default=d.train_limit,
                   help="training images used; 0 = all")  # fmt: skip
    p.add_argument("--test-limit", type=COUNT, default=d.test_limit,
                   help="test images used; 0 = all")  # fmt: skip
    p.add_argument("--image-size", type=POSITIVE_INT, default=None,
                   help="zero-pad images to this side; default: native (32 for VGG)")  # fmt: skip
    p.add_argument("--epochs", type=POSITIVE_INT, default=d.epochs,
                   help="dense training epochs (at init: the pruned model's)")  # fmt: skip
    p.add_argument("--lr", type=positive, default=d.lr, help="dense training rate")
    p.add_argument("--finetune-epochs", type=COUNT, default=d.finetune_epochs,
                   help="fine-tuning epochs after pruning, the same for every method")  # fmt: skip
    p.add_argument("--finetune-lr", type=positive, default=d.finetune_lr, help="fine-tuning rate")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size, help="batch size")
    p.add_argument("--calibration", type=COUNT, default=d.calibration,
                   help="coreset: training images spanning each layer's inputs; 0 = data-free")  # fmt: skip
    p.add_argument("--rank", type=POSITIVE_INT, default=d.rank,
                   help="coreset: principal directions kept from the calibration inputs")  # fmt: skip
    p.add_argument("--synflow-rounds", type=POSITIVE_INT, default=d.synflow_rounds,
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
