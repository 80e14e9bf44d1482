"""Benchmark: our Löwner-ellipsoid solver (``mvee``) against the cvxpy reference.

Run ``python benchmarks/bench_geometry.py`` (``--quick`` for a smoke run). For each point set
both solvers run at tol 1e-3 on the same points; times are medians over repeats (wall clock
and process CPU time, since the machine may be shared). Writes
``benchmarks/results/geometry.md`` and ``geometry.csv`` with the machine description.

Targets: >= 100x faster than cvxpy with log det within 1% at n=300,
d=50; n=1024 symmetric (centred) points in d=512 in under 2 s.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cvxpy
import numpy as np
import torch

from coreprune.geometry.ellipsoid import Ellipsoid
from coreprune.geometry.mvee import mvee
from coreprune.geometry.reference import mvee_reference

_mvee_mod = importlib.import_module("coreprune.geometry.mvee")
RESULTS = Path(__file__).resolve().parent / "results"
TOL = 1e-3


@dataclass
class Row:
    kind: str
    n: int
    d: int
    centered: bool
    rank: int
    iterations: int
    ours_s: float
    ours_cpu_s: float
    ref_s: float | None
    ratio: float | None
    ld_ours: float
    ld_ref: float | None
    ld_diff_pct: float | None
    axis_diff_pct: float | None
    gap_bound: float
    excess_ours: float
    excess_ref: float | None


def point_set(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    """Gaussian, or skewed and degenerate: log-normal coordinates on a (d/2)-dim flat with
    heavy anisotropy and duplicated rows."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, d, dtype=torch.float64, generator=g)
    if kind == "skewed-degenerate":
        r = max(1, d // 2)
        coeff = torch.exp(torch.randn(n - n // 10, r, dtype=torch.float64, generator=g))
        coeff = coeff * torch.logspace(-2, 2, r, dtype=torch.float64)
        frame = torch.randn(r, d, dtype=torch.float64, generator=g)
        x = coeff @ frame + 10.0
        return torch.cat([x, x[: n // 10]])  # 10% duplicates
    raise ValueError(f"unknown kind {kind!r}")


def timed(fn: Callable[[], Ellipsoid], repeats: int) -> tuple[Ellipsoid, float, float]:
    """Median wall and CPU seconds over ``repeats`` calls; returns the last result."""
    walls, cpus = [], []
    out = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    assert out is not None
    return out, statistics.median(walls), statistics.median(cpus)


def count_iterations(x: torch.Tensor, centered: bool) -> int:
    """Frank–Wolfe steps of one solve (wraps the design solver once)."""
    orig = _mvee_mod.d_optimal_design
    seen: list[int] = []

    def wrapped(*args: object) -> tuple[torch.Tensor, int]:
        u, it = orig(*args)  # type: ignore[arg-type]
        seen.append(it)
        return u, it

    _mvee_mod.d_optimal_design = wrapped
    try:
        mvee(x, TOL, centered=centered)
    finally:
        _mvee_mod.d_optimal_design = orig
    return seen[0] if seen else 0


def excess(ell: Ellipsoid, x: torch.Tensor) -> float:
    pts = torch.cat([x, -x]) if ell.centered else x
    return float(ell.mahalanobis(pts).max()) - 1.0


def run_case(
    kind: str, n: int, d: int, centered: bool, repeats: int, ref_repeats: int, with_ref: bool
) -> Row:
    x = point_set(kind, n, d, seed=n * 1000 + d)
    mvee(x, TOL, centered=centered)  # warm-up (first-call allocations, BLAS init)
    ours, t_ours, c_ours = timed(lambda: mvee(x, TOL, centered=centered), repeats)
    iters = count_iterations(x, centered)
    r = ours.rank
    ref = t_ref = ld_ref = ld_pct = axis_pct = ratio = ex_ref = None
    if with_ref:
        ref, t_ref, _ = timed(lambda: mvee_reference(x, centered=centered), ref_repeats)
        ld_ref = ref.log_det()
        ld_pct = 100.0 * (ld_ref - ours.log_det()) / abs(ld_ref)
        axis_pct = 100.0 * (math.exp((ld_ref - ours.log_det()) / (2 * r)) - 1.0)
        ratio = t_ref / t_ours
        ex_ref = excess(ref, x)
    return Row(
        kind,
        n,
        d,
        centered,
        r,
        iters,
        t_ours,
        c_ours,
        t_ref,
        ratio,
        ours.log_det(),
        ld_ref,
        ld_pct,
        axis_pct,
        float(ours.log_det_gap or 0.0),
        excess(ours, x),
        ex_ref,
    )


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cvxpy": f"{cvxpy.__version__}, solver {default_solver()} (cvxpy's default for log_det)",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "load average (1 min) at start": f"{load[0]:.2f}",
    }


def default_solver() -> str:
    """The solver cvxpy picks for a log_det problem like the reference's."""
    p_var = cvxpy.Variable((2, 2), symmetric=True)
    z = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    prob = cvxpy.Problem(
        cvxpy.Maximize(cvxpy.log_det(p_var)), [cvxpy.norm(z @ p_var, 2, axis=1) <= 1]
    )
    prob.solve()
    return str(prob.solver_stats.solver_name)


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def write(rows: list[Row], info: dict[str, str], out_dir: Path, note: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(Row.__dataclass_fields__)
    with (out_dir / "geometry.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for row in rows:
            w.writerow([getattr(row, f) for f in fields])
    lines = [
        "# Löwner ellipsoid (MVEE): `mvee` vs cvxpy `mvee_reference`",
        "",
        "Generated by `python benchmarks/bench_geometry.py`. tol = 1e-3 for ours; cvxpy at its",
        "default accuracy. Times: median wall clock (and CPU time) over repeats, including the",
        "SVD to hull coordinates and, for cvxpy, problem construction. ld = log det A_r",
        "(larger = smaller ellipsoid). ld diff % = (ld_ref - ld_ours)/|ld_ref|; axis diff % =",
        "mean semi-axis of ours over cvxpy's, minus 1 (volume per dimension). gap = certified",
        "bound on ld_opt - ld_ours. excess = max Mahalanobis of the inputs minus 1 (> 0: points",
        "stick out).",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        "## Results",
        "",
        "| set | n | d | centred | r | FW steps | ours s (cpu s) | cvxpy s | speed-up |"
        " ld ours | ld cvxpy | ld diff % | axis diff % | gap | excess ours | excess cvxpy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref_time = fmt(r.ref_s, ".3f") if r.ref_s is not None else "not run (too slow)"
        lines.append(
            f"| {r.kind} | {r.n} | {r.d} | {'yes' if r.centered else 'no'} | {r.rank} | "
            f"{r.iterations} | {r.ours_s:.4f} ({r.ours_cpu_s:.4f}) | {ref_time} | "
            f"{fmt(r.ratio, '.0f')}x | {r.ld_ours:.4f} | {fmt(r.ld_ref, '.4f')} | "
            f"{fmt(r.ld_diff_pct, '.4f')} | {fmt(r.axis_diff_pct, '.4f')} | {r.gap_bound:.4f} | "
            f"{r.excess_ours:.1e} | {fmt(r.excess_ref, '.1e')} |"
        )
    lines += ["", "## Targets", "", note, "", "## Notes", "", *NOTES, ""]
    (out_dir / "geometry.md").write_text("\n".join(lines))


NOTES = [
    "- The machine is a 2-core VM shared with other jobs; the load average is recorded above.",
    "  Our solver runs on one torch thread (see `mvee._one_torch_thread`); cvxpy/SCS uses what",
    "  it likes. Times move with the load by roughly +-20% between runs.",
    "- The skewed-degenerate sets have rank r = d/2 (+1 when centred), so at d=50 they are",
    "  25-dimensional problems: cvxpy's cost falls much faster with r than ours, hence the",
    "  lower ratios there. The 100x target is stated for n=300, d=50 full rank (gaussian).",
    "- cvxpy's default solver for `log_det` here is SCS (first order). Its ellipsoids leave",
    "  points outside by 1e-7 to 1e-4 in Mahalanobis terms (column excess cvxpy), so its log",
    "  det is slightly optimistic. CLARABEL (interior point) is accurate but did not finish",
    "  n=300, d=50 in 15 minutes, so it is not used.",
    "- ld diff % is close to the certified gap in every row: our scaled ellipsoid is within",
    "  r log(K/r) <= (r+1) tol of the optimum and SCS lands near the optimum.",
]


def targets(rows: list[Row]) -> str:
    out = []
    for r in rows:
        if (r.n, r.d) == (300, 50) and r.ratio is not None:
            ok = r.ratio >= 100 and abs(r.ld_diff_pct or 0.0) <= 1.0
            out.append(
                f"- n=300, d=50, {r.kind}, centred={r.centered}: {r.ratio:.0f}x faster, "
                f"ld diff {r.ld_diff_pct:.4f}% -> {'MET' if ok else 'NOT MET'} "
                "(target >= 100x, within 1%)"
            )
        if (r.n, r.d, r.centered) == (1024, 512, True):
            ok = r.ours_s < 2.0
            out.append(
                f"- n=1024, d=512, centred, {r.kind}: {r.ours_s:.2f} s wall "
                f"({r.ours_cpu_s:.2f} s CPU) -> {'MET' if ok else 'NOT MET'} (target < 2 s); "
                "cvxpy not run (an SDP with a 512x512 log det and 1024 cones is far too slow)"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine()
    if args.quick:
        cases = [("gaussian", 40, 5, c, True) for c in (False, True)]
        reps, ref_reps = 1, 1
    else:
        cases = [
            (kind, n, d, c, True)
            for kind in ("gaussian", "skewed-degenerate")
            for (n, d) in ((100, 10), (300, 20), (300, 50))
            for c in (False, True)
        ]
        cases += [("gaussian", 1024, 512, True, False), ("gaussian", 1024, 512, False, False)]
        cases += [("skewed-degenerate", 1024, 512, True, False)]
        reps, ref_reps = args.repeats, args.ref_repeats
    rows = []
    for i, (kind, n, d, c, with_ref) in enumerate(cases, 1):
        row = run_case(kind, n, d, c, reps, ref_reps, with_ref)
        rows.append(row)
        print(
            f"[{i}/{len(cases)}] {kind} n={n} d={d} centred={c}: ours {row.ours_s:.4f}s "
            f"cvxpy {fmt(row.ref_s, '.3f')}s ratio {fmt(row.ratio, '.0f')} "
            f"ld diff {fmt(row.ld_diff_pct, '.4f')}% excess {row.excess_ours:.1e}",
            flush=True,
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    info["load average (1 min) at end"] = f"{load:.2f}"
    note = targets(rows)
    write(rows, info, args.out, note)
    print(note)


if __name__ == "__main__":
    main()
