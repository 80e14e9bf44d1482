"""The sparsity schedule DPF prunes along: Zhu & Gupta's (2017) cubic ramp.

It lives apart from the training loop because it is a pure function of the step, useful (and
tested) on its own, and both forms of DPF read the same schedule.
"""

from __future__ import annotations

from coreprune.checks import check_fraction, check_int

__all__ = ["cubic_sparsity"]


def cubic_sparsity(
    step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int
) -> float:
    """Zhu & Gupta's gradual schedule: `initial` until `start`, then
    s_t = final + (initial - final) * (1 - (t - start) / (end - start))^3, then `final` from
    `end` on (end - start = n Δt in the paper's notation). Non-decreasing; exactly `final` at
    t = end."""
    check_int(step, "step", minimum=0)
    _check_sparsity(final, "final")
    _check_sparsity(initial, "initial")
    if initial > final:
        raise ValueError(f"initial sparsity {initial} exceeds final {final}; pass initial <= final")
    check_int(start, "start", minimum=0)
    check_int(end, "end", minimum=0)
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start}): the ramp needs >= 1 step")
    if step <= start:
        return float(initial)
    if step >= end:
        return float(final)
    left = 1 - (step - start) / (end - start)
    return float(final + (initial - final) * left**3)


def _check_sparsity(value: object, name: str) -> float:
    """A sparsity: the fraction in [0, 1) of weights (or params) to mask."""
    return check_fraction(value, name, low_open=False, high_open=True)
