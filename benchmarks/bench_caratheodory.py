"""Benchmark coreprune.geometry.caratheodory against the plain reduction and the pure-LP route.

Run as a script (``python benchmarks/bench_caratheodory.py``) to write
``benchmarks/results/caratheodory.md`` and ``.csv``; other benchmarks can call :func:`run`.

Methods compared, all on the same seeded Gaussian points with uniform(0, 1) weights:
- ``boosted``: the library function (booster + elimination + polish + verification).
- ``plain``: the textbook reduction without the booster: take d+2 support points, get an
  affine dependency from an SVD, shift weight until one point drops, repeat n-d-1 times.
- ``lp``: a basic feasible solution of {lam >= 0, sum lam_i p_i = mu, sum lam_i = 1} from
  scipy's HiGHS dual simplex, used as is (no polish), to show what the LP route gives.
The target is n=4000, d=64 in under 0.5 s, exact to 1e-9 relative.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.optimize import linprog

from coreprune.geometry.caratheodory import caratheodory, caratheodory_error

SIZES: tuple[tuple[int, int], ...] = (
    (500, 16),
    (500, 64),
    (4000, 16),
    (4000, 64),
    (20000, 16),
    (20000, 64),
)
TARGET = {"n": 4000, "d": 64, "seconds": 0.5, "rel_err": 1e-9}
RESULTS = Path(__file__).resolve().parent / "results"

Solver = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def plain_caratheodory(points: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Textbook Carathéodory: one SVD of d+2 points per dropped point (the baseline)."""
    x = points.double().numpy()
    w = weights.double().numpy()
    d = x.shape[1]
    total = float(w.sum())
    lam = w / total
    order = np.flatnonzero(lam > 0)
    basis = list(order[: d + 1])
    for j in order[d + 1 :]:
        cand = np.array([*basis, j])
        a = np.vstack([x[cand].T, np.ones(cand.size)])
        v = np.linalg.svd(a)[2][-1]
        if not (v > 0).any():
            v = -v
        pos = v > 0
        ratios = np.full(cand.size, np.inf)
        ratios[pos] = lam[cand[pos]] / v[pos]
        k = int(np.argmin(ratios))
        lam[cand] = np.maximum(lam[cand] - ratios[k] * v, 0.0)
        lam[cand[k]] = 0.0
        basis = [int(c) for c in cand if lam[c] > 0]
    idx = np.sort(np.array(basis, dtype=np.int64))
    return torch.from_numpy(idx), torch.from_numpy(total * lam[idx])


def lp_caratheodory(points: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A vertex of the feasibility LP via HiGHS dual simplex (<= d+1 nonzeros), unpolished."""
    x = points.double().numpy()
    w = weights.double().numpy()
    total = float(w.sum())
    n = x.shape[0]
    a_eq = np.vstack([x.T, np.ones(n)])
    b_eq = np.append((w / total) @ x, 1.0)
    res = linprog(np.zeros(n), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ds")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    idx = np.flatnonzero(res.x > 0)
    return torch.from_numpy(idx), torch.from_numpy(total * res.x[idx])


METHODS: dict[str, Solver] = {
    "boosted": caratheodory,
    "plain": plain_caratheodory,
    "lp": lp_caratheodory,
}


def _time(solver: Solver, points: torch.Tensor, weights: torch.Tensor, repeats: int) -> dict:
    """Median and min wall time over ``repeats`` runs after one warm-up run (none if 1 run)."""
    if repeats > 1:
        solver(points, weights)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx, nw = solver(points, weights)
        times.append(time.perf_counter() - t0)
    mean_err, total_err = caratheodory_error(points, weights, idx, nw)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": repeats,
        "support": int(idx.numel()),
        "mean_rel_err": mean_err,
        "total_rel_err": total_err,
    }


def run(
    sizes: tuple[tuple[int, int], ...] = SIZES,
    methods: tuple[str, ...] = ("boosted", "plain", "lp"),
    repeats: int = 5,
    seed: int = 0,
    slow_limit_s: float = 20.0,
) -> list[dict]:
    """One row per (method, n, d): timings, support size and relative errors.

    A method whose time per run, extrapolated linearly in n from its last row with the same
    d, exceeds ``slow_limit_s`` is timed once only (its ``repeats`` column says so), which
    keeps the plain baseline within minutes.
    """
    last: dict[tuple[str, int], tuple[int, float]] = {}
    rows = []
    for n, d in sizes:
        g = torch.Generator().manual_seed(seed + 1000 * n + d)
        points = torch.randn(n, d, generator=g, dtype=torch.float64)
        weights = torch.rand(n, generator=g, dtype=torch.float64)
        for name in methods:
            row = {"method": name, "n": n, "d": d}
            prev_n, prev_s = last.get((name, d), (n, 0.0))
            reps = 1 if prev_s * n / prev_n > slow_limit_s else repeats
            row.update(_time(METHODS[name], points, weights, reps))
            rows.append(row)
            last[(name, d)] = (n, row["median_s"])
            print(
                f"{name:8s} n={n:6d} d={d:3d} median {row['median_s']:.4f} s "
                f"support {row['support']:3d} err {row['mean_rel_err']:.1e}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def machine() -> dict:
    """CPU model, cores, library versions, date and load (the CPU is shared: report it)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_1min": os.getloadavg()[0],
    }


