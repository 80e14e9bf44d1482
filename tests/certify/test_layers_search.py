"""layer_exceedance and certified_compress on a tiny MLP (data-free magnitude pruning)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coreprune import compress
from coreprune.certify import (
    Guarantee,
    certified_compress,
    clopper_pearson_lower,
    clopper_pearson_upper,
    layer_exceedance,
)

FAST = {"method": "magnitude", "progress": False}


def test_identical_layers_never_exceed(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    report = layer_exceedance(mlp, copy.deepcopy(mlp), [("2", "2"), ("4", "4")], holdout[0], 0.0)
    assert [r.exceed for r in report] == [0, 0]
    n = len(holdout[0])
    assert report[0].exceed_upper == pytest.approx(clopper_pearson_upper(0, n, 0.05 / 2))
    assert report[0].worst_error == 0.0


def test_counts_match_hand_computed_errors(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    result = compress(mlp, target=0.5, **FAST)
    x = holdout[0]
    report = layer_exceedance(mlp, result.model, result.report.rows, holdout, 0.3, 0.9,
                              simultaneous=False)  # fmt: skip
    # row 0's consumer "2" is row 1's producer: only its kept units are compared
    keep = result.report.rows[1].keep
    with torch.no_grad():
        z = mlp[:3](x)[:, keep]
        z_hat = result.model[:3](x)
        err = (z - z_hat).norm(dim=1) / z.norm(dim=1)
        out = mlp(x)
        out_hat = result.model(x)
        err_out = (out - out_hat).norm(dim=1) / out.norm(dim=1)
    for row, e in zip(report, (err, err_out), strict=True):
        k = int((e > 0.3).sum())
        assert row.exceed == k
        assert row.exceed_upper == pytest.approx(clopper_pearson_upper(k, len(x), 0.1))
        assert row.worst_error == pytest.approx(float(e.max()), rel=1e-5)
    assert report[0].units == len(keep) and report[1].units is None
    assert "layer exceedance" in str(report)


def test_layer_exceedance_bad_input(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x = holdout[0]
    with pytest.raises(ValueError, match="no module named 'nope'"):
        layer_exceedance(mlp, mlp, [("nope", "2")], x, 0.1)
    with pytest.raises(ValueError, match="layers is empty"):
        layer_exceedance(mlp, mlp, [], x, 0.1)
    with pytest.raises(ValueError, match=r"eps must lie in \[0, inf\)"):
        layer_exceedance(mlp, mlp, [("2", "2")], x, -1.0)
    with pytest.raises(ValueError, match="compare layers whose outputs match"):
        layer_exceedance(mlp, mlp, [("0", "4")], x, 0.1)
    with pytest.raises(ValueError, match="confidence must lie"):
        layer_exceedance(mlp, mlp, [("2", "2")], x, 0.1, 1.0)


def _teacher_holdout(model: nn.Module, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels are the dense model's own predictions, so its accuracy is 1 and drop = 1 - acc."""
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return x, model(x).argmax(1)


def test_fixed_sequence_matches_a_manual_run(mlp: nn.Module) -> None:
    holdout = _teacher_holdout(mlp)
    targets = (0.1, 0.3, 0.5, 0.7, 0.9)
    # the agreement of each budget, computed by hand with compress and Clopper-Pearson
    bounds = []
    for t in targets:
        pruned = compress(mlp, target=t, **FAST).model
        with torch.no_grad():
            k = int((pruned(holdout[0]).argmax(1) == holdout[1]).sum())
        bounds.append(clopper_pearson_lower(k, len(holdout[1]), 0.05))
    low = sorted(bounds)
    level = (low[0] + low[1]) / 2  # only the worst budget misses it
    expected = 0
    while expected < len(targets) and bounds[expected] >= level:
        expected += 1  # fixed sequence: accept until the first failure
    out = certified_compress(mlp, guarantee={"agreement": level}, holdout=holdout,
                             targets=targets, **FAST)  # fmt: skip
    assert len([t for t in out.tests if t.accepted]) == expected
    assert out.target == targets[expected - 1]
    assert [t.bound for t in out.tests] == pytest.approx(bounds[: len(out.tests)])
    assert out.untested == targets[len(out.tests) :]
    assert out.model is out.result.model
    assert "certified budget" in str(out)


