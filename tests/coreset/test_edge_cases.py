"""Soundness at the edges: badly scaled weights, reused bounds, consumer layouts, apply(), caveats.

Each regression case is an instance where a certificate once claimed less than the truth; the
truth comes from the exact rational oracle in test_lp_property (no LP, no tolerance).
"""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from torch import nn

from coreprune.coreset import Certificate, QuerySpace, coreset_prune, relative_errors
from coreprune.coreset.sensitivity import ILL_CONDITIONED, compute_sensitivities
from tests.coreset.conftest import make_pair
from tests.coreset.test_lp_property import exact_sensitivity

BOUNDED = ("paper", "leverage", "exact", "auto", "all")


def _assert_never_below_truth(units: torch.Tensor, reading: torch.Tensor, method: str) -> None:
    per_next = compute_sensitivities(units, reading, method).per_next
    for j in range(reading.shape[0]):
        truth = exact_sensitivity(reading[j].abs()[:, None] * units)
        for i, exact in enumerate(truth):
            assert Fraction(float(per_next[j, i])) >= exact, (method, j, i, float(exact))


# ---- V1: a thin but real direction inside the paper bound's rounds


@pytest.mark.parametrize("method", BOUNDED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_unit_alone_in_a_thin_direction_keeps_sensitivity_one(method: str, dtype) -> None:
    """Three copies of (1, 0) and one (1, 1e-11): along y = (0, 1) the last unit is alone, s = 1.

    A relative rank tolerance of 1e-10 once flattened the set to a line and certified 1/3.
    """
    units = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1e-11]], dtype=dtype)
    units = units.to(torch.float64)
    sens = compute_sensitivities(units, torch.ones(1, 4, dtype=torch.float64), method)
    assert float(sens.per_next[0, 3]) == 1.0
    _assert_never_below_truth(units, torch.ones(1, 4, dtype=torch.float64), method)


def test_thin_direction_through_coreset_prune_removes_nothing_for_free() -> None:
    layer = nn.Linear(1, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [1.0], [1.0], [1.0]], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1e-11], dtype=torch.float64))
    layer = layer.double()
    result = coreset_prune(layer, eps=0.9, mode="select", sensitivity="auto")
    assert 3 in result.keep.tolist(), "the unit alone along x = 0 cannot be removed below eps 1"


# ---- V2: weights around 1e13 next to weights around 1


@pytest.mark.parametrize("method", BOUNDED)
def test_huge_weights_do_not_hide_a_small_unit(method: str) -> None:
    """(1e13, 0), (-1e13, 0), (0, 1): the small unit is alone at y = (0, 1), truth s = 1."""
    units = torch.tensor([[1e13, 0.0], [-1e13, 0.0], [0.0, 1.0]], dtype=torch.float64)
    reading = torch.ones(1, 3, dtype=torch.float64)
    assert float(compute_sensitivities(units, reading, method).per_next[0, 2]) == 1.0
    _assert_never_below_truth(units, reading, method)


@pytest.mark.parametrize("sensitivity", ["leverage", "exact", "auto"])
def test_huge_weights_through_coreset_prune_certify_what_is_measured(sensitivity: str) -> None:
    layer = nn.Linear(1, 3).double()
    nxt = nn.Linear(3, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e13], [-1e13], [0.0]], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        nxt.weight.fill_(1.0)
    result = coreset_prune(layer, nxt, mode="select", keep=2, sensitivity=sensitivity)
    x = torch.zeros(1, 1, dtype=torch.float64)  # only the small unit is active here
    measured = float(relative_errors(result, x).max())
    assert measured <= result.certificate.eps + 1e-12, (measured, result.certificate.eps)


# ---- ill-conditioned beyond rounding: refused, not certified


def test_exactly_parallel_units_are_refused_not_certified() -> None:
    """Rank 1 in float64 cannot be told from rank 2 with a tiny sigma_2: a clear refusal."""
    a = torch.linspace(1.0, 2.0, 6, dtype=torch.float64)[:, None]
    units = torch.cat([a, 2.0 * a], dim=1)
    with pytest.raises(ValueError, match=ILL_CONDITIONED + ": condition number"):
        compute_sensitivities(units, torch.ones(1, 6, dtype=torch.float64), "leverage")


