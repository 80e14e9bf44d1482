"""Benchmark whole-model compression: wall time, and real CPU latency against the MAC reduction.

Run as a script (``python benchmarks/bench_compress.py``) to write
``benchmarks/results/compress.md`` and ``.csv``; ``--help`` lists the options.

Models: CIFAR-style ResNet-56 and VGG-16 at full width, 3 input channels, 32x32 inputs,
freshly initialised (weights do not change the cost of data-free compression or of a forward).
Compression is data-free, select mode, uniform allocation, params target, default
``sensitivity="auto"``. Targets: data-free compression of ResNet-56 in
under 10 s and VGG-16 in under 30 s at 50% of params removed; measured latency speed-up at least
0.8 x the MAC speed-up (both as dense / compressed).
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import datetime as dt
import os
import platform
import pstats
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from coreprune.compress import compress
from coreprune.harness.evaluation.machine import cpu_name
from coreprune.harness.evaluation.metrics import count_macs, count_params, measure_latency
from coreprune.harness.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet56", "vgg16")
TIME_TARGET_S = {"resnet56": 10.0, "vgg16": 30.0}
LATENCY_RATIO = 0.8


def machine(threads: int) -> dict:
    """CPU model, cores, torch version, threads, date and load (the CPU may be shared)."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg()[0],
    }


def compression_profile(name: str, target: float, top: int = 6) -> list[dict]:
    """Where one compression spends its time: the functions with the most own time (cProfile)."""
    model = build_model(name, in_channels=3)
    profiler = cProfile.Profile()
    profiler.enable()
    compress(model, target=target, progress=False)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (file, line, func), (_, calls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({func})" if line else func
        rows.append(
            {"model": name, "function": where, "calls": calls, "own_s": own, "cum_s": total}
        )
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:top]


def op_breakdown(model: torch.nn.Module, batch: int) -> dict[str, float]:
    """Milliseconds of one forward in convolutions vs every other op (torch.profiler, self time)."""
    x = torch.randn(batch, 3, 32, 32)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    conv = other = 0.0
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3
        if "conv" in event.key:
            conv += ms
        else:
            other += ms
    return {"conv_ms": conv, "other_ms": other}


def time_compression(name: str, target: float, repeats: int) -> tuple[list[float], object]:
    """Wall time of `compress` (no MAC counting inside) over `repeats` runs on fresh models."""
    times, result = [], None
    for _ in range(repeats):
        model = build_model(name, in_channels=3)
        start = time.perf_counter()
        result = compress(model, target=target, progress=False)
        times.append(time.perf_counter() - start)
    return times, result


def run(
    targets: tuple[float, ...],
    batches: tuple[int, ...],
    repeats: int,
    time_repeats: int,
    rounds: int,
) -> dict[str, list[dict]]:
    """Rows of four kinds: compression time (target 0.5), its profile, latency (every model x
    target x batch) and the conv / other-op split of one forward at batch 64."""
    torch.manual_seed(0)
    x1 = torch.randn(1, 3, 32, 32)
    count_macs(build_model("resnet20"), x1)  # imports the flop counter's machinery once
    timing, latency, profiles, ops = [], [], [], []
    for name in MODELS:
        times, result = time_compression(name, 0.5, time_repeats)
        bounds = Counter(r.sensitivity for r in result.report)
        timing.append({
            "model": name, "target": 0.5, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "runs": len(times),
            "limit_s": TIME_TARGET_S[name], "pairs": len(result.report),
            "achieved": result.report.params_removed,
            "sensitivity": ", ".join(f"{k} x{v}" for k, v in sorted(bounds.items())),
        })  # fmt: skip
        print(f"{name}: compress median {statistics.median(times):.2f} s", file=sys.stderr)
        profiles += compression_profile(name, 0.5)
        dense = build_model(name, in_channels=3).eval()
        dense_macs = count_macs(dense, x1)
        dense_params = count_params(dense)
        for target in targets:
            small = compress(dense, target=target, progress=False).model.eval()
            macs = count_macs(small, x1)
            if target == max(targets):
                for label, net in (("dense", dense), (f"target {target:g}", small)):
                    ops.append({"model": name, "variant": label, "batch": 64,
                                **op_breakdown(net, 64)})  # fmt: skip
            for batch in batches:
                dense_ms, ms, lat_speedup = _paired_latency(dense, small, batch, repeats, rounds)
                mac_speedup = dense_macs / macs
                latency.append({
                    "model": name, "target": target,
                    "params_removed": 1 - count_params(small) / dense_params,
                    "macs_dense": dense_macs, "macs": macs,
                    "macs_removed": 1 - macs / dense_macs, "mac_speedup": mac_speedup,
                    "batch": batch, "dense_ms": dense_ms, "ms": ms, "rounds": rounds,
                    "latency_speedup": lat_speedup, "ratio": lat_speedup / mac_speedup,
                    "latency_removed": 1 - 1 / lat_speedup,
                    "met": lat_speedup >= LATENCY_RATIO * mac_speedup,
                })  # fmt: skip
                print(
                    f"{name} target {target} batch {batch}: {dense_ms:.2f} -> {ms:.2f} ms,"
                    f" MAC x{mac_speedup:.2f}, latency x{lat_speedup:.2f}",
                    file=sys.stderr,
                )
    return {"compress_time": timing, "profile": profiles, "latency": latency, "ops": ops}


