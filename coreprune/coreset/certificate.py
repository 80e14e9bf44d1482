"""What a pruning result guarantees, stated so that a reader can check it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Certificate:
    """For every x in the query space and every next unit j, |z_j(x) - z^_j(x)| <= eps * e_j(x).

    e_j(x) = sum_i |U_ji| |p_i . [x; 1]| is the envelope. The bound holds always when
    ``delta == 0`` and with probability at least ``1 - delta`` over the sampling otherwise.
    It is vacuous (says nothing useful) when eps >= 1. ``caveats`` lists every condition the
    bound is subject to (a restricted query space, rounding charged into it, max pooling after
    the layer, ...); ``str()`` prints them, so a certificate printed alone still states them.
    """

    eps: float
    delta: float
    query: str
    mode: str
    sensitivity: str
    total_sensitivity: float
    kept: int
    units: int
    draws: int | None = None
    eps_deterministic: float | None = None
    eps_probabilistic: float | None = None
    note: str = ""
    caveats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.caveats, tuple) or not all(isinstance(c, str) for c in self.caveats):
            raise TypeError(f"caveats must be a tuple of str, got {self.caveats!r}")

    @property
    def vacuous(self) -> bool:
        """eps >= 1: the bound is no better than the envelope itself."""
        return not self.eps < 1.0

    def __str__(self) -> str:
        chance = "always" if self.delta == 0 else f"with probability >= {1 - self.delta:g}"
        head = f"|z - z^| <= {self.eps:.4g} * envelope, {chance}, for x in {self.query}"
        if self.vacuous:
            head += " [VACUOUS: eps >= 1]"
        tail = f"mode={self.mode}, kept {self.kept}/{self.units}, sensitivity={self.sensitivity}, t={self.total_sensitivity:.4g}"
        if self.draws is not None:
            tail += f", m={self.draws} draws"
        text = f"{head} ({tail}){'; ' + self.note if self.note else ''}"
        if self.caveats:
            text += "; caveats: " + "; ".join(self.caveats)
        return text