def test_an_exactly_zero_column_is_not_ill_conditioning() -> None:
    """A bias-free layer has an exactly zero last coordinate: dropped exactly, no refusal."""
    layer, nxt = make_pair(40, 2, 3, seed=1, bias=False)
    result = coreset_prune(layer, nxt, eps=0.5, mode="select")
    assert result.sensitivities.dim == 2


# ---- V3: sensitivities reused for another pair


def test_sensitivities_for_other_reading_weights_are_refused() -> None:
    """The next layer now reads only the units the old bounds called negligible: truth eps = 1."""
    layer, nxt = make_pair(150, 2, 4, seed=0)
    first = coreset_prune(layer, nxt, eps=0.4, mode="select")
    removed = torch.ones(150, dtype=torch.bool)
    removed[first.keep] = False
    changed = copy.deepcopy(nxt)
    with torch.no_grad():
        changed.weight[:, ~removed] = 0.0
        changed.weight[:, removed] = 1.0
    with pytest.raises(ValueError, match="next layer's reading weights"):
        coreset_prune(layer, changed, eps=0.4, mode="select", sensitivities=first.sensitivities)


def test_sensitivities_for_another_query_space_are_refused() -> None:
    layer, nxt = make_pair(60, 3, 2, seed=2)
    gen = torch.Generator().manual_seed(0)
    q1 = QuerySpace.subspace(torch.randn(3, 1, dtype=torch.float64, generator=gen))
    q2 = QuerySpace.subspace(torch.randn(3, 1, dtype=torch.float64, generator=gen))
    first = coreset_prune(layer, nxt, eps=0.5, mode="select", query=q1)
    with pytest.raises(ValueError, match="the query space"):
        coreset_prune(
            layer, nxt, eps=0.5, mode="select", query=q2, sensitivities=first.sensitivities
        )


def test_sensitivities_for_other_units_are_refused() -> None:
    layer, nxt = make_pair(60, 2, 2, seed=4)
    first = coreset_prune(layer, nxt, eps=0.5, mode="select")
    moved = copy.deepcopy(layer)
    with torch.no_grad():
        moved.bias.add_(1.0)
    with pytest.raises(ValueError, match="the layer's units"):
        coreset_prune(moved, nxt, eps=0.5, mode="select", sensitivities=first.sensitivities)


def test_matching_sensitivities_are_reused() -> None:
    layer, nxt = make_pair(60, 2, 2, seed=4)
    first = coreset_prune(layer, nxt, eps=0.5, mode="select")
    again = coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=first.sensitivities)
    assert torch.equal(first.keep, again.keep)
    assert again.sensitivities is first.sensitivities


def test_hand_built_sensitivities_without_provenance_are_refused() -> None:
    from coreprune.coreset import Sensitivities

    layer, nxt = make_pair(20, 2, 2, seed=5)
    fake = Sensitivities(torch.zeros(2, 20, dtype=torch.float64), {}, 3)
    with pytest.raises(ValueError, match="no provenance"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=fake)


def test_float32_and_float64_copies_share_provenance() -> None:
    layer, nxt = make_pair(30, 2, 2, seed=6)
    first = coreset_prune(layer, nxt, eps=0.5, mode="select")
    again = coreset_prune(
        copy.deepcopy(layer).double(),
        copy.deepcopy(nxt).double(),
        eps=0.5,
        mode="select",
        sensitivities=first.sensitivities,
    )  # fmt: skip
    assert torch.equal(first.keep, again.keep)


# ---- V4: a Linear producer's consumer must read exactly its outputs


def test_a_linear_consumer_l_times_wider_than_a_linear_producer_is_refused() -> None:
    layer = nn.Linear(3, 4)
    consumer = nn.Linear(8, 2)  # 2 * 4 inputs: no flatten can sit between two Linear layers
    with pytest.raises(ValueError, match="reads 8 inputs but the layer has 4 units"):
        coreset_prune(layer, consumer, eps=0.5, mode="select")


