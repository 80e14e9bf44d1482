"""Width pruning of the shipped Fashion-MNIST ViT: FFN neurons and attention heads, no fine-tuning.

Run as a script (``python benchmarks/bench_transformer.py``) to write
``benchmarks/results/transformer/summary.md`` and ``results.csv``; ``--help`` lists the options.

The model is ``load_pretrained("vit_small")`` (4 pre-norm blocks, width 64, 4 heads of 16, FFN
256, 49 tokens). Two kinds of cut, each at matched widths for every method:

- **FFN neurons**, 25/50/75% of each block's 256 removed (uniform allocation), with
  ``coreprune.compress`` and the coreset (its default calibrated choice, and the certified
  choice), magnitude (filter L1), Wanda's structured form, FLAP's fluctuation score and random;
  each with no rewiring, the data-free merge and least-squares rewiring (FLAP also with its own
  bias compensation, ``coreprune.scoring.compensate_bias``). The params target passed to
  ``compress`` is the one that removes exactly that many neurons per block; the kept widths
  are checked.
- **Attention heads**, 25/50% of each block's 4 heads removed
  (``coreprune.compress.heads.prune_attention_heads``) by magnitude, Wanda, FLAP, the coreset's
  refit choice (greedy structured OBS over heads) and random, with and without refitting the
  output projection (FLAP also with bias compensation).

Calibration is the first 256 training images (256 x 49 = 12,544 token rows; the least-squares
fits subsample 16,384 rows at most, so all are used). Accuracy is on the full 10,000-image test
set right after pruning. Params and MACs are recounted on the pruned model (MACs for one
image, attention matmuls included). Latency is the median forward time of a 64-image batch,
measured once per architecture (every method of a row shares it). Compress time is wall time on
this shared CPU. A method that fails is recorded with its error, not dropped.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import coreprune
from coreprune.compress import count_macs, count_params
from coreprune.compress.heads import prune_attention_heads
from coreprune.harness.data import make_loaders
from coreprune.harness.evaluation.metrics import measure_latency
from coreprune.harness.pretrained import load_pretrained
from coreprune.harness.training import evaluate
from coreprune.scoring import FLAP, Random, Wanda, compensate_bias
from coreprune.surgery.graph import find_prunable_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks._machine import machine

OUT = Path(__file__).resolve().parent / "results" / "transformer"
LATENCY_ROUNDS = 9
SEEDS = (0, 1, 2)  # random's seeds; every other method is deterministic
FFN_BUDGETS = (0.25, 0.5, 0.75)
HEAD_BUDGETS = (0.25, 0.5)


@dataclass
class Row:
    part: str
    budget: float
    method: str
    compensate: str
    accuracy: float | None
    params: int | None
    macs: int | None
    seconds: float
    widths: str
    note: str
    seed: int = 0


def _ffn_target(model: nn.Module, fraction: float) -> tuple[float, int]:
    """The params fraction that removes `fraction` of every FFN's neurons, and the kept count."""
    pairs, _ = find_prunable_pairs(model)
    removed = 0
    kept = 0
    for pair in pairs:
        fc1, fc2 = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        n = fc1.out_features
        kept = n - round(fraction * n)
        per_unit = fc1.in_features + 1 + fc2.out_features
        removed += (n - kept) * per_unit
    # Half a parameter under the exact fraction: `compress` removes at least the target, and
    # the exact quotient can round up to one more unit in one block.
    return (removed - 0.5) / count_params(model), kept


def _ffn_method(name: str, calibration: torch.Tensor, seed: int) -> tuple[Any, dict[str, Any]]:
    if name == "coreset":
        return "coreset", {}
    if name == "coreset (certified)":
        return "coreset", {"choice": "certified"}
    if name == "wanda":
        return Wanda(calibration), {}
    if name == "flap":
        return FLAP(calibration), {}
    if name == "random":
        return Random(seed), {}
    return name, {}


def _settings(name: str, compensations: tuple[str, ...]) -> list[tuple[str, int]]:
    seeds = SEEDS if name == "random" else (0,)
    return [(comp, seed) for comp in compensations for seed in seeds]


