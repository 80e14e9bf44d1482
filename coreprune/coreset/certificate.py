"""What a pruning result guarantees, stated so that a reader can check it."""

from __future__ import annotations

from dataclasses import dataclass

# Rounding the proofs state rather than charge (docs/theory.md §6, "Stated, not charged");
# every certificate carries them, so a certificate printed alone still states them.
ROUNDING_ASSUMPTIONS = (
    "assumes LAPACK's singular values are within 8 (m + D) eps sigma_1 of the exact ones "
    "(eps = 2^-52), the constant behind the charged rounding",
    "a batch norm folded into the layer is folded in float64 and that rounding (at most "
    "5u relative on weights, 7u (|a b| + |a mean| + |beta|) on the bias, u = 2^-53) is not charged",
    "a query subspace is covered as spanned by its stored orthonormalised basis; the span of a "
    "basis given by hand is matched only up to the rounding of its QR",
)


@dataclass(frozen=True)
class Certificate:
    """For every x in the query space and every next unit j, |z_j(x) - z^_j(x)| <= eps * e_j(x).

    e_j(x) = sum_i |U_ji| |p_i . [x; 1]| is the envelope. The bound holds always when
    ``delta == 0`` and with probability at least ``1 - delta`` over the sampling otherwise.
    It is vacuous (says nothing useful) when eps >= 1. ``caveats`` lists every condition the
    bound is subject to (a restricted query space, rounding charged into it, max pooling after
    the layer, ...); ``assumptions`` the rounding the proofs state rather than charge
    (`ROUNDING_ASSUMPTIONS`); ``str()`` prints both, so a certificate printed alone states them.
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
    assumptions: tuple[str, ...] = ROUNDING_ASSUMPTIONS

    def __post_init__(self) -> None:
        for name in ("caveats", "assumptions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(c, str) for c in value):
                raise TypeError(f"{name} must be a tuple of str, got {value!r}")

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
        if self.assumptions:
            text += "; rounding: " + "; ".join(self.assumptions)
        return text
