"""Reused bounds are bound to their values: edited or hand-made bounds are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from coreprune.coreset import Sensitivities, coreset_prune
from coreprune.coreset.sensitivity import Provenance
from coreprune.surgery.units import layer_units, next_weights
from tests.coreset.conftest import make_pair


def _first():  # type: ignore[no-untyped-def]
    layer, nxt = make_pair(60, 2, 2, seed=4)
    return layer, nxt, coreset_prune(layer, nxt, eps=0.5, mode="select")


def test_bounds_edited_in_place_are_refused() -> None:
    layer, nxt, first = _first()
    first.sensitivities.per_next.mul_(0.1)
    with pytest.raises(ValueError, match=r"sensitivities.*changed in place"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=first.sensitivities)


def test_one_bound_of_the_dict_edited_in_place_is_refused() -> None:
    layer, nxt, first = _first()
    next(iter(first.sensitivities.bounds.values()))[0, 0] += 1.0
    with pytest.raises(ValueError, match=r"sensitivities.*changed in place"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=first.sensitivities)


def test_fields_cannot_be_reassigned() -> None:
    _, _, first = _first()
    with pytest.raises(AttributeError):
        first.sensitivities.dim = 1  # type: ignore[misc]


def test_hand_built_bounds_with_a_matching_fingerprint_are_refused() -> None:
    layer, nxt, _ = _first()
    units, reading = layer_units(layer), next_weights(nxt, 60)
    forged = Sensitivities(torch.zeros(2, 60, dtype=torch.float64), {"exact": torch.zeros(2, 60,
                           dtype=torch.float64)}, 60, Provenance.of(units, reading))  # fmt: skip
    with pytest.raises(ValueError, match=r"sensitivities.*built by hand"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=forged)


def test_a_real_provenance_on_other_values_is_refused() -> None:
    layer, nxt, first = _first()
    half = first.sensitivities.per_next / 2
    forged = Sensitivities(half, {"paper": half}, 2, first.sensitivities.provenance)
    with pytest.raises(ValueError, match=r"sensitivities.*built by hand"):
        coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=forged)


def test_hand_built_trivial_bound_is_accepted_and_sound() -> None:
    """1 exactly where U reads a unit needs no proof (s_ij <= 1), so it may be given by hand."""
    layer, nxt, _ = _first()
    units, reading = layer_units(layer), next_weights(nxt, 60)
    trivial = (reading != 0).to(torch.float64)
    given = Sensitivities(trivial, {"independent": trivial}, 60, Provenance.of(units, reading))
    result = coreset_prune(layer, nxt, keep=50, mode="select", sensitivities=given)
    assert result.certificate.eps >= 10.0  # 10 removed units, each charged its full 1


def test_hand_built_trivial_bound_with_a_small_dim_is_refused() -> None:
    layer, nxt, _ = _first()
    units, reading = layer_units(layer), next_weights(nxt, 60)
    trivial = (reading != 0).to(torch.float64)
    given = Sensitivities(trivial, {}, 3, Provenance.of(units, reading))
    with pytest.raises(ValueError, match=r"sensitivities.*dim \(3, set by hand\)"):
        coreset_prune(layer, nxt, keep=50, mode="sample", sensitivities=given)


def test_bad_bound_values_are_refused_on_construction() -> None:
    with pytest.raises(ValueError, match="per_next must be finite and >= 0"):
        Sensitivities(torch.full((1, 3), -0.5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"per_next must be a floating torch\.Tensor"):
        Sensitivities(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"bounds\['x'\] has shape"):
        Sensitivities(torch.ones(1, 3, dtype=torch.float64), {"x": torch.ones(2, 3)})


def test_untouched_bounds_are_still_reused() -> None:
    layer, nxt, first = _first()
    again = coreset_prune(layer, nxt, eps=0.5, mode="select", sensitivities=first.sensitivities)
    assert torch.equal(again.keep, first.keep)
    assert dataclasses.is_dataclass(first.sensitivities.provenance)