def run_ffn(
    model: nn.Module, calibration: torch.Tensor, test: Any, x1: torch.Tensor, log: Any
) -> list[Row]:
    rows: list[Row] = []
    plans = [
        ("coreset", ("none", "merge", "lstsq")),
        ("coreset (certified)", ("lstsq",)),
        ("magnitude", ("none", "merge", "lstsq")),
        ("wanda", ("none", "merge", "lstsq")),
        ("flap", ("none", "bias", "lstsq")),
        ("random", ("none", "lstsq")),
    ]
    for budget in FFN_BUDGETS:
        target, kept = _ffn_target(model, budget)
        for name, compensations in plans:
            for comp, seed in _settings(name, compensations):
                method, extra = _ffn_method(name, calibration, seed)
                start = time.perf_counter()
                try:
                    result = coreprune.compress(
                        model, target=target, method=method, calibration=calibration,
                        compensate="none" if comp == "bias" else comp, progress=False,
                        generator=torch.Generator().manual_seed(0), **extra,
                    )  # fmt: skip
                    pruned = result.model
                    if comp == "bias":
                        cuts = [(r.producer, r.consumer, r.keep) for r in result.report.rows]
                        pruned = compensate_bias(model, pruned, cuts, calibration)
                    seconds = time.perf_counter() - start
                    widths = sorted({r.units_after for r in result.report.rows})
                    note = "" if widths == [kept] else f"widths {widths}, wanted {kept}"
                    acc = evaluate(pruned, test)["accuracy"]
                    row = Row("ffn", budget, name, comp, acc, count_params(pruned),
                              count_macs(pruned, x1), seconds, "/".join(map(str, widths)), note, seed)  # fmt: skip
                except Exception as err:  # recorded, not dropped
                    row = _failed("ffn", budget, name, comp, seed, start, err, log)
                rows.append(row)
                _print(row, log)
    return rows


def run_heads(
    model: nn.Module, calibration: torch.Tensor, test: Any, x1: torch.Tensor, log: Any
) -> list[Row]:
    rows: list[Row] = []
    plans = [
        ("magnitude", ("none", "lstsq")),
        ("wanda", ("none", "lstsq")),
        ("flap", ("none", "bias", "lstsq")),
        ("refit", ("none", "lstsq")),
        ("random", ("none", "lstsq")),
    ]
    for budget in HEAD_BUDGETS:
        for name, compensations in plans:
            for comp, seed in _settings(name, compensations):
                start = time.perf_counter()
                try:
                    result = prune_attention_heads(
                        model, budget, method=name, calibration=calibration, compensate=comp,
                        generator=torch.Generator().manual_seed(seed),
                    )  # fmt: skip
                    seconds = time.perf_counter() - start
                    widths = sorted({int(k.numel()) for k in result.keeps})
                    acc = evaluate(result.model, test)["accuracy"]
                    row = Row("heads", budget, name, comp, acc, count_params(result.model),
                              count_macs(result.model, x1), seconds,
                              "/".join(map(str, widths)), "", seed)  # fmt: skip
                except Exception as err:  # recorded, not dropped
                    row = _failed("heads", budget, name, comp, seed, start, err, log)
                rows.append(row)
                _print(row, log)
    return rows


def _failed(
    part: str, budget: float, name: str, comp: str, seed: int, start: float, err: Exception,
    log: Any,
) -> Row:  # fmt: skip
    """The row of a configuration that raised: its error's first line, the traceback in the log."""
    seconds = time.perf_counter() - start
    message = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    print(traceback.format_exc(), file=log, flush=True)
    return Row(part, budget, name, comp, None, None, None, seconds, "", message, seed)


def _print(row: Row, log: Any) -> None:
    acc = "failed" if row.accuracy is None else f"{100 * row.accuracy:.2f}%"
    line = (
        f"[{row.part} {row.budget:.0%}] {row.method} (seed {row.seed}) + {row.compensate}: {acc} "
        f"({row.seconds:.1f}s) {row.note}"
    )
    print(line, flush=True)
    print(line, file=log, flush=True)


def latencies(model: nn.Module, calibration: torch.Tensor, batch: torch.Tensor) -> dict[str, float]:
    """Median ms of a 64-image forward per architecture over alternating rounds, and the
    median of the per-round speed-ups over dense (magnitude picks the units: which units are
    kept does not change the time)."""
    out: dict[str, float] = {}
    models: dict[str, nn.Module] = {"dense": model}
    for budget in FFN_BUDGETS:
        target, _ = _ffn_target(model, budget)
        models[f"ffn {budget:.0%}"] = coreprune.compress(
            model, target=target, method="magnitude", compensate="none", progress=False
        ).model
    for budget in HEAD_BUDGETS:
        models[f"heads {budget:.0%}"] = prune_attention_heads(model, budget).model
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(LATENCY_ROUNDS):  # alternating rounds: the CPU is shared
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(measure_latency(models[name], batch, warmup=2, repeats=5).median_ms)
    for name in names:
        out[name] = statistics.median(times[name])
        ratios = [d / t for d, t in zip(times["dense"], times[name], strict=True)]
        out[f"{name} speed-up"] = statistics.median(ratios)
    return out


