"""Residual-stream pruning vs inner channels only, on the pretrained ResNet-20 (Fashion-MNIST).

Run as a script (``python benchmarks/bench_groups.py``) to write
``benchmarks/results/groups.md`` and ``.csv``; ``--help`` lists the options.

For each target (fraction of params removed) the pretrained ResNet-20 is compressed twice with
the coreset (calibration: the first ``--calibration`` training images, least-squares rewiring):
``groups=True`` (the residual streams are pruned as coupled channel groups) and
``groups=False`` (only each block's inner channels, the single pairs). Both are then fine-tuned
the same way (``--steps`` SGD steps, batch 128, lr 0.01 cosine to 0, momentum 0.9, weight decay
5e-4, no augmentation, seed 0) and evaluated on the full test set. A target the inner channels
alone cannot reach is reported as such, with the most they can remove.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from coreprune.compress import compress
from coreprune.harness.data import make_loaders
from coreprune.harness.evaluation.machine import cpu_name
from coreprune.harness.pretrained import load_pretrained

RESULTS = Path(__file__).resolve().parent / "results"


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
    return right / total


def fine_tune(model: nn.Module, loader: DataLoader, steps: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * done / steps))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    model.eval()


def run(targets: list[float], steps: int, calibration: int) -> list[dict[str, Any]]:
    loaders = make_loaders("fashion_mnist", batch_size=128, augment=False, seed=0)
    dense = load_pretrained("resnet20")
    calib = torch.cat([x for x, _ in loaders.train])[:calibration]
    dense_acc = accuracy(dense, loaders.test)
    rows: list[dict[str, Any]] = []
    for target in targets:
        for groups in (True, False):
            label = "stream + inner (groups=True)" if groups else "inner only (groups=False)"
            start = time.perf_counter()
            try:
                result = compress(dense, target=target, calibration=calib, groups=groups,
                                  progress=False)  # fmt: skip
            except ValueError as err:
                rows.append({"target": target, "variant": label, "status": str(err)[:160]})
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - start
            model = result.model
            before = accuracy(model, loaders.test)
            start = time.perf_counter()
            fine_tune(model, loaders.train, steps)
            tune_s = time.perf_counter() - start
            rows.append({
                "target": target, "variant": label, "status": "ok",
                "params_removed": result.report.params_removed,
                "params_after": result.report.params_after,
                "dense_acc": dense_acc, "acc_compressed": before,
                "acc_finetuned": accuracy(model, loaders.test),
                "compress_s": seconds, "finetune_s": tune_s,
                "stream_widths": [r.units_after for r in result.report if "coupled" in r.note],
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def write(rows: list[dict[str, Any]], info: dict[str, Any], command: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with (out / "groups.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Residual-stream pruning vs inner channels only (pretrained ResNet-20, Fashion-MNIST)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs), torch "
        f"{info['torch']}, {info['threads']} thread(s), {info['date']}.",
        "",
        __doc__.split("\n\n", 2)[2].strip() if __doc__ else "",
        "",
        "| target | variant | params removed | params | test acc dense | after compress | "
        "after fine-tune | stream widths | compress s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['target']:g} | {r['variant']} | not reachable: {r['status']} |")
            continue
        lines.append(
            f"| {r['target']:g} | {r['variant']} | {100 * r['params_removed']:.1f}% | "
            f"{r['params_after']:,} | {100 * r['dense_acc']:.2f}% | "
            f"{100 * r['acc_compressed']:.2f}% | {100 * r['acc_finetuned']:.2f}% | "
            f"{r['stream_widths'] or '—'} | {r['compress_s']:.1f} | {r['finetune_s']:.0f} |"
        )
    (out / "groups.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.75, 0.9])
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning SGD steps")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "threads": args.threads, "date": dt.datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    rows = run(args.targets, args.steps, args.calibration)
    command = (
        f"python benchmarks/bench_groups.py --targets {' '.join(map(str, args.targets))} "
        f"--steps {args.steps} --calibration {args.calibration} --threads {args.threads}"
    )
    write(rows, info, command, args.out)
    print((args.out / "groups.md").read_text())


if __name__ == "__main__":
    main()
