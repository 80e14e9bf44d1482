"""Choosing for the refit: the greedy structured OBS selection and its optimality-gap bound.

The bound (Theorem G in docs/theory.md) must never exceed the best refit error of ANY m-unit set,
found here by exhaustive search on small layers, including adversarial ones: duplicated and
collinear units, low-rank targets, targets outside the features' span, blocks of columns
(conv input channels) and columns no unit owns (a concatenation's other inputs)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from coreprune.coreset.refit import RefitProblem, greedy_selection, lower_bound
from coreprune.surgery.rewire import lstsq_weights


def _best(problem: RefitProblem, x: torch.Tensor, y: torch.Tensor, n: int, m: int) -> float:
    """min over every m-unit set and every refit (weights and bias) of the squared error: the
    exact least-squares optimum through the pseudo-inverse, on the rows themselves."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    best = math.inf
    for subset in itertools.combinations(range(n), m):
        cols = problem.columns(torch.tensor(subset))
        a = xc[:, cols]
        fit = a @ (torch.linalg.pinv(a) @ yc)
        best = min(best, float(((yc - fit) ** 2).sum()))
    return best


def _case(seed: int, n: int, block: int, k: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = 40
    f = n * block
    x = torch.randn(rows, f, generator=g, dtype=torch.float64)
    if kind == "duplicated":  # unit 1 repeats unit 0, unit 2 is a multiple of unit 0
        x[:, block : 2 * block] = x[:, :block]
        x[:, 2 * block : 3 * block] = 3.0 * x[:, :block]
    if kind == "lowrank":
        x = x[:, :2] @ torch.randn(2, f, generator=g, dtype=torch.float64)
    w = torch.randn(f, k, generator=g, dtype=torch.float64)
    y = x @ w
    if kind == "outside":  # part of the target no refit can reach
        y = y + 2.0 * torch.randn(rows, k, generator=g, dtype=torch.float64)
    if kind == "lowrank_target":
        y = (x @ w[:, :1]) @ torch.randn(1, k, generator=g, dtype=torch.float64)
    return x, y


KINDS = ["plain", "duplicated", "lowrank", "outside", "lowrank_target"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_choice_beats_the_lower_bound(kind: str, block: int, seed: int) -> None:
    n, k = 6, 4
    x, y = _case(seed, n, block, k, kind)
    owner = torch.arange(n).repeat_interleave(block)
    problem = RefitProblem.from_rows(x, y, owner, ridge=0.0)
    for m in range(1, n + 1):
        bound = lower_bound(problem, m)
        assert bound <= _best(problem, x, y, n, m) * (1 + 1e-9) + 1e-9 * problem.energy


def test_always_kept_columns_count_in_the_bound() -> None:
    x, y = _case(3, 5, 1, 6, "plain")
    x = torch.cat([x, torch.randn(x.shape[0], 2, dtype=torch.float64)], 1)
    y = y + x[:, -2:] @ torch.randn(2, y.shape[1], dtype=torch.float64)
    owner = torch.cat([torch.arange(5), torch.tensor([-1, -1])])
    problem = RefitProblem.from_rows(x, y, owner, ridge=0.0)
    for m in range(1, 6):
        assert lower_bound(problem, m) <= _best(problem, x, y, 5, m) * (1 + 1e-9) + 1e-12


def test_removing_one_unit_is_exactly_optimal() -> None:
    """One OBS step is exact: keeping n - 1 units, greedy finds the best set."""
    for seed in range(4):
        x, y = _case(seed, 7, 2, 3, "outside")
        owner = torch.arange(7).repeat_interleave(2)
        problem = RefitProblem.from_rows(x, y, owner, ridge=0.0)
        sel = greedy_selection([problem], 7, 6, step_fraction=1 / 7)
        got = problem.error(sel.columns[0], sel.weights[0])
        assert got <= _best(problem, x, y, 7, 6) * (1 + 1e-9) + 1e-9 * problem.energy


def test_gap_brackets_the_achieved_error() -> None:
    x, y = _case(5, 8, 1, 3, "outside")
    problem = RefitProblem.from_rows(x, y, torch.arange(8), ridge=1e-4)
    for m in (2, 4, 6):
        sel = greedy_selection([problem], 8, m)
        gap = sel.gap
        assert gap.kept == m and gap.units == 8 and sel.keep.numel() == m
        assert gap.lower <= gap.residual
        assert gap.ratio >= 1.0 or not gap.informative
        assert "within" in gap.describe() or not gap.informative


def test_kept_weights_equal_a_fresh_lstsq_fit() -> None:
    """The weights handed to the consumer are the ridge least squares on the kept columns."""
    x, y = _case(7, 6, 3, 5, "outside")
    x, y = x.float(), y.float()
    owner = torch.arange(6).repeat_interleave(3)
    problem = RefitProblem.from_rows(x, y, owner, ridge=1e-3)
    sel = greedy_selection([problem], 6, 3)
    fit = lstsq_weights(x[:, sel.columns[0]], y, ridge=1e-3)
    assert torch.allclose(sel.weights[0], fit.weight, rtol=1e-9, atol=1e-9)
    assert sel.biases[0] is not None and fit.bias is not None
    assert torch.allclose(sel.biases[0], fit.bias, rtol=1e-9, atol=1e-9)


def test_alive_mask_and_counts_are_respected() -> None:
    x, y = _case(2, 6, 1, 3, "plain")
    problem = RefitProblem.from_rows(x, y, torch.arange(6), ridge=1e-4)
    alive = torch.tensor([True, False, True, True, False, True])
    sel = greedy_selection([problem], 6, 2, alive=alive)
    assert set(sel.keep.tolist()) <= {0, 2, 3, 5} and sel.keep.numel() == 2
    with pytest.raises(ValueError, match="only 4 units may be kept"):
        greedy_selection([problem], 6, 5, alive=alive)
    with pytest.raises(ValueError, match="keep must be in"):
        greedy_selection([problem], 6, 0)


def test_summed_problems_choose_for_every_consumer() -> None:
    """Two consumers read the same units; a unit only the second one needs must stay."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y1 = x[:, :1] * 2.0  # the first consumer reads unit 0 only
    y2 = x[:, 3:] * 5.0  # the second reads unit 3 only
    p1 = RefitProblem.from_rows(x, y1, torch.arange(4), ridge=0.0)
    p2 = RefitProblem.from_rows(x, y2, torch.arange(4), ridge=0.0)
    sel = greedy_selection([p1, p2], 4, 2)
    assert sel.keep.tolist() == [0, 3]
    assert sel.gap.residual < 1e-6


def test_bad_problem_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="owner must have one entry per feature"):
        RefitProblem.from_rows(torch.randn(5, 3), torch.randn(5, 2), torch.arange(2), ridge=0.1)
    with pytest.raises(ValueError, match="same rows"):
        RefitProblem.from_rows(torch.randn(5, 3), torch.randn(4, 2), torch.arange(3), ridge=0.1)
    with pytest.raises(ValueError, match="ridge must be finite"):
        RefitProblem.from_rows(torch.randn(5, 3), torch.randn(5, 2), torch.arange(3), ridge=-1.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_summed_bound_holds_for_every_channel_set(kind: str, seed: int) -> None:
    """A coupled group's gap (the sum of its consumers' bounds) never exceeds the best summed
    refit error of any m-channel set, each consumer with its own inputs and targets."""
    n, block = 5, 2
    cases = [_case(seed + 10 * c, n, block, 3 + c, kind) for c in range(3)]
    owner = torch.arange(n).repeat_interleave(block)
    problems = [RefitProblem.from_rows(x, y, owner, ridge=0.0) for x, y in cases]
    energy = sum(p.energy for p in problems)
    for m in range(1, n + 1):
        best = math.inf
        for subset in itertools.combinations(range(n), m):
            total = 0.0
            for p, (x, y) in zip(problems, cases, strict=True):
                xc, yc = x - x.mean(0), y - y.mean(0)
                a = xc[:, p.columns(torch.tensor(subset))]
                total += float(((yc - a @ (torch.linalg.pinv(a) @ yc)) ** 2).sum())
            best = min(best, total)
        sel = greedy_selection(problems, n, m)
        assert sel.gap.lower**2 * energy <= best * (1 + 1e-9) + 1e-9 * energy
        assert sel.gap.residual >= sel.gap.lower
