"""Lubana & Dick (ICLR 2021) at small scale: prune a convnet early in training with each of their
importance measures, on Fashion-MNIST, and check their three claims against what is measured.

Each method gets the same model, data, budget and schedule (`prune_early`: train an epoch, remove
units with `coreprune.compress`, repeat for `--rounds` rounds until `--target` of the params is
gone, then train `--epochs-after` epochs). Measured per method, mean over seeds:

- dL@1: probe loss after minus before the first pruning step (model trained one epoch);
- |g|@1: probe gradient norm after / before that step;
- acc@prune: validation accuracy right after the last pruning step, before training on;
- loss@ft1: mean training loss in the first epoch after the last pruning step;
- drop@ft1: validation loss right after the last pruning step minus after the first epoch of
  training on: how fast the pruned model converges, whatever loss it starts from;
- test acc: test accuracy at the end.

The claims: (i) magnitude-pruned models converge faster than magnitude-agnostic ones (here: a
larger drop@ft1 than loss preservation and random); (ii)
loss preservation suits minimally trained models (smallest loss change when pruning early);
(iii) increasing the gradient norm by pruning hurts (gradnorm_increase below
gradnorm_preservation). Each verdict is printed as measured; at this scale some may not hold.

    python examples/gradient_flow.py                       # a few minutes on a 2-core CPU
    python examples/gradient_flow.py --seeds 3 --limit 20000 --rounds 5 --epochs-after 10
    python examples/gradient_flow.py --model vgg11 --width 0.25    # the paper used VGG-13 (BN)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from coreprune.harness.data import make_loaders
from coreprune.harness.models import MODEL_NAMES, build_model
from coreprune.harness.oneshot import first_examples
from coreprune.harness.training import evaluate, set_seed
from coreprune.methods.prune_early import prune_early
from coreprune.scoring.gradflow import GRADFLOW_MEASURES

METHODS = (
    "magnitude_l2",
    "loss_preservation",
    "gradnorm_preservation",
    "gradnorm_increase",
    "random",
)
COLUMNS = ("dL@1", "|g|@1", "acc@prune", "loss@ft1", "drop@ft1", "test acc")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5", choices=MODEL_NAMES)
    p.add_argument("--width", type=float, default=None, help="width_multiplier for VGG/ResNet")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--target", type=float, default=0.6, help="fraction of params to remove")
    p.add_argument("--rounds", type=int, default=3, help="pruning rounds, one every epoch")
    p.add_argument("--epochs-between", type=int, default=1, help="training epochs per round")
    p.add_argument("--warmup-epochs", type=int, default=0, help="training before round 1")
    p.add_argument("--epochs-after", type=int, default=3, help="training after the last round")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=4000, help="examples per train/val/test split")
    p.add_argument("--samples", type=int, default=512, help="examples for the loss measure")
    p.add_argument("--samples-per-class", type=int, default=32, help="for the Hessian measures")
    p.add_argument("--probe", type=int, default=512, help="validation examples for dL and |g|")
    p.add_argument("--allocation", default="global", choices=("global", "uniform"))
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, reported as mean ± std")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST idx folder (default: Debian's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    if args.samples_per_class * 10 > args.limit:
        p.error("--samples-per-class x 10 classes must fit in --limit training examples")
    return args


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.model == "lenet5":
        return {"in_channels": 1, "num_classes": 10, "image_size": 28}
    if args.model == "lenet300100":
        return {"in_features": 784, "num_classes": 10}
    kwargs: dict[str, Any] = {"in_channels": 1, "num_classes": 10}
    if args.width is not None:
        kwargs["width_multiplier"] = args.width
    return kwargs


def run_one(args: argparse.Namespace, method: str, seed: int, loaders: Any) -> dict[str, float]:
    set_seed(seed)
    model = build_model(args.model, **model_kwargs(args))
    options = None
    if method == "loss_preservation":
        options = {"samples": args.samples}
    elif method.startswith("gradnorm"):
        options = {"samples_per_class": args.samples_per_class}
    probe = first_examples(loaders.val, args.probe)
    result = prune_early(
        model, loaders.train, method, args.target, rounds=args.rounds,
        epochs_between=args.epochs_between, warmup_epochs=args.warmup_epochs,
        epochs_after=args.epochs_after, lr=args.lr, allocation=args.allocation,
        val_loader=loaders.val, probe=probe, method_options=options, seed=seed,
        progress=args.progress,
    )  # fmt: skip
    first, last = result.rounds[0], result.rounds[-1]
    assert first.probe_loss_after is not None and first.probe_loss_before is not None
    assert first.probe_grad_norm_after is not None and first.probe_grad_norm_before is not None
    final = result.final
    return {
        "dL@1": first.probe_loss_after - first.probe_loss_before,
        "|g|@1": first.probe_grad_norm_after / first.probe_grad_norm_before,
        "acc@prune": float(last.val_accuracy_after or 0.0),
        "loss@ft1": final.train_loss[0] if final is not None else float("nan"),
        "drop@ft1": (last.val_loss_after or 0.0) - final.val_loss[0]
        if final is not None
        else float("nan"),
        "test acc": evaluate(result.model, loaders.test)["accuracy"],
        "removed": result.removed,
    }


def verdicts(table: dict[str, dict[str, float]]) -> list[tuple[str, bool | None, str]]:
    """Each claim, whether the measured means support it (None: a needed method was not run)."""
    out: list[tuple[str, bool | None, str]] = []

    def has(*names: str) -> bool:
        return all(n in table for n in names)

    if has("magnitude_l2") and any(n in table for n in ("loss_preservation", "random")):
        others = {n: table[n]["drop@ft1"] for n in ("loss_preservation", "random") if n in table}
        ok = all(table["magnitude_l2"]["drop@ft1"] > v for v in others.values())
        detail = ", ".join(f"{n} {v:.4f}" for n, v in others.items())
        out.append(("(i) magnitude-pruned model converges faster (larger drop@ft1)", ok,
                    f"magnitude_l2 {table['magnitude_l2']['drop@ft1']:.4f} vs {detail}"))  # fmt: skip
    else:
        out.append(("(i) magnitude converges faster", None, "needs magnitude_l2 and another"))
    if has("loss_preservation") and len(table) > 1:
        changes = {n: abs(row["dL@1"]) for n, row in table.items()}
        ok = min(changes, key=lambda n: changes[n]) == "loss_preservation"
        detail = ", ".join(f"{n} {v:.4f}" for n, v in sorted(changes.items(), key=lambda kv: kv[1]))
        out.append(("(ii) loss preservation changes the loss least when pruning early", ok,
                    f"|dL@1|: {detail}"))  # fmt: skip
    else:
        out.append(("(ii) loss preservation", None, "needs loss_preservation and another"))
    if has("gradnorm_increase", "gradnorm_preservation"):
        inc, pre = table["gradnorm_increase"], table["gradnorm_preservation"]
        ok = inc["test acc"] < pre["test acc"]
        out.append(("(iii) increasing the gradient norm hurts (test acc below preservation)", ok,
                    f"increase {inc['test acc']:.4f} (|g| x{inc['|g|@1']:.2f}) vs preservation "
                    f"{pre['test acc']:.4f} (|g| x{pre['|g|@1']:.2f})"))  # fmt: skip
    else:
        out.append(
            ("(iii) increasing the gradient norm hurts", None, "needs both gradnorm measures")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    loaders = make_loaders(
        "fashion_mnist", args.data_root, batch_size=args.batch_size, limit=args.limit, seed=0,
        augment=False,
    )  # fmt: skip
    print(
        f"{args.model} on Fashion-MNIST ({len(loaders.train.dataset)} train images), prune "  # type: ignore[arg-type]
        f"{100 * args.target:g}% of params in {args.rounds} rounds ({args.epochs_between} epoch(s) "
        f"apart, {args.allocation} allocation), then {args.epochs_after} epochs; "
        f"{args.seeds} seed(s)",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {}
    for method in args.methods:
        for seed in range(args.seeds):
            t = time.perf_counter()
            row = run_one(args, method, seed, loaders)
            runs.setdefault(method, []).append(row)
            print(f"  {method:<22} seed {seed}: test acc {row['test acc']:.4f} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)  # fmt: skip
    table = {m: {c: statistics.fmean(r[c] for r in rows) for c in (*COLUMNS, "removed")}
             for m, rows in runs.items()}  # fmt: skip
    spread = {m: {c: statistics.stdev([r[c] for r in rows]) if len(rows) > 1 else 0.0
                  for c in COLUMNS} for m, rows in runs.items()}  # fmt: skip
    print()
    print(f"| method | {' | '.join(COLUMNS)} | params removed |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for method, row in table.items():
        # one seed measures no spread: print the value alone rather than "± 0.0000"
        cells = [f"{row[c]:.4f}" + (f" ± {spread[method][c]:.4f}" if args.seeds > 1 else "")
                 for c in COLUMNS]  # fmt: skip
        print(f"| {method} | {' | '.join(cells)} | {100 * row['removed']:.1f}% |")
    print()
    results = verdicts(table)
    for claim, ok, detail in results:
        word = "not run" if ok is None else ("REPRODUCED" if ok else "NOT reproduced")
        print(f"{claim}: {word} — {detail}")
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.0f} s in all. Small models, few epochs and one data order per seed: treat "
          "a verdict as a measurement at this scale, not as a test of the paper.")  # fmt: skip
    if args.json is not None:
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "table": table, "std": spread, "runs": runs, "seconds": seconds,
            "verdicts": [{"claim": c, "reproduced": ok, "detail": d} for c, ok, d in results],
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


assert set(METHODS) - {"random"} == set(GRADFLOW_MEASURES)

if __name__ == "__main__":
    sys.exit(main())