# ---- apply() with no next layer


def test_sample_without_next_layer_refuses_to_drop_the_scales() -> None:
    layer, _ = make_pair(40, 2, 1, seed=7)
    result = coreset_prune(
        layer,
        None,
        mode="sample",
        keep=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert bool((result.scale != 1).any())
    with pytest.raises(ValueError, match="apply\\(\\) needs next_layer"):
        result.apply()


def test_select_without_next_layer_applies() -> None:
    layer, _ = make_pair(40, 2, 1, seed=7)
    result = coreset_prune(layer, None, eps=0.5, mode="select")
    new_layer, new_next = result.apply()
    assert new_next is None and new_layer.out_features == result.keep.numel()


# ---- caveats


def test_max_pooling_caveat_is_printed_with_the_certificate_alone() -> None:
    layer, nxt = make_pair(40, 2, 2, seed=8)
    cert = coreset_prune(layer, nxt, eps=0.5, mode="select", max_pooling=True).certificate
    assert "max pooling between the layers: eps covers the map before pooling" in str(cert)


def test_subspace_and_rounding_caveats() -> None:
    layer, nxt = make_pair(40, 3, 2, seed=9)
    query = QuerySpace.subspace(torch.eye(3, 2, dtype=torch.float64))
    cert = coreset_prune(layer, nxt, eps=0.5, mode="select", query=query).certificate
    text = str(cert)
    assert "covers only inputs in the query space" in text
    assert "rounding charged into the sensitivities" in text


def test_no_next_layer_caveat() -> None:
    layer, _ = make_pair(40, 2, 1, seed=10)
    cert = coreset_prune(layer, None, eps=0.5, mode="select").certificate
    assert "no next layer given" in str(cert)


def test_certificate_caveats_must_be_a_tuple_of_strings() -> None:
    fields = dict(eps=0.1, delta=0.0, query="q", mode="select", sensitivity="exact",
                  total_sensitivity=1.0, kept=1, units=2)  # fmt: skip
    assert "; caveats: a; b" in str(Certificate(**fields, caveats=("a", "b")))
    with pytest.raises(TypeError, match="caveats must be a tuple of str"):
        Certificate(**fields, caveats=["a"])  # type: ignore[arg-type]


def test_max_pooling_must_be_a_bool() -> None:
    layer, nxt = make_pair(10, 2, 2, seed=11)
    with pytest.raises(TypeError, match="max_pooling must be True or False"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", max_pooling="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", BOUNDED)
def test_columns_at_extreme_scales_are_equilibrated_not_refused(method: str) -> None:
    """A coordinate at 1e300 next to one at 1: scaling columns by powers of 2 is exact."""
    units = torch.tensor(
        [[1e300, 1.0], [-1e300, 2.0], [3e299, 3.0], [1e299, 1.0], [0.0, 1e-300]],
        dtype=torch.float64,
    )
    reading = torch.ones(1, 5, dtype=torch.float64)
    per_next = compute_sensitivities(units, reading, method).per_next
    assert bool(torch.isfinite(per_next).all())
    _assert_never_below_truth(units, reading, method)


@pytest.mark.parametrize("method", BOUNDED)
def test_extreme_magnitudes_stay_finite_and_sound(method: str) -> None:
    """Entries from 1e-300 to 1e300 (and a subnormal): no overflow, no underflow, no free zero."""
    units = torch.tensor(
        [[1e300, 1.0], [-1e300, 2.0], [1e-300, 3.0], [5e-320, 1.0], [0.0, 1e-300]],
        dtype=torch.float64,
    )
    reading = torch.ones(1, 5, dtype=torch.float64)
    try:
        per_next = compute_sensitivities(units, reading, method).per_next
    except ValueError as err:
        assert ILL_CONDITIONED in str(err)
        return
    assert bool(torch.isfinite(per_next).all())
    _assert_never_below_truth(units, reading, method)
