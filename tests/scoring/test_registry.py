"""The one factory of scorers and the one record of which methods need data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from coreprune.scoring import (
    BASELINES,
    SCORERS,
    SNIP,
    BNScale,
    Magnitude,
    UnitScorer,
    WeightScorer,
    make_scorer,
    needs_data,
    resolve_method,
)


def _loader() -> DataLoader:
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    return DataLoader(data, batch_size=4)


def test_needs_data_is_the_scorers_own_attribute() -> None:
    data_driven = {name for name in SCORERS if needs_data(name)}
    assert data_driven == {
        "snip", "grasp", "loss_preservation", "gradnorm_increase", "gradnorm_preservation",
        "wanda", "flap",
    }  # fmt: skip
    assert all(SCORERS[n].needs_data is (n in data_driven) for n in SCORERS)


def test_make_scorer_builds_with_data_only_when_needed() -> None:
    assert isinstance(make_scorer("magnitude"), Magnitude)
    snip = make_scorer("snip", _loader(), batch_size=4)
    assert isinstance(snip, SNIP)
    with pytest.raises(ValueError, match="needs labelled data"):
        make_scorer("snip")
    with pytest.raises(ValueError, match="uses no data"):
        make_scorer("magnitude", _loader())
    with pytest.raises(ValueError, match="unknown method"):
        make_scorer("magnitud")


def test_unit_and_weight_scorers_are_separate_interfaces() -> None:
    assert isinstance(BNScale(), UnitScorer) and not isinstance(BNScale(), WeightScorer)
    assert all(issubclass(cls, UnitScorer) and issubclass(cls, WeightScorer)
               for cls in BASELINES.values())  # fmt: skip
    assert "bn_scale" in SCORERS and "bn_scale" not in BASELINES
    assert isinstance(resolve_method("bn_scale"), BNScale)
    with pytest.raises(TypeError, match="no weight form"):
        resolve_method("bn_scale", kind="weight")
    with pytest.raises(ValueError, match="needs labelled data"):
        resolve_method("snip")
