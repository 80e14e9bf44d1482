"""Measured CPU latency against the MAC reduction of pruned models (channel counts rounded to 8).

Run as a script (``python benchmarks/bench_latency.py``) to write
``benchmarks/results/latency.md`` and ``.csv``; ``--help`` lists the options.

A MAC count is only a promise of speed: what a CPU delivers depends on whether the kernels stay
efficient at the pruned widths. For CIFAR ResNet-20 and ResNet-56 (3x32x32 inputs) and a small
MobileNetV2 written here in plain PyTorch (inverted residual blocks, width 0.5, 3x32x32 inputs),
each model is compressed with ``metric="macs"``, ``round_to=8`` and the magnitude scorer (which
units are kept does not change the latency, only how many) to remove 50% and 75% of its MACs.
``groups=True`` (the default: residual streams and depthwise blocks are pruned as coupled
groups) is run for every model; ``groups=False`` (single pairs only) also for the ResNets, to
show what pruning the residual streams buys. A target a setting cannot reach is reported as such.

Latency is `measure_latency` (eval mode, inference mode) at batch sizes 1 and 32 with one torch
thread. The machine is shared, so the dense model and every pruned variant of it are measured in
several alternating rounds (the order rotates each round) and each model's figure is the median
of its per-round medians, its speed-up the median of the per-round paired quotients; the load
average is recorded at start and end.

A second table times each 3x3 conv shape ResNet-20 runs, dense and pruned at the first target,
on its own: a MAC costs different time in different layers (few channels, large maps and
strides run far below the peak rate), which is why the latency speed-up departs from the MAC
speed-up.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import coreprune
from coreprune.harness.evaluation.machine import cpu_name
from coreprune.harness.evaluation.metrics import count_macs, measure_latency
from coreprune.harness.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.8


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor` (never below 90% of `value`), as
    MobileNetV2 does, so the dense model's widths are already kernel-friendly."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """1x1 expand conv-BN-ReLU6, 3x3 depthwise conv-BN-ReLU6, 1x1 project conv-BN; identity
    residual when the input and output shapes match."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs: the ImageNet layout with a stride-1 stem and the first
    stride-2 stage made stride 1 (as the usual CIFAR variants do), widths times `width`."""

    # expansion t, output channels c, repeats n, first stride s
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 0.5, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU6(inplace=True),
        ]
        for t, c, n, s in self.SETTINGS:
            out = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers += [
            nn.Conv2d(channels, last, 1, bias=False),
            nn.BatchNorm2d(last),
            nn.ReLU6(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class Variant:
    """One model to time: the dense model or one pruned setting of it."""

    label: str
    target: float | None
    groups: bool | None
    model: nn.Module | None  # None: the target cannot be reached (reason in `note`)
    macs: int
    note: str = ""


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": lambda: build_model("resnet20"),
    "resnet56": lambda: build_model("resnet56"),
    "mobilenetv2-w0.5": lambda: MobileNetV2(width=0.5),
}


def variants(name: str, dense: nn.Module, targets: list[float]) -> list[Variant]:
    """The dense model and every pruned setting of it (groups=True; also False for ResNets)."""
    x = torch.randn(1, 3, 32, 32)
    out = [Variant("dense", None, None, dense, count_macs(dense, x))]
    group_options = [True, False] if name.startswith("resnet") else [True]
    for groups in group_options:
        for target in targets:
            label = f"t={target:g} groups={groups}"
            try:
                result = coreprune.compress(
                    dense,
                    target=target,
                    metric="macs",
                    round_to=8,
                    example_input=x,
                    method="magnitude",
                    progress=False,
                    groups=groups,
                )
            except ValueError as error:
                found = re.search(r"at most ([0-9.]+) can be removed", str(error))
                note = f"at most {found.group(1)} removable" if found else str(error)
                out.append(Variant(label, target, groups, None, 0, note))
                continue
            model = result.model
            out.append(Variant(label, target, groups, model, count_macs(model, x)))
    return out


def time_rounds(
    models: list[nn.Module], x: torch.Tensor, rounds: int, warmup: int, repeats: int
) -> list[list[float]]:
    """Per-round median latency (ms) of each model; the order rotates every round so no model
    is always measured first or last while the machine's load drifts."""
    medians: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    for r in range(rounds):
        shift = r % len(order)
        rotated = order[shift:] + order[:shift]
        if r % 2:
            rotated.reverse()
        for i in rotated:
            stats = measure_latency(models[i], x, warmup=warmup, repeats=repeats)
            medians[i].append(stats.median_ms)
    return medians


def _shapes_of(model: nn.Module) -> set[tuple[int, int, int, int]]:
    """(in, out, stride, input size) of every dense 3x3 conv `model` runs on a 32x32 input."""
    seen: set[tuple[int, int, int, int]] = set()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        assert isinstance(module, nn.Conv2d)
        seen.add((module.in_channels, module.out_channels, module.stride[0], inputs[0].shape[-1]))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1
    ]
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    return seen


