"""Data-informed sensitivities: hand-computed values, invariances, dead units, conv rows."""

from __future__ import annotations

import pytest
import torch

from coreprune.coreset.empirical import (
    activation_rows,
    empirical_sensitivities,
    empirical_unit_scores,
)


def test_hand_computed() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    u = torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, 1.0]])
    # next unit 0: row 0 |terms| (1, 2, 0)/3; row 1 (3, 0, 2)/5 -> max (3/5, 2/3, 2/5)
    # next unit 1: row 0 (0, 2, 0)/2;      row 1 (0, 0, 1)/1 -> max (0, 1, 1)
    s = empirical_sensitivities(a, u)
    expected = torch.tensor([[3 / 5, 2 / 3, 2 / 5], [0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(s, expected, atol=1e-15)
    assert torch.allclose(empirical_unit_scores(a, u), expected.max(dim=0).values)


def test_inverse_scaling_of_a_unit_changes_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(50, 6, generator=gen)
    u = torch.randn(4, 6, generator=gen)
    c = torch.tensor([1.0, 10.0, 0.1, 1.0, 3.0, 1.0])
    s1 = empirical_sensitivities(a, u)
    s2 = empirical_sensitivities(a * c, u / c)
    assert torch.allclose(s1, s2, atol=1e-12)
    s3 = empirical_sensitivities(a * c, u)  # the test can fail: scaling one side alone matters
    assert not torch.allclose(s1, s3, atol=1e-3)


def test_dead_unit_scores_zero_and_all_zero_rows_are_ignored() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(30, 5, generator=gen)
    a[:, 2] = 0.0
    a[7] = 0.0  # every unit silent on one row: 0/0 := 0
    u = torch.randn(3, 5, generator=gen)
    s = empirical_sensitivities(a, u)
    assert (s[:, 2] == 0).all() and torch.isfinite(s).all()
    assert (s >= 0).all() and (s <= 1).all()
    scores = empirical_unit_scores(a, u)
    assert scores[2] == 0 and (scores[[0, 1, 3, 4]] > 0).all()


def test_conv_maps_become_position_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 3, 4, 5, generator=gen)
    rows = activation_rows(maps)
    assert rows.shape == (40, 3)
    assert torch.equal(rows[0], maps[0, :, 0, 0]) and torch.equal(rows[-1], maps[1, :, 3, 4])
    u = torch.randn(7, 3, generator=gen)
    assert torch.equal(empirical_sensitivities(maps, u), empirical_sensitivities(rows, u))


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import coreprune.coreset.empirical as emp

    gen = torch.Generator().manual_seed(3)
    a, u = torch.randn(100, 8, generator=gen).relu(), torch.randn(5, 8, generator=gen)
    whole = empirical_sensitivities(a, u)
    monkeypatch.setattr(emp, "CHUNK_ELEMENTS", 40)
    assert torch.equal(empirical_sensitivities(a, u), whole)


def test_validation() -> None:
    with pytest.raises(TypeError, match="activations"):
        empirical_sensitivities([[1.0]], torch.ones(1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k x n"):
        empirical_sensitivities(torch.ones(3, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="N x n"):
        empirical_sensitivities(torch.ones(3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="finite"):
        empirical_sensitivities(torch.tensor([[float("nan")]]), torch.ones(1, 1))
    with pytest.raises(TypeError, match="reading"):
        empirical_sensitivities(torch.ones(3, 2), None)  # type: ignore[arg-type]
