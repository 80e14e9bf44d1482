"""How loose is each sensitivity bound, and what does it cost? (docs/theory.md §1-3)

On the same layers, side by side: the paper's ellipsoid + Carathéodory construction (Theorem 2),
the leverage bound (Theorem 3) and the exact LP (Theorem 1). Reports the total sensitivity t of
each, its ratio to the exact t, and the time; then, for `select` at eps=0.3 with each bound, the
units removed, the certified eps and the worst error an adversarial search finds (tightness).

    python benchmarks/bench_sensitivity.py     # writes benchmarks/results/sensitivity.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or with -m
from benchmarks._machine import machine
from coreprune import QuerySpace, adversarial_search, coreset_prune

CASES = [  # (units n, query dimension, next units k)
    (100, 2, 5),
    (200, 4, 5),
    (300, 8, 5),
    (100, 8, 10),
]


def make_layer(n: int, d_in: int, k: int, seed: int) -> tuple[nn.Linear, nn.Linear]:
    gen = torch.Generator().manual_seed(seed)
    layer, nxt = nn.Linear(d_in, n), nn.Linear(n, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, d_in, generator=gen))
        layer.bias.copy_(torch.randn(n, generator=gen))
        nxt.weight.copy_(torch.randn(k, n, generator=gen) * torch.rand(1, n, generator=gen) ** 2)
    return layer, nxt


def main() -> None:
    # no options; --help says what runs and where it writes, without running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.set_num_threads(1)
    rows = []
    for n, dim, k in CASES:
        layer, nxt = make_layer(n, 32, k, seed=n + dim)
        gen = torch.Generator().manual_seed(0)
        calib = torch.randn(500, dim, generator=gen) @ torch.randn(dim, 32, generator=gen)
        query = QuerySpace.from_calibration(calib, dim)
        totals, times, results = {}, {}, {}
        for method in ("paper", "leverage", "exact"):
            start = time.perf_counter()
            res = coreset_prune(layer, nxt, eps=0.3, mode="select", query=query, sensitivity=method)
            times[method] = time.perf_counter() - start
            totals[method] = res.certificate.total_sensitivity
            results[method] = res
        for method, res in results.items():
            adv = adversarial_search(
                res, restarts=32, steps=150, generator=torch.Generator().manual_seed(1)
            )
            rows.append(
                {
                    "n": n,
                    "dim Q": dim,
                    "k": k,
                    "bound": method,
                    "t": totals[method],
                    "t / t_exact": totals[method] / totals["exact"],
                    "time s": times[method],
                    "removed at eps=0.3": n - res.keep.numel(),
                    "cert eps": res.certificate.eps,
                    "adversarial": adv.worst,
                    "adv / eps": adv.worst / res.certificate.eps
                    if res.certificate.eps
                    else float("nan"),
                }
            )
            print(rows[-1])
    write(rows)


def write(rows: list[dict]) -> None:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    cols = list(rows[0])
    lines = [
        "# Sensitivity bounds: looseness and cost",
        "",
        f"Machine: {machine()}. One thread. Layers: random Linear(32 -> n) with bias, reading weights",
        "with heavy-tailed column scales; query space: a random `dim Q`-dimensional affine subspace",
        "(`QuerySpace.from_calibration`). `select` at eps = 0.3 with each bound alone.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
            + " |"
        )
    lines += [
        "",
        "Reading: `t / t_exact` is how much larger a bound's total sensitivity is than the true one;",
        "`adv / eps` is the worst error found by adversarial search over the certified eps (1 = tight).",
    ]
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