def conv_shapes(models: dict[str, nn.Module]) -> dict[tuple[int, int, int, int], list[str]]:
    """Every 3x3 conv shape the models run, with the labels of the models that use it."""
    shapes: dict[tuple[int, int, int, int], list[str]] = {}
    for label, model in models.items():
        for shape in _shapes_of(model):
            shapes.setdefault(shape, []).append(label)
    return dict(sorted(shapes.items(), key=lambda kv: (-kv[0][3], kv[0][0], kv[0][1])))


def conv_throughput(
    shapes: list[tuple[int, int, int, int]], batch: int, rounds: int, repeats: int
) -> list[tuple[float, float]]:
    """(ms, GMAC/s) of one 3x3 conv of each shape: the fastest of `rounds` alternating round
    medians, since a single layer's time on a shared machine is only ever inflated by others."""
    convs = [nn.Conv2d(i, o, 3, s, 1, bias=False).eval() for i, o, s, _ in shapes]
    inputs = [torch.randn(batch, i, hw, hw) for i, _, _, hw in shapes]
    best = [float("inf")] * len(shapes)
    for r in range(rounds):
        order = range(len(shapes)) if r % 2 == 0 else reversed(range(len(shapes)))
        for k in order:
            stats = measure_latency(convs[k], inputs[k], warmup=2, repeats=repeats)
            best[k] = min(best[k], stats.median_ms)
    out = []
    for (i, o, s, hw), ms in zip(shapes, best, strict=True):
        macs = batch * i * o * 9 * (hw // s) ** 2
        out.append((ms, macs / ms / 1e6))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=41, help="alternating rounds per setting")
    parser.add_argument("--repeats-1", type=int, default=15, help="timed runs per round, batch 1")
    parser.add_argument("--repeats-n", type=int, default=4, help="timed runs per round, batch>1")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--conv-rounds", type=int, default=25, help="rounds of the per-conv table (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latency")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0])] + (sys.argv[1:] if argv is None else argv)
    )
    load_start = os.getloadavg()
    started = time.time()
    rows: list[dict[str, object]] = []
    conv_models: dict[str, nn.Module] = {}
    for name in args.models:
        dense = MODELS[name]().eval()
        vs = variants(name, dense, args.targets)
        if name == "resnet20":
            conv_models = {
                v.label: v.model
                for v in vs
                if v.model is not None and (v.target is None or v.target == args.targets[0])
            }
        timed = [v for v in vs if v.model is not None]
        for batch in args.batches:
            x = torch.randn(batch, 3, 32, 32)
            repeats = args.repeats_1 if batch == 1 else args.repeats_n
            medians = time_rounds(
                [v.model for v in timed if v.model is not None],
                x,
                args.rounds,
                args.warmup,
                repeats,
            )
            dense_ms = statistics.median(medians[0])
            for v in vs[1:]:
                row: dict[str, object] = {
                    "model": name,
                    "batch": batch,
                    "target": v.target,
                    "groups": v.groups,
                    "macs_dense": vs[0].macs,
                }
                if v.model is None:
                    row.update(note=v.note)
                    rows.append(row)
                    continue
                ms = medians[timed.index(v)]
                pruned_ms = statistics.median(ms)
                mac_speedup = vs[0].macs / v.macs
                # paired per round: dense and pruned timed seconds apart, so a slow drift in
                # the machine's load cancels in each round's quotient
                lat_speedup = statistics.median(
                    [d / p for d, p in zip(medians[0], ms, strict=True)]
                )
                best_speedup = min(medians[0]) / min(ms)
                row.update(
                    macs_pruned=v.macs,
                    macs_removed=1 - v.macs / vs[0].macs,
                    mac_speedup=mac_speedup,
                    dense_ms=dense_ms,
                    dense_ms_min=min(medians[0]),
                    dense_ms_max=max(medians[0]),
                    pruned_ms=pruned_ms,
                    pruned_ms_min=min(ms),
                    pruned_ms_max=max(ms),
                    latency_speedup=lat_speedup,
                    ratio=lat_speedup / mac_speedup,
                    latency_speedup_best=best_speedup,
                    ratio_best=best_speedup / mac_speedup,
                    note="",
                )
                rows.append(row)
                print(
                    f"{name} b={batch} {v.label}: MACs x{mac_speedup:.2f}, "
                    f"latency x{lat_speedup:.2f} ({dense_ms:.2f} -> {pruned_ms:.2f} ms), "
                    f"ratio {lat_speedup / mac_speedup:.2f}",
                    flush=True,
                )
    conv_lines: list[str] = []
    if "resnet20" in args.models and args.conv_rounds > 0:
        conv_lines = conv_table(conv_models, args)
    load_end = os.getloadavg()
    write(args, rows, command, load_start, load_end, time.time() - started, conv_lines)


