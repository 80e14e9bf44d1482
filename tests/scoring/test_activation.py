"""Wanda's structured form and FLAP's fluctuation score, checked against the papers' formulas
written out by hand on (batch, tokens, features) inputs, and FLAP's bias compensation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import coreprune
from coreprune.compress import PairCut, apply_plan
from coreprune.scoring import FLAP, UnitGates, Wanda, compensate_bias, make_scorer
from coreprune.surgery.graph import PrunablePair

D, HIDDEN, OUT, BATCH, TOKENS = 4, 6, 3, 10, 7


class Conv1D(nn.Module):
    """HF's Conv1D layout: y = x @ weight + bias, weight (inputs, outputs)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.nf = linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().T.clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class FFN(nn.Module):
    def __init__(self, conv1d: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        fc1, fc2 = nn.Linear(D, HIDDEN), nn.Linear(HIDDEN, OUT)
        self.fc1: nn.Module = Conv1D(fc1) if conv1d else fc1
        self.act = nn.GELU()
        self.fc2: nn.Module = Conv1D(fc2) if conv1d else fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


PAIR = PrunablePair.simple("fc1", "fc2", "gelu")


def _x(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(BATCH, TOKENS, D) + 0.5


def _hidden_rows(model: FFN, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.act(model.fc1(x)).reshape(-1, HIDDEN).double()


def _param(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    assert isinstance(value, torch.Tensor)
    return value


def _w2(model: FFN) -> torch.Tensor:
    """The consumer's weight as (outputs, inputs), whatever its layout."""
    w = _param(model.fc2, "weight").detach().double()
    return w.T if isinstance(model.fc2, Conv1D) else w


@pytest.mark.parametrize("conv1d", [False, True])
def test_wanda_structured_is_the_column_l1_times_the_feature_norm(conv1d: bool) -> None:
    model, x = FFN(conv1d).eval(), _x()
    rows = _hidden_rows(model, x)  # every (sequence, token) is a row
    expected = [
        sum(abs(float(_w2(model)[i, j])) for i in range(OUT))
        * math.sqrt(sum(float(rows[n, j]) ** 2 for n in range(rows.shape[0])))
        for j in range(HIDDEN)
    ]
    got = Wanda(x).unit_scores(model, UnitGates(model, [PAIR]), None)[0]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9)


@pytest.mark.parametrize("conv1d", [False, True])
def test_flap_is_the_sample_variance_times_the_squared_column_norm(conv1d: bool) -> None:
    model, x = FFN(conv1d).eval(), _x()
    rows = _hidden_rows(model, x)
    n = rows.shape[0]
    expected = []
    for j in range(HIDDEN):
        mean = sum(float(rows[r, j]) for r in range(n)) / n
        var = sum((float(rows[r, j]) - mean) ** 2 for r in range(n)) / (n - 1)
        expected.append(var * sum(float(_w2(model)[i, j]) ** 2 for i in range(OUT)))
    got = FLAP(x).unit_scores(model, UnitGates(model, [PAIR]), None)[0]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9)


def test_wanda_per_weight_is_magnitude_times_input_norm() -> None:
    model, x = FFN().eval(), _x()
    scores = Wanda(x).weight_scores(model, ["fc1", "fc2"], None)
    norm_in = x.reshape(-1, D).double().norm(dim=0)
    assert torch.allclose(
        scores["fc1"], _param(model.fc1, "weight").detach().double().abs() * norm_in
    )
    norm_h = _hidden_rows(model, x).norm(dim=0)
    assert torch.allclose(scores["fc2"], _w2(model).abs() * norm_h)


def test_scores_see_the_gated_network_and_leave_the_model_alone() -> None:
    model, x = FFN().train(), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = torch.ones(HIDDEN)
    mask[[1, 4]] = 0.0
    got = Wanda(x).unit_scores(model, UnitGates(model, [PAIR], masks=[mask]), None)[0]
    assert got[1] == got[4] == 0.0 and bool((got[mask > 0] > 0).all())
    assert model.training  # the train flag is restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_flap_removes_constant_units_and_bias_compensation_makes_that_exact() -> None:
    """A unit with no incoming weights outputs the constant gelu(b): variance 0, so FLAP removes
    it first, and putting its mean into the next bias reproduces the dense model exactly."""
    model, x = FFN().eval(), _x()
    with torch.no_grad():
        _param(model.fc1, "weight")[[0, 3]] = 0.0
        _param(model.fc1, "bias")[[0, 3]] = torch.tensor([0.7, -1.3])
    scores = FLAP(x).unit_scores(model, UnitGates(model, [PAIR]), None)[0]
    assert scores[0] == scores[3] == 0.0 and bool((scores[[1, 2, 4, 5]] > 0).all())
    keep = torch.argsort(scores, descending=True)[: HIDDEN - 2].sort().values
    assert keep.tolist() == [1, 2, 4, 5]
    cut = apply_plan(model, [PAIR], [PairCut(keep)])
    fixed = compensate_bias(model, cut, [("fc1", "fc2", keep)], x)
    with torch.no_grad():
        dense, plain, exact = model(x), cut(x), fixed(x)
    assert not torch.allclose(plain, dense, atol=1e-3)
    assert torch.allclose(exact, dense, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert torch.equal(cut(x), plain)  # the pruned model is not changed


def test_flap_drives_compress_on_tokens() -> None:
    model, x = FFN().eval(), _x()
    result = coreprune.compress(
        model, pairs=[PAIR], target=0.3, method=FLAP(x), compensate="none", progress=False
    )
    row = result.report.rows[0]
    assert row.units_after < HIDDEN
    fixed = compensate_bias(model, result.model, [(row.producer, row.consumer, row.keep)], x)
    with torch.no_grad():
        dense = model(x)
        assert (fixed(x) - dense).norm() < (result.model(x) - dense).norm()


def test_bad_calibration_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="needs calibration inputs"):
        Wanda()
    with pytest.raises(ValueError, match="needs labelled data: pass data="):
        make_scorer("flap")  # the factory says what it needs
    with pytest.raises(TypeError, match="calibration inputs"):
        FLAP(3)
    with pytest.raises(ValueError, match="at least 2"):
        FLAP(torch.randn(1, D))
    with pytest.raises(TypeError, match="floating-point"):
        Wanda(torch.ones(4, D, dtype=torch.long))
