"""The refit choice inside compress: the default with calibration, its report, its refit, its
errors, and the rows it reads (the same ones the least-squares refit fits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coreprune import compress, coreset_prune
from coreprune.surgery.patches import conv_patches
from coreprune.surgery.rewire import lstsq_weights
from coreprune.surgery.rewire.rows import _conv_rows, _subsample


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5)
    )


def _convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 6, 3, stride=2),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 4),
    ).eval()  # fmt: skip


def _calib(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_refit_is_the_default_choice_with_calibration() -> None:
    model = _mlp()
    result = compress(model, target=0.6, calibration=_calib(300, 12), progress=False)
    for row in result.report:
        assert "greedy structured OBS" in row.note
        assert "worst-case certificate not computed" in row.note
        assert row.eps is None and row.compensate == "lstsq"
        assert row.gap is not None and row.gap.lower <= row.gap.residual
        assert "solved with the choice" in row.rewiring
    assert "refit residual" in result.report.to_markdown()


def test_the_handed_on_weights_are_the_least_squares_refit() -> None:
    """The consumer gets exactly the ridge least squares a separate refit would compute."""
    model, calib = _mlp(), _calib(300, 12)
    result = compress(model, target=0.6, calibration=calib, progress=False)
    row, second = result.report.rows[0], result.report.rows[1]
    with torch.no_grad():
        hidden = model[1](model[0](calib))[:, row.keep]
        target = model[2](model[1](model[0](calib)))
    fit = lstsq_weights(hidden, target, ridge=1e-4)
    consumer = result.model[2]
    assert isinstance(consumer, nn.Linear)
    got = consumer.weight.detach().double().T  # its outputs were then cut by the next pair
    assert torch.allclose(got, fit.weight[:, second.keep], rtol=1e-4, atol=1e-5)


def test_refit_beats_magnitude_on_the_refit_objective() -> None:
    """Chosen for the refit, the kept set's refitted output is closer to the dense one than
    magnitude's at the same widths (measured on the calibration batch it was chosen on)."""
    model, calib = _mlp(3), _calib(400, 12, seed=4)
    ours = compress(model, target=0.7, calibration=calib, progress=False)
    theirs = compress(model, target=0.7, method="magnitude", compensate="lstsq",
                      calibration=calib, progress=False)  # fmt: skip
    assert [r.units_after for r in ours.report] == [r.units_after for r in theirs.report]
    with torch.no_grad():
        dense = model(calib)
        err = {
            k: float((r.model(calib) - dense).norm()) for k, r in (("ours", ours), ("mag", theirs))
        }
    assert err["ours"] < err["mag"]


def test_conv_nets_prune_with_the_refit_choice() -> None:
    model, calib = _convnet(), _calib(20, 1, 12, 12)
    result = compress(model, target=0.5, calibration=calib, progress=False)
    magnitude = compress(model, target=0.5, method="magnitude", compensate="lstsq",
                         calibration=calib, progress=False)  # fmt: skip
    assert [r.units_after for r in result.report] == [r.units_after for r in magnitude.report]
    assert all(r.gap is not None for r in result.report)
    out = result.model(calib)
    assert out.shape == (20, 4) and torch.isfinite(out).all()


def test_worst_case_certificate_on_request() -> None:
    model = _mlp()
    result = compress(model, target=0.5, calibration=_calib(300, 12), worst_case=True,
                      progress=False)  # fmt: skip
    for row in result.report:
        assert row.eps is not None and row.certificate is not None and row.gap is not None


def test_refit_choice_arguments_are_checked() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match=r"choice='refit'.*calibration"):
        compress(model, target=0.5, choice="refit", progress=False)
    with pytest.raises(ValueError, match=r"choice='refit'.*target="):
        compress(model, eps=0.5, choice="refit", calibration=_calib(50, 12), progress=False)
    with pytest.raises(TypeError, match="worst_case"):
        compress(model, target=0.5, calibration=_calib(50, 12), worst_case="yes",  # type: ignore[arg-type]
                 progress=False)  # fmt: skip


