"""A pre-norm transformer block in plain PyTorch: its FFN is the one prunable pair.

Covers nn.Linear and HF-style Conv1D feed-forward layers, exact and tanh GELU, hand-written and
nn.MultiheadAttention attention; pair discovery, the registry's Conv1D entry (units, slicing,
cost), exactness at zero pruning, masking vs physical removal, and `compress` end to end.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import coreprune
from coreprune.compress import CostModel, PairCut, apply_plan, count_macs, count_params
from coreprune.compress.cost import module_macs
from coreprune.scoring import UnitGates, make_scorer
from coreprune.surgery.activations import Activation
from coreprune.surgery.graph import PrunablePair, find_prunable_pairs
from coreprune.surgery.registry import layer_kind
from coreprune.surgery.rewire import consumer_from_reading, refit_consumer
from coreprune.surgery.slicing import slice_consumer, slice_producer
from coreprune.surgery.units import layer_units, next_weights

D, HIDDEN, HEADS, BATCH, TOKENS = 8, 24, 2, 3, 5


class Conv1D(nn.Module):
    """What HF transformers' Conv1D (GPT-2) is: a Linear with its weight stored (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) / math.sqrt(nx))
        self.bias = nn.Parameter(0.1 * torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Block(nn.Module):
    """LayerNorm -> attention -> residual add; LayerNorm -> fc1 -> GELU -> dropout -> fc2 ->
    dropout -> residual add."""

    def __init__(self, conv1d: bool = False, approximate: str = "tanh", mha: bool = False) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True) if mha else None
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.fc1: nn.Module = Conv1D(HIDDEN, D) if conv1d else nn.Linear(D, HIDDEN)
        self.act = nn.GELU(approximate=approximate)
        self.drop = nn.Dropout(0.1)
        self.fc2: nn.Module = Conv1D(D, HIDDEN) if conv1d else nn.Linear(HIDDEN, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        if self.attn is not None:
            a, _ = self.attn(y, y, y, need_weights=False)
        else:
            b, t, c = y.shape
            q = self.q(y).view(b, t, HEADS, c // HEADS).transpose(1, 2)
            k = self.k(y).view(b, t, HEADS, c // HEADS).transpose(1, 2)
            v = self.v(y).view(b, t, HEADS, c // HEADS).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(c // HEADS)
            a = self.o((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))
        x = x + a
        return x + self.drop(self.fc2(self.drop(self.act(self.fc1(self.ln2(x))))))


class Model(nn.Module):
    """Two blocks, so a residual stream runs between prunable FFNs."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(**kwargs), Block(**kwargs))  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


VARIANTS = [
    {"conv1d": False, "approximate": "tanh", "mha": False},
    {"conv1d": False, "approximate": "none", "mha": True},
    {"conv1d": True, "approximate": "tanh", "mha": False},
    {"conv1d": True, "approximate": "none", "mha": True},
]


def _model(seed: int = 0, **kwargs: object) -> Model:
    torch.manual_seed(seed)
    return Model(**kwargs).eval()


def _x(seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(BATCH, TOKENS, D)


def _reason(blocked: list, name: str) -> str:
    return next(b.reason for b in blocked if b.name == name)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- pair discovery


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_the_ffn_is_the_only_pair(variant: dict) -> None:
    model = _model(**variant)
    pairs, blocked = find_prunable_pairs(model)
    act = Activation("gelu", approximate=variant["approximate"])
    assert [(p.producer, p.consumer, p.activation, p.norm) for p in pairs] == [
        (f"blocks.{i}.fc1", f"blocks.{i}.fc2", act, None) for i in (0, 1)
    ]
    for i in (0, 1):
        assert "residual add" in _reason(blocked, f"blocks.{i}.fc2")
        if variant["mha"]:
            assert "runs inside 'blocks.0.attn'" in _reason(blocked, "blocks.0.attn.out_proj")
        else:
            for proj in ("q", "k", "v"):
                assert "splitting attention heads" in _reason(blocked, f"blocks.{i}.{proj}")
            assert "residual add" in _reason(blocked, f"blocks.{i}.o")


def test_an_uncovered_ffn_activation_is_blocked() -> None:
    model = _model()
    for block in model.blocks:
        block.act = nn.SELU()
    pairs, blocked = find_prunable_pairs(model)
    assert pairs == []
    assert "selu is not covered" in _reason(blocked, "blocks.0.fc1")


# ----------------------------------------------------------------------------- Conv1D entry


def test_conv1d_registry_entry_matches_the_equivalent_linear() -> None:
    torch.manual_seed(0)
    conv = Conv1D(HIDDEN, D)
    linear = nn.Linear(D, HIDDEN)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    kind = layer_kind(conv)
    assert kind is not None and kind is not layer_kind(linear)
    assert (kind.out_units(conv), kind.in_units(conv)) == (HIDDEN, D)
    counts = (kind.weights_per_pair(conv), kind.inputs_per_output(conv), kind.bias_params(conv))
    assert counts == (1, D, 1)
    assert kind.unsupported(conv) is None
    assert torch.equal(layer_units(conv), layer_units(linear))  # type: ignore[arg-type]
    assert torch.equal(next_weights(conv, D), next_weights(linear, D))  # type: ignore[arg-type]
    reading = next_weights(conv, D)  # type: ignore[arg-type]
    assert torch.equal(kind.weight_from_reading(conv, reading), conv.weight.double())
    keep = torch.tensor([0, 3, 5])
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    x = torch.randn(7, D)
    out_conv = slice_producer(conv, keep)(x)  # type: ignore[arg-type]
    assert torch.allclose(out_conv, linear(x)[:, keep], atol=1e-6, rtol=0)
    assert slice_producer(conv, keep).nf == 3  # type: ignore[arg-type]
    h = torch.randn(7, D)
    reader = slice_consumer(conv, D, keep, scale)  # type: ignore[arg-type]
    expected = torch.addmm(conv.bias, h[:, keep] * scale.float(), conv.weight[keep])
    assert torch.allclose(reader(h[:, keep]), expected, atol=1e-6)
    assert conv.weight.shape == (D, HIDDEN) and conv.nf == HIDDEN  # the input is untouched


def test_a_module_named_conv1d_needs_the_conv1d_shapes() -> None:
    class Conv1D(nn.Module):  # the name is the point
        def __init__(self) -> None:
            super().__init__()
            self.nf = 4
            self.weight = nn.Parameter(torch.zeros(4, 3))  # (nf, nx): not HF's layout

    assert layer_kind(Conv1D()) is None
    assert layer_kind(nn.Conv1d(3, 4, 1)) is None


@pytest.mark.parametrize("conv1d", [False, True])
def test_costs_count_conv1d_like_linear(conv1d: bool) -> None:
    model = _model(conv1d=conv1d)
    x = _x()
    pairs, _ = find_prunable_pairs(model)
    macs = module_macs(model, (x,))
    assert macs["blocks.0.fc1"] == BATCH * TOKENS * D * HIDDEN
    assert macs["blocks.0.fc2"] == BATCH * TOKENS * HIDDEN * D
    assert macs["__total__"] == count_macs(model, x)
    keeps = [5, 11]
    cuts = [PairCut(torch.arange(k)) for k in keeps]
    small = apply_plan(model, pairs, cuts)
    for metric, measure in (("params", count_params), ("macs", lambda m: count_macs(m, x))):
        cost = CostModel.build(model, pairs, metric, x)
        assert cost.cost(None) == measure(model)
        assert cost.cost(keeps) == measure(small)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_zero_pruning_is_exact(variant: dict) -> None:
    model = _model(**variant)
    pairs, _ = find_prunable_pairs(model)
    same = apply_plan(model, pairs, [PairCut(torch.arange(HIDDEN)) for _ in pairs])
    x = _x()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def _gated(model: nn.Module, pairs: list[PrunablePair], cuts: list[PairCut]) -> nn.Module:
    """`model` with each pair's hidden units multiplied by 0 (removed) or their scale (kept),
    by a hook on the activation: what physical removal must reproduce."""
    handles = []
    for pair, cut in zip(pairs, cuts, strict=True):
        gate = torch.zeros(HIDDEN)
        gate[cut.keep] = 1.0 if cut.scale is None else cut.scale.float()
        act = model.get_submodule(pair.producer.replace("fc1", "act"))
        handles.append(act.register_forward_hook(lambda _m, _i, out, g=gate: out * g))
    return model


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_masking_equals_removal(variant: dict) -> None:
    model = _model(**variant)
    pairs, _ = find_prunable_pairs(model)
    g = torch.Generator().manual_seed(3)
    cuts = [
        PairCut(torch.randperm(HIDDEN, generator=g)[:9].sort().values),
        PairCut(torch.tensor([1, 4, 7, 20]), torch.tensor([0.5, 2.0, 1.0, 3.0])),
    ]
    small = apply_plan(model, pairs, cuts)
    x = _x()
    with torch.no_grad():
        expected = _gated(model, pairs, cuts)(x)
        got = small(x)
    assert count_params(small.get_submodule("blocks.0.fc1")) == 9 * D + 9
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- compress


def _check_result(model: nn.Module, result: coreprune.CompressResult, x: torch.Tensor) -> None:
    report = result.report
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    assert report.params_before == count_params(model)
    assert report.params_after == count_params(result.model)
    assert report.params_after < report.params_before
    for row in report.rows:
        producer = result.model.get_submodule(row.producer)
        consumer = result.model.get_submodule(row.consumer)
        kind, ckind = layer_kind(producer), layer_kind(consumer)
        assert kind is not None and ckind is not None
        assert kind.out_units(producer) == ckind.in_units(consumer) == row.units_after
        recount = sum(p.numel() for m in (producer, consumer) for p in m.parameters(recurse=False))
        assert row.params_after == recount
    assert [r.producer for r in report.rows] == ["blocks.0.fc1", "blocks.1.fc1"]


LINEAR_VARIANTS = [v for v in VARIANTS if not v["conv1d"]]
CONV1D_VARIANTS = [v for v in VARIANTS if v["conv1d"]]


@pytest.mark.parametrize(
    ("variant", "method"),
    [
        *((v, "coreset") for v in VARIANTS),
        *((v, "magnitude") for v in VARIANTS),
    ],
    ids=str,
)
def test_compress_prunes_the_ffns(variant: dict, method: str) -> None:
    model = _model(**variant)
    x = _x()
    result = coreprune.compress(
        model, target=0.3, pairs=None, method=method, example_input=x, progress=False
    )
    _check_result(model, result, x)
    for name, param in model.named_parameters():  # the caller's model is untouched
        assert param.shape == dict(_model(**variant).named_parameters())[name].shape


def _calibration(seed: int = 5) -> torch.Tensor:
    """(batch, tokens, features): 40 x 5 = 200 token rows, more than the FFN's 24 units."""
    torch.manual_seed(seed)
    return torch.randn(40, TOKENS, D)


def _error(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        dense = model(x)
        return float((other(x) - dense).norm() / dense.norm())


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("compensate", ["lstsq", "merge"])
def test_calibrated_magnitude_rewires_on_token_activations(variant: dict, compensate: str) -> None:
    """Every (batch, token) position is a least-squares row, on Linear and Conv1D consumers
    alike; the rewired model is closer to the dense one than the plain cut."""
    model = _model(**variant)
    calib, x = _calibration(), _x()
    results = {
        c: coreprune.compress(
            model,
            target=0.3,
            method="magnitude",
            compensate=c,
            calibration=calib,
            progress=False,
        )
        for c in ("none", compensate)
    }
    _check_result(model, results[compensate], x)
    assert [r.units_after for r in results["none"].report.rows] == [
        r.units_after for r in results[compensate].report.rows
    ]
    if compensate == "lstsq":
        assert all("least squares on 200 rows" in r.rewiring for r in results["lstsq"].report.rows)
        assert _error(model, results["lstsq"].model, calib) < _error(
            model, results["none"].model, calib
        )


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_default_calibrated_choice_on_token_activations(variant: dict) -> None:
    """The default, recommended path: calibration given, the coreset's own choice and the
    least-squares refit, on (batch, tokens, features) activations."""
    model = _model(**variant)
    result = coreprune.compress(model, target=0.3, calibration=_calibration(), progress=False)
    _check_result(model, result, _x())
    assert all(r.compensate == "lstsq" for r in result.report.rows)


@pytest.mark.parametrize(
    "variant",
    VARIANTS,
    ids=str,
)
def test_certified_choice_with_calibration_on_token_activations(variant: dict) -> None:
    """The certified choice's query space and the refit both read tokens as rows."""
    model = _model(**variant)
    result = coreprune.compress(
        model, target=0.3, choice="certified", rank=4, calibration=_calibration(), progress=False
    )
    _check_result(model, result, _x())


@pytest.mark.parametrize("variant", LINEAR_VARIANTS, ids=str)
def test_compress_without_rewiring_is_the_masked_dense_model(variant: dict) -> None:
    model = _model(**variant)
    x = _x()
    result = coreprune.compress(
        model, target=0.3, method="coreset", compensate="none", progress=False
    )
    pairs, _ = find_prunable_pairs(model)
    rows = {r.producer: r for r in result.report.rows}
    cuts = [PairCut(rows[p.producer].keep, rows[p.producer].scale) for p in pairs]
    with torch.no_grad():
        expected = _gated(model, pairs, cuts)(x)
        got = result.model(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- rewiring pieces


def _conv1d_copy(linear: nn.Linear) -> Conv1D:
    conv = Conv1D(linear.out_features, linear.in_features)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    return conv


def test_refit_reads_every_leading_index_as_a_row() -> None:
    torch.manual_seed(0)
    consumer = nn.Linear(HIDDEN, D)
    h = torch.randn(30, TOKENS, HIDDEN)
    y = torch.randn(30, TOKENS, D)
    tokens, fit = refit_consumer(consumer, h, y)
    flat, fit_flat = refit_consumer(consumer, h.reshape(-1, HIDDEN), y.reshape(-1, D))
    assert fit.rows == fit_flat.rows == 30 * TOKENS
    assert tokens.bias is not None and flat.bias is not None
    assert torch.equal(tokens.weight, flat.weight) and torch.equal(tokens.bias, flat.bias)
    with pytest.raises(ValueError, match="dense_outputs must be"):
        refit_consumer(consumer, h, y[:, :-1])
    with pytest.raises(ValueError, match="pruned_inputs must be"):
        refit_consumer(consumer, h[..., :-1], y)


def test_conv1d_refit_and_merge_match_the_equivalent_linear() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(HIDDEN, D)
    conv = _conv1d_copy(linear)
    h, y = torch.randn(30, TOKENS, HIDDEN), torch.randn(30, TOKENS, D)
    refit_linear, _ = refit_consumer(linear, h, y)
    refit_conv, _ = refit_consumer(conv, h, y)
    assert isinstance(refit_conv, Conv1D) and refit_conv.weight.shape == (HIDDEN, D)
    assert torch.allclose(refit_conv.weight, refit_linear.weight.T, atol=1e-6, rtol=0)
    assert torch.allclose(refit_conv(h), refit_linear(h), atol=1e-5, rtol=0)
    reading = torch.randn(D, 7, dtype=torch.float64)
    from_linear = consumer_from_reading(linear, reading)
    from_conv = consumer_from_reading(conv, reading)
    assert isinstance(from_conv, Conv1D) and from_conv.weight.shape == (7, D)
    g = torch.randn(4, TOKENS, 7)
    assert torch.allclose(from_conv(g), from_linear(g), atol=1e-5, rtol=0)
    assert conv.weight.shape == (HIDDEN, D)  # the input is untouched


def _token_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


@pytest.mark.parametrize("method", ["magnitude", "magnitude_l2", "snip_sum", "snip_gate"])
def test_scorers_read_conv1d_units_through_the_unit_view(method: str) -> None:
    """A Conv1D FFN scores exactly as the same FFN written with nn.Linear (SNIP's "sum" form
    reads the weight's gradient through the unit view too)."""
    model = _model()
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        fc1, fc2 = block.fc1, block.fc2
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        block.fc1, block.fc2 = _conv1d_copy(fc1), _conv1d_copy(fc2)
    x = _x()
    scores = []
    for m in (model, twin):
        pairs, _ = find_prunable_pairs(m)
        if method.startswith("snip"):
            data = (x, torch.zeros(BATCH, TOKENS, D))
            scorer = make_scorer(
                "snip", data=data, batch_size=BATCH, unit_form=method[5:], loss=_token_loss
            )
        else:
            scorer = make_scorer(method)
        scores.append(scorer.unit_scores(m, UnitGates(m, pairs), x))  # type: ignore[union-attr]
    for a, b in zip(*scores, strict=True):
        assert a.shape == (HIDDEN,)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