def test_drop_guarantee_and_stop_at_first_failure(mlp: nn.Module) -> None:
    holdout = _teacher_holdout(mlp)
    out = certified_compress(mlp, guarantee=Guarantee("accuracy_drop", 0.99), holdout=holdout,
                             targets=(0.2, 0.5), **FAST)  # fmt: skip
    assert out.target == 0.5 and all(t.accepted for t in out.tests)  # a drop of 0.99: always met
    for t in out.tests:
        assert t.observed <= t.bound <= 0.99


def test_no_budget_certified_names_level_and_mildest(mlp: nn.Module) -> None:
    holdout = _teacher_holdout(mlp, 200)
    with pytest.raises(ValueError, match=r"no budget certifies agreement >= 0\.999.*mildest"):
        certified_compress(mlp, guarantee={"agreement": 0.999}, holdout=holdout,
                           targets=(0.5, 0.9), **FAST)  # fmt: skip


def test_certified_compress_bad_input(mlp: nn.Module) -> None:
    holdout = _teacher_holdout(mlp, 50)
    ok = {"guarantee": {"agreement": 0.5}, "holdout": holdout}
    with pytest.raises(TypeError, match="model must be a torch"):
        certified_compress("mlp", **ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="guarantee metric must be one of"):
        certified_compress(mlp, guarantee={"loss": 0.1}, holdout=holdout)
    with pytest.raises(ValueError, match="exactly one metric"):
        certified_compress(mlp, guarantee={"agreement": 0.9, "accuracy": 0.9}, holdout=holdout)
    with pytest.raises(ValueError, match="targets must increase"):
        certified_compress(mlp, **ok, targets=(0.5, 0.3))
    with pytest.raises(ValueError, match="confidence must lie"):
        certified_compress(mlp, **ok, confidence=0)
    with pytest.raises(ValueError, match="not target="):
        certified_compress(mlp, **ok, target=0.5)
    with pytest.raises(ValueError, match="at least 5"):
        certified_compress(
            mlp, guarantee={"agreement": 0.5}, holdout=(holdout[0][:4], holdout[1][:4])
        )
    with pytest.raises(ValueError, match="holdout is empty"):
        certified_compress(mlp, guarantee={"agreement": 0.5},
                           holdout=(torch.empty(0, 8), torch.empty(0, dtype=torch.long)))  # fmt: skip


def test_certified_compress_checks_labels_before_compressing(
    mlp: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coreprune.certify import search

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("compress ran before the input checks")

    monkeypatch.setattr(search, "compress", never)
    x, y = _teacher_holdout(mlp, 100)
    bad = y.clone()
    bad[-1] = 7  # in the last example: every label is checked up front
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        certified_compress(mlp, guarantee={"agreement": 0.5}, holdout=(x, bad), **FAST)


def test_conv_layers_compare_kept_channels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )  # fmt: skip
    net.eval()
    x = torch.randn(64, 1, 10, 10)
    result = compress(net, target=0.4, **FAST)
    report = layer_exceedance(net, result.model, result.report.rows, x, 0.3)
    keep = result.report.rows[1].keep  # conv "3" is pair 0's consumer and pair 1's producer
    with torch.no_grad():
        z = net[:4](x)[:, keep]
        z_hat = result.model[:4](x)
    err = (z - z_hat).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)
    assert report[0].dense_name == "3" and report[0].units == len(keep) < 8
    assert report[0].exceed == int((err > 0.3).sum())


def test_group_rows_compare_every_consumer() -> None:
    """A coupled group (ResNet-20's residual streams) is one report row naming all its
    consumers; each is compared, and the logits ("fc") match a hand computation."""
    from coreprune.harness.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet20", in_channels=1, num_classes=10).eval()
    result = compress(net, target=0.3, **FAST)
    consumers = [c for r in result.report.rows for c in r.consumer.split(" + ")]
    assert len(consumers) > len(result.report.rows)  # at least one group row
    x = torch.randn(16, 1, 28, 28)
    report = layer_exceedance(net, result.model, result.report.rows, x, 0.5)
    assert [r.dense_name for r in report] == list(dict.fromkeys(consumers))
    with torch.no_grad():
        z, z_hat = net(x), result.model(x)
    err = (z - z_hat).norm(dim=1) / z.norm(dim=1)
    fc = next(r for r in report if r.dense_name == "fc")
    assert fc.exceed == int((err > 0.5).sum())
    assert fc.worst_error == pytest.approx(float(err.max()), rel=1e-5)