def conv_table(models: dict[str, nn.Module], args: argparse.Namespace) -> list[str]:
    """Markdown table: throughput of every 3x3 conv shape of ResNet-20, dense and pruned."""
    shapes = conv_shapes(models)
    keys = list(shapes)
    per_batch = {
        b: conv_throughput(keys, b, args.conv_rounds, args.repeats_1 if b == 1 else args.repeats_n)
        for b in args.batches
    }
    head = "| in -> out | stride | input size | used by | " + " | ".join(
        f"batch {b} ms | batch {b} GMAC/s" for b in args.batches
    )
    lines = [
        "",
        "## Throughput of ResNet-20's 3x3 convs at the dense and pruned widths",
        "",
        f"Each 3x3 conv shape (no bias) that ResNet-20 runs, dense and pruned at the first "
        f"target; fastest of {args.conv_rounds} alternating round medians. A MAC costs very "
        "different time in different layers, so which layers lose the MACs decides the "
        "latency speed-up.",
        "",
        head + " |",
        "|---|---|---|---|" + "---|---|" * len(args.batches),
    ]
    for k, (i, o, s, hw) in enumerate(keys):
        cells = " | ".join(
            f"{per_batch[b][k][0]:.3f} | {per_batch[b][k][1]:.1f}" for b in args.batches
        )
        lines.append(f"| {i} -> {o} | {s} | {hw}x{hw} | {', '.join(shapes[keys[k]])} | {cells} |")
    return lines


FIELDS = [
    "model", "batch", "target", "groups", "macs_dense", "macs_pruned", "macs_removed",
    "mac_speedup", "dense_ms", "dense_ms_min", "dense_ms_max", "pruned_ms", "pruned_ms_min",
    "pruned_ms_max", "latency_speedup", "ratio", "latency_speedup_best", "ratio_best", "note",
]  # fmt: skip


def write(
    args: argparse.Namespace,
    rows: list[dict[str, object]],
    command: str,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    seconds: float,
    conv_lines: list[str],
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in FIELDS})
    measured = [r for r in rows if r.get("note") == ""]
    spread = max(
        (float(r[f"{k}_ms_max"]) / float(r[f"{k}_ms_min"]))  # type: ignore[arg-type]
        for r in measured
        for k in ("dense", "pruned")
    )
    met = [r for r in measured if float(r["ratio"]) >= TARGET_RATIO]  # type: ignore[arg-type]
    loads = " / ".join(f"{v:.2f}" for v in load_start)
    loade = " / ".join(f"{v:.2f}" for v in load_end)
    lines = [
        "# Measured CPU latency vs MAC reduction (channel counts rounded to 8)",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores (shared), "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"process niceness {os.nice(0)}",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"run time {seconds / 60:.1f} min",
        f"- Load average (1/5/15 min): {loads} at start, {loade} at end",
        f"- Rounds: {args.rounds} alternating rounds per model and batch size (order rotated "
        f"each round), {args.warmup} warm-up + {args.repeats_1} (batch 1) or {args.repeats_n} "
        f"(batch > 1) timed runs per round; each latency is the median of the round medians, "
        "with the lowest and highest round median in the CSV",
        '- Compression: `coreprune.compress(model, target=t, metric="macs", round_to=8, '
        'example_input=x, method="magnitude")`, x of shape 1x3x32x32; untrained weights '
        "(the scorer does not change the widths' latency, only which units are kept)",
        "- Models: CIFAR ResNet-20 and ResNet-56 (`build_model`), MobileNetV2 width 0.5 "
        "(defined in the benchmark: inverted residual blocks, 32x32 input)",
        "",
        "**These figures are noisy.** The 2-core machine was shared with other jobs (a training "
        "run among them) for the whole measurement, as the load average shows; alternating "
        "rounds and medians reduce but do not remove the effect: the slowest round median of "
        f"one model was up to {spread:.1f}x its fastest in this run (CSV, min/max columns), "
        "and in earlier runs of this script a ratio moved by up to about 0.15. The pattern "
        "across settings is more reliable than any single figure.",
        "",
        "MAC speed-up = dense MACs / pruned MACs. Dense ms and pruned ms are the medians of the "
        "round medians; the latency speed-up is the median over rounds of the paired quotient "
        "dense / pruned of the same round; ratio = latency speed-up / MAC speed-up (target >= "
        f"{TARGET_RATIO}). Ratio (best rounds) uses the fastest round of each model instead "
        "(fastest dense / fastest pruned), the estimate least touched by other jobs.",
        "",
        "| model | batch | target | groups | MACs dense | MACs pruned | MAC speed-up | "
        "dense ms | pruned ms | latency speed-up | ratio | >= 0.8 | ratio (best rounds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['batch']} | {r['target']:g} | {r['groups']} | "
        if r.get("note"):
            lines.append(head + f"{r['macs_dense']:,} | unreachable ({r['note']}) | | | | | | | |")
            continue
        lines.append(
            head + f"{r['macs_dense']:,} | {r['macs_pruned']:,} | {r['mac_speedup']:.2f}x | "
            f"{r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | {r['latency_speedup']:.2f}x | "
            f"{r['ratio']:.2f} | {'yes' if float(r['ratio']) >= TARGET_RATIO else 'no'} | "  # type: ignore[arg-type]
            f"{r['ratio_best']:.2f} |"
        )
    lines += [
        "",
        f"**{len(met)} of {len(measured)} measured settings meet the ratio >= {TARGET_RATIO} "
        "target.**",
        *conv_lines,
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else value


if __name__ == "__main__":
    main()