def write(rows: list[Row], lat: dict[str, float], dense: dict[str, Any], header: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*Row.__dataclass_fields__])
        for r in rows:
            writer.writerow([getattr(r, f) for f in Row.__dataclass_fields__])
    lines = [header, ""]
    lines.append(
        f"Dense: {100 * dense['accuracy']:.2f}% test accuracy, {dense['params']:,} params, "
        f"{dense['macs']:,} MACs per image, {lat['dense']:.1f} ms per 64-image batch."
    )
    for part, budgets, unit in (
        ("ffn", FFN_BUDGETS, "FFN neurons"),
        ("heads", HEAD_BUDGETS, "heads"),
    ):
        lines += ["", f"### {unit} removed (test accuracy %, right after pruning)", ""]
        lines.append("| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        keys = list(dict.fromkeys((r.method, r.compensate) for r in rows if r.part == part))
        for method, comp in keys:
            cells = []
            for b in budgets:
                hit = [
                    r
                    for r in rows
                    if (r.part, r.method, r.compensate, r.budget) == (part, method, comp, b)
                ]
                accs = [100 * r.accuracy for r in hit if r.accuracy is not None]
                if not hit:
                    cells.append("—")
                elif len(accs) < len(hit):
                    cells.append("failed")
                elif len(accs) > 1:
                    cells.append(f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}")
                else:
                    cells.append(f"{accs[0]:.2f}")
            label = f"{method} ({len(SEEDS)} seeds)" if method == "random" else method
            lines.append(f"| {label} + {comp} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| budget | params | MACs / image | latency (64 images), speed-up | compress time (s), min-max |",
            "|---|---|---|---|---|",
        ]
        for b in budgets:
            done = [r for r in rows if r.part == part and r.budget == b and r.params is not None]
            if not done:
                continue
            secs = [r.seconds for r in rows if r.part == part and r.budget == b]
            key = f"{part} {b:.0%}"
            lines.append(
                f"| {b:.0%} | {done[0].params:,} ({1 - done[0].params / dense['params']:.1%} removed) "
                f"| {done[0].macs:,} ({1 - done[0].macs / dense['macs']:.1%} removed) "
                f"| {lat.get(key, float('nan')):.1f} ms "
                f"({lat.get(key + ' speed-up', float('nan')):.2f}x faster) "
                f"| {min(secs):.1f}-{max(secs):.1f} |"
            )
    failures = [r for r in rows if r.accuracy is None or r.note]
    if failures:
        lines += ["", "Notes and failures:", ""]
        lines += [
            f"- {r.part} {r.budget:.0%} {r.method} + {r.compensate}: {r.note}" for r in failures
        ]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--parts", nargs="+", default=["ffn", "heads"], choices=["ffn", "heads"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(
        ["python", "benchmarks/bench_transformer.py", *(sys.argv[1:] if argv is None else argv)]
    )
    header_machine = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    log = (OUT / "log.txt").open("w")
    model = load_pretrained("vit_small")
    loaders = make_loaders(
        "fashion_mnist", batch_size=256, augment=False, eval_batch_size=500, limit=None
    )
    train = loaders.train.dataset
    calibration = torch.stack([train[i][0] for i in range(args.calibration)])
    test = loaders.test
    if args.test_limit is not None:
        images, labels = map(torch.cat, zip(*loaders.test, strict=False))
        subset = torch.utils.data.TensorDataset(
            images[: args.test_limit], labels[: args.test_limit]
        )
        test = torch.utils.data.DataLoader(subset, batch_size=500)
    x1 = calibration[:1]
    dense = {
        "accuracy": evaluate(model, test)["accuracy"],
        "params": count_params(model),
        "macs": count_macs(model, x1),
    }
    print(f"dense {dense}", flush=True)
    rows: list[Row] = []
    if "ffn" in args.parts:
        rows += run_ffn(model, calibration, test, x1, log)
    if "heads" in args.parts:
        rows += run_heads(model, calibration, test, x1, log)
    lat = latencies(model, calibration, calibration[:64].clone())
    header = (
        f"# Width pruning of the shipped ViT (vit_small), no fine-tuning\n\n"
        f"`{command}` on {header_machine}, {torch.get_num_threads()} torch thread(s); "
        f"{args.calibration} calibration images, "
        f"{'all 10,000' if args.test_limit is None else f'the first {args.test_limit}'} test images."
    )
    write(rows, lat, dense, header)
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