def write(rows: list[dict], info: dict, out: Path = RESULTS) -> None:
    """Write caratheodory.csv (all rows) and caratheodory.md (tables + target verdict)."""
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with (out / "caratheodory.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    by = {(r["method"], r["n"], r["d"]): r for r in rows}
    target = by.get(("boosted", TARGET["n"], TARGET["d"]))
    lines = [
        "# Carathéodory benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared; 1-min load average "
        f"{info['loadavg_1min']:.2f} at start, {info['loadavg_end']:.2f} at end), "
        f"torch {info['torch']}, numpy {info['numpy']}, scipy {info['scipy']}, "
        f"Python {info['python']}, {info['date']}. BLAS threads (OPENBLAS_NUM_THREADS): "
        f"{info['blas_threads']}.",
        "",
        "Data: Gaussian points, uniform(0, 1) weights, seeded. Times in seconds: median (min) "
        f"of {max(r['repeats'] for r in rows)} runs after a warm-up, except where a cell says "
        "1 run (a slow baseline, timed once). Error: relative mean error "
        "||sum new_w p - sum w p|| / (W max ||p||) (see `caratheodory_error`).",
        "",
        "| n | d | boosted s | plain s | LP (HiGHS) s | speed-up vs plain | vs LP "
        "| support | boosted err | plain err | LP err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, d in sorted({(r["n"], r["d"]) for r in rows}):
        b, p, lp = by.get(("boosted", n, d)), by.get(("plain", n, d)), by.get(("lp", n, d))

        def t(r: dict | None) -> str:
            if r is None:
                return "–"
            if r["repeats"] == 1:
                return f"{r['median_s']:.4f} (1 run)"
            return f"{r['median_s']:.4f} ({r['min_s']:.4f})"

        def e(r: dict | None) -> str:
            return "–" if r is None else f"{r['mean_rel_err']:.1e}"

        def x(r: dict | None, base: dict | None = b) -> str:
            return "–" if r is None or base is None else f"{r['median_s'] / base['median_s']:.1f}x"

        sup = "–" if b is None else str(b["support"])
        lines.append(
            f"| {n} | {d} | {t(b)} | {t(p)} | {t(lp)} | {x(p)} | {x(lp)} | {sup} "
            f"| {e(b)} | {e(p)} | {e(lp)} |"
        )
    lines.append("")
    if target is not None:
        met = (
            target["median_s"] < TARGET["seconds"]
            and max(target["mean_rel_err"], target["total_rel_err"]) <= TARGET["rel_err"]
        )
        lines.append(
            f"**Target n={TARGET['n']}, d={TARGET['d']}: under {TARGET['seconds']} s, exact to "
            f"{TARGET['rel_err']:g} relative: {'MET' if met else 'NOT MET'}** (median "
            f"{target['median_s']:.4f} s, support {target['support']}, relative errors "
            f"{target['mean_rel_err']:.1e} (mean) and {target['total_rel_err']:.1e} (total))."
        )
    if "target_other_threads" in info:
        threads, row = info["target_other_threads"]
        lines += [
            "",
            f"Same target row with BLAS threads = {threads} (fresh process): median "
            f"{row['median_s']:.4f} s (min {row['min_s']:.4f} s), relative error "
            f"{row['mean_rel_err']:.1e}. On this shared 2-core machine OpenBLAS threads fight "
            "other processes for cores; small LAPACK calls (65 x 130) then slow down by up to "
            "100x, which is why the thread setting is stated.",
        ]
    (out / "caratheodory.md").write_text("\n".join(lines) + "\n")


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _target_in_subprocess(threads: str | None) -> dict:
    """Time the target row in a fresh interpreter with another BLAS thread setting."""
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    if threads is not None:
        env.update(dict.fromkeys(_THREAD_VARS, threads))
    out = subprocess.run(
        [sys.executable, __file__, "--target-json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    # no options; --help says what runs and where it writes, without running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    if "--target-json" in sys.argv:
        size = ((TARGET["n"], TARGET["d"]),)
        print(json.dumps(run(sizes=size, methods=("boosted",))[0]))
        return
    info = machine()
    info["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    rows = run()
    other = None if info["blas_threads"] != "default" else "1"
    info["target_other_threads"] = (other or "default", _target_in_subprocess(other))
    info["loadavg_end"] = os.getloadavg()[0]
    write(rows, info)
    print((RESULTS / "caratheodory.md").read_text())


if __name__ == "__main__":
    main()