def _paired_latency(
    dense: torch.nn.Module, small: torch.nn.Module, batch: int, repeats: int, rounds: int
) -> tuple[float, float, float]:
    """Dense and compressed medians, measured alternately `rounds` times on the same input.

    Alternating pairs each compressed timing with a dense one taken moments before, so load
    from other jobs hits both; the speed-up is the median of the per-round ratios.
    """
    x = torch.randn(batch, 3, 32, 32)
    runs = repeats if batch == 1 else max(3, repeats // 6)
    warmup = max(2, runs // 5)
    dense_ms, small_ms = [], []
    for _ in range(rounds):
        dense_ms.append(measure_latency(dense, x, warmup=warmup, repeats=runs).median_ms)
        small_ms.append(measure_latency(small, x, warmup=warmup, repeats=runs).median_ms)
    ratios = [d / s for d, s in zip(dense_ms, small_ms, strict=True)]
    return statistics.median(dense_ms), statistics.median(small_ms), statistics.median(ratios)


def write(results: dict[str, list[dict]], info: dict, command: str, out: Path) -> None:
    """compress.csv (every row, column `kind` tells which) and compress.md (tables, verdicts)."""
    out.mkdir(parents=True, exist_ok=True)
    timing, latency = results["compress_time"], results["latency"]
    everything = [{"kind": kind, **row} for kind, rows in results.items() for row in rows]
    with (out / "compress.csv").open("w", newline="") as f:
        fields = list(dict.fromkeys(k for r in everything for k in r))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(everything)
    lines = [
        "# Whole-model compression benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python "
        f"{info['python']}, torch threads {info['threads']}, {info['date']}. 1-min load average "
        f"{info['loadavg_start']:.2f} at start, {info['loadavg_end']:.2f} at end.",
        "",
        "**The machine was shared with other jobs while this ran, so every time below is noisy "
        "(latency ratios especially).** Rerun on a quiet machine with:",
        "",
        f"    {command}",
        "",
        "Models: ResNet-56 and VGG-16, full width, 3 input channels, 32x32, freshly initialised. "
        "Compression: data-free (`calibration=None`), `mode='select'`, uniform allocation, "
        "params target, `sensitivity='auto'`. Data-free, every conv whose units are linearly "
        "independent (n <= patch dim) has sensitivity exactly 1 for every unit its consumer "
        "reads (column `sensitivity`: `independent`); the certificates are then vacuous "
        "(eps = units removed) and select mode removes the lowest-index units. That is the "
        "honest data-free answer for these layers, not a bug (docs/theory.md §1).",
        "",
        "## Compression wall time (target 50% of params removed)",
        "",
        "| model | pairs | params removed | median s | min s | max s | runs | limit s | met | "
        "sensitivity bound per layer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timing:
        met = "yes" if r["median_s"] < r["limit_s"] else "NO"
        lines.append(
            f"| {r['model']} | {r['pairs']} | {100 * r['achieved']:.2f}% | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f} | {r['max_s']:.2f} | {r['runs']} | {r['limit_s']:g} | {met} | "
            f"{r['sensitivity']} |"
        )
    lines += [
        "",
        "## CPU latency vs MAC reduction",
        "",
        "Latency: `measure_latency` median (eval, inference mode; batch 1: `--repeats` timed "
        "runs, batch 64: a sixth of them), dense and compressed measured alternately in "
        "`--rounds` rounds; ms columns are medians over rounds, the latency speed-up is the "
        "median of the per-round dense / compressed ratios. Speed-ups are dense / "
        f"compressed. Target: latency speed-up >= {LATENCY_RATIO} x MAC speed-up (column "
        "`ratio` = latency speed-up / MAC speed-up >= 0.8). `removed` columns give the same as "
        "fractions.",
        "",
        "| model | target | params removed | MACs removed | batch | dense ms | compressed ms "
        "| MAC speed-up | latency speed-up | ratio | latency removed | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latency:
        lines.append(
            f"| {r['model']} | {r['target']:g} | {100 * r['params_removed']:.1f}% | "
            f"{100 * r['macs_removed']:.1f}% | {r['batch']} | {r['dense_ms']:.2f} | "
            f"{r['ms']:.2f} | {r['mac_speedup']:.2f}x | {r['latency_speedup']:.2f}x | "
            f"{r['ratio']:.2f} | {100 * r['latency_removed']:.1f}% | "
            f"{'yes' if r['met'] else 'NO'} |"
        )
    met = sum(r["met"] for r in latency)
    lines += [
        "",
        f"Latency target met in {met} of {len(latency)} rows.",
        "",
        "## Where the forward time goes (batch 64, torch.profiler self time, one run)",
        "",
        "MACs count only convolutions and matmuls; batch norm, ReLU, pooling and the residual "
        "adds are not in them, and on the residual path (ResNet) their width is not pruned.",
        "",
        "| model | variant | conv ms | other ops ms | other share |",
        "|---|---|---|---|---|",
    ]
    for r in results["ops"]:
        share = r["other_ms"] / (r["conv_ms"] + r["other_ms"])
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['conv_ms']:.1f} | {r['other_ms']:.1f} | "
            f"{100 * share:.0f}% |"
        )
    lines += [
        "",
        "## Where compression time goes (cProfile, one run at target 0.5, own time)",
        "",
        "| model | function | calls | own s | cumulative s |",
        "|---|---|---|---|---|",
    ]
    for r in results["profile"]:
        lines.append(
            f"| {r['model']} | `{r['function']}` | {r['calls']} | {r['own_s']:.3f} | "
            f"{r['cum_s']:.3f} |"
        )
    (out / "compress.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def resnet50_like() -> torch.nn.Module:
    """ResNet-50's layout in plain PyTorch (the replica the group tests use), 1000 classes."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.compress.patterns import ResNet50Like

    torch.manual_seed(0)
    return ResNet50Like()


def run_groups(repeats: int) -> list[dict]:
    """Data-free coreset at target 0.5 with coupled channel groups (residual streams pruned)
    and with single pairs only, on a ResNet-50-like model and the library's ResNet-20; and
    the time to return when nothing is removed (eps=1e-12)."""
    rows = []
    builders = {"resnet50-like (224x224 layout)": resnet50_like,
                "resnet20": lambda: build_model("resnet20", in_channels=3)}  # fmt: skip
    for label, build in builders.items():
        model = build()
        cases: list[tuple[str, dict[str, Any]]] = [
                 ("target 0.5, groups=True", {"target": 0.5}),
                 ("target 0.5, groups=False", {"target": 0.5, "groups": False}),
                 ("eps 1e-12 (nothing removed)", {"eps": 1e-12})]  # fmt: skip
        for case, kwargs in cases:
            times, result = [], None
            for _ in range(repeats):
                start = time.perf_counter()
                result = compress(model, progress=False, **kwargs)
                times.append(time.perf_counter() - start)
            assert result is not None
            report = result.report
            coupled = sum("coupled group" in r.note for r in report)
            rows.append({
                "model": label, "case": case, "median_s": statistics.median(times),
                "min_s": min(times), "max_s": max(times), "runs": repeats,
                "params_removed": report.params_removed, "rows": len(report),
                "coupled": coupled,
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def write_groups(rows: list[dict], info: dict, command: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "compress_groups.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Coupled channel groups: compression wall time",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs), torch "
        f"{info['torch']}, Python {info['python']}, {info['threads']} thread(s), {info['date']}, "
        f"load average {info['loadavg_start']:.2f} at start, {info['loadavg_end']:.2f} at end.",
        "",
        "Data-free coreset (`calibration=None`), select mode, uniform allocation, params target, "
        "default sensitivity and compensation (merge for single pairs; coupled groups are left "
        "sliced). Freshly initialised weights. Target: ResNet-50-like at 0.5 in under 30 s.",
        "",
        "| model | case | rows | coupled rows | params removed | median s | min s | max s | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['case']} | {r['rows']} | {r['coupled']} | "
            f"{100 * r['params_removed']:.2f}% | {r['median_s']:.2f} | {r['min_s']:.2f} | "
            f"{r['max_s']:.2f} | {r['runs']} |"
        )
    (out / "compress_groups.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards at batch 1")
    parser.add_argument("--time-repeats", type=int, default=3, help="compressions timed")
    parser.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--groups", action="store_true", help="only the coupled-group timings (compress_groups.md)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    if args.groups:
        rows = run_groups(args.time_repeats)
        info["loadavg_end"] = os.getloadavg()[0]
        command = (
            f"python benchmarks/bench_compress.py --groups --threads {args.threads} "
            f"--time-repeats {args.time_repeats}"
        )
        write_groups(rows, info, command, args.out)
        print((args.out / "compress_groups.md").read_text())
        return
    results = run(
        tuple(args.targets), tuple(args.batches), args.repeats, args.time_repeats, args.rounds
    )
    info["loadavg_end"] = os.getloadavg()[0]
    command = (
        f"python benchmarks/bench_compress.py --threads {args.threads} --repeats {args.repeats} "
        f"--time-repeats {args.time_repeats} --rounds {args.rounds} --targets {' '.join(map(str, args.targets))} "
        f"--batches {' '.join(map(str, args.batches))}"
    )
    write(results, info, command, args.out)
    print((args.out / "compress.md").read_text())


if __name__ == "__main__":
    main()