def test_the_caller_model_is_untouched() -> None:
    model = _convnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, target=0.5, calibration=_calib(10, 1, 12, 12), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "geometry",
    [
        {"padding": 1},
        {"padding": 2, "dilation": 2, "stride": 2},
        {"padding": 0, "stride": (2, 1)},
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": "same"},
    ],
    ids=str,
)
def test_picked_rows_equal_the_unfolded_subsample(geometry: dict) -> None:
    """The refit's conv rows, gathered at the picked positions only, equal unfolding every
    position and subsampling (the layout F.unfold gives)."""
    conv = nn.Conv2d(3, 5, 3, **geometry)
    x = torch.randn(7, 3, 11, 9)
    with torch.no_grad():
        y = conv(x)
    features, targets = _conv_rows(conv, x, y, 50)
    every = conv_patches(x, conv)
    pick = _subsample(every.shape[0], 50)
    assert pick is not None
    assert torch.equal(features, every[pick])
    assert torch.equal(targets, y.flatten(2).transpose(1, 2).reshape(-1, 5)[pick])


def test_design_card_call_forms() -> None:
    """coreset_prune(layer, eps), (layer, eps, next_layer), (layer, next_layer, keep=) and the
    keyword forms all work; a number after next_layer is refused with the order to use."""
    torch.manual_seed(0)
    layer, nxt = nn.Linear(4, 30), nn.Linear(30, 3)
    plain = coreset_prune(layer, 0.5)
    assert plain.certificate.eps <= 0.5 and plain.next_layer is None
    with_next = coreset_prune(layer, 0.5, nxt)
    keyword = coreset_prune(layer, eps=0.5, next_layer=nxt)
    assert torch.equal(with_next.keep, keyword.keep) and with_next.next_layer is nxt
    counted = coreset_prune(layer, nxt, keep=10)
    assert counted.keep.numel() == 10
    assert str(with_next.certificate).startswith("|z - z^| <=")
    with pytest.raises(TypeError, match="budget comes second"):
        coreset_prune(layer, nxt, 0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="eps given twice"):
        coreset_prune(layer, 0.5, eps=0.5)
    with pytest.raises(TypeError, match=r"eps .a number. or next_layer .a module."):
        coreset_prune(layer, "0.5")  # type: ignore[arg-type]


def test_an_eps_that_removes_nothing_says_why() -> None:
    torch.manual_seed(0)
    result = coreset_prune(nn.Linear(10, 20), 0.01)
    assert result.keep.numel() == 20
    assert any("nothing removed" in c for c in result.certificate.caveats)


def test_conv1d_producers_get_the_linear_certificate() -> None:
    """An HF-style Conv1D producer (weight stored (in, out)) is certified exactly as the
    equivalent Linear: the same sensitivities, kept units and eps, through the registry."""
    from tests.surgery.test_transformer import Conv1D

    torch.manual_seed(0)
    conv1d, nxt = Conv1D(16, 6), nn.Linear(16, 3)
    linear = nn.Linear(6, 16)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.T)
        linear.bias.copy_(conv1d.bias)
    a = coreset_prune(conv1d, nxt, keep=8, sensitivity="leverage")
    b = coreset_prune(linear, nxt, keep=8, sensitivity="leverage")
    assert torch.equal(a.keep, b.keep)
    assert torch.allclose(a.sensitivity, b.sensitivity)
    assert a.certificate.eps == pytest.approx(b.certificate.eps)


class _Residual(nn.Module):
    """A stem and two residual blocks on one stream: a coupled group with several consumers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(6, 12)
        self.a1, self.a2 = nn.Linear(12, 16), nn.Linear(16, 12)
        self.b1, self.b2 = nn.Linear(12, 16), nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.a2(torch.relu(self.a1(h)))
        h = h + self.b2(torch.relu(self.b1(h)))
        return self.head(torch.relu(h))


def test_coupled_groups_report_the_gap_of_their_choice() -> None:
    model, x = _Residual().eval(), _calib(400, 6)
    result = compress(model, target=0.4, calibration=x, progress=False)
    group = next(r for r in result.report.rows if "+" in r.producer)
    assert group.units_after < group.units_before and group.gap is not None
    assert 0 <= group.gap.lower <= group.gap.residual
    assert group.gap.kept == group.units_after and group.gap.units == group.units_before
    assert "gap of the channel choice, on the dense model" in group.note
    plain = compress(model, target=0.4, calibration=x, compensate="none", progress=False)
    assert all(r.gap is None for r in plain.report.rows)  # shown with least squares only
