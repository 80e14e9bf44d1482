"""certify: the held-out certificate of a pruned model against its dense model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune import certify
from coreprune.certify import (
    Predictions,
    certify_predictions,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from tests.certify.conftest import make_mlp


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_identical_models_agree_everywhere(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    cert = certify(mlp, copy.deepcopy(mlp), holdout, 0.95)
    n = len(holdout[1])
    assert cert.n == n and cert.agreement == 1.0 and cert.accuracy_drop == 0.0
    assert cert.dense_only == cert.pruned_only == 0
    # simultaneous: each bound at delta / 3
    assert cert.agreement_lower == pytest.approx((0.05 / 3) ** (1 / n))
    assert cert.accuracy_lower <= cert.accuracy == cert.dense_accuracy
    assert cert.accuracy_drop_upper == pytest.approx(clopper_pearson_upper(0, n, 0.05 / 6))
    assert "i.i.d." in cert.assumption and "never" in cert.assumption
    text = str(cert)
    assert "agreement" in text and f"n = {n}" in text


def test_counts_match_a_hand_count(holdout: tuple[torch.Tensor, torch.Tensor]) -> None:
    dense, pruned = make_mlp(0), make_mlp(1)
    x, y = holdout
    cert = certify(dense, pruned, (x, y), 0.9, batch_size=37, simultaneous=False)
    with torch.no_grad():
        a, b = dense(x).argmax(1), pruned(x).argmax(1)
    n = len(y)
    agree = int((a == b).sum())
    lost = int(((a == y) & (b != y)).sum())
    gained = int(((a != y) & (b == y)).sum())
    assert cert.agreement == agree / n
    assert cert.agreement_lower == pytest.approx(clopper_pearson_lower(agree, n, 0.1))
    assert cert.accuracy == int((b == y).sum()) / n
    assert cert.accuracy_drop == pytest.approx(float((a == y).float().mean()) - cert.accuracy)
    expect = clopper_pearson_upper(lost, n, 0.05) - clopper_pearson_lower(gained, n, 0.05)
    assert cert.accuracy_drop_upper == pytest.approx(expect)
    assert cert.accuracy_drop_upper >= cert.accuracy_drop


def test_dataloader_equals_tensors(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    other = make_mlp(3)
    loader = DataLoader(TensorDataset(*holdout), batch_size=64)
    assert certify(mlp, other, loader) == certify(mlp, other, holdout)


def test_models_are_not_mutated(holdout: tuple[torch.Tensor, torch.Tensor]) -> None:
    dense, pruned = make_mlp(0), make_mlp(1)
    dense.train()
    pruned.eval()
    pruned[0].train()  # a mixed set of flags must come back exactly
    flags = [m.training for m in (*dense.modules(), *pruned.modules())]
    before = (_state(dense), _state(pruned))
    x, y = holdout
    x_copy, y_copy = x.clone(), y.clone()
    certify(dense, pruned, holdout)
    assert flags == [m.training for m in (*dense.modules(), *pruned.modules())]
    for old, model in zip(before, (dense, pruned), strict=True):
        for k, v in model.state_dict().items():
            assert torch.equal(old[k], v)
    assert all(p.grad is None for p in dense.parameters())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)


def test_coverage_of_the_drop_bound() -> None:
    """Simulated paired outcomes: the drop upper bound falls below the true drop <= delta often."""
    gen = torch.Generator().manual_seed(0)
    n, trials, delta = 300, 400, 0.2
    # cells: both right, dense only right, pruned only right, both wrong
    probs = torch.tensor([0.80, 0.08, 0.03, 0.09])
    true_drop = float(probs[1] - probs[2])
    fails = 0
    for _ in range(trials):
        cell = torch.multinomial(probs, n, replacement=True, generator=gen)
        labels = torch.zeros(n, dtype=torch.long)
        dense = torch.where((cell == 0) | (cell == 1), 0, 1)
        pruned = torch.where((cell == 0) | (cell == 2), 0, 2)
        cert = certify_predictions(Predictions(dense, pruned, labels), 1 - delta,
                                   simultaneous=False)  # fmt: skip
        fails += cert.accuracy_drop_upper < true_drop
    assert fails <= trials * delta + 3 * (trials * delta * (1 - delta)) ** 0.5


# ------------------------------------------------------------------------------------------
# Bad input: the right error, naming the argument, before any work


def test_rejects_non_modules(holdout: tuple[torch.Tensor, torch.Tensor], mlp: nn.Module) -> None:
    with pytest.raises(TypeError, match=r"dense must be a torch\.nn\.Module"):
        certify(mlp.state_dict(), mlp, holdout)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pruned must be a torch\.nn\.Module"):
        certify(mlp, "model", holdout)  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_rejects_confidence_outside_unit_interval(
    confidence: float, mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        certify(mlp, mlp, holdout, confidence)


def test_rejects_empty_holdout(mlp: nn.Module) -> None:
    with pytest.raises(ValueError, match="holdout is empty"):
        certify(mlp, mlp, (torch.empty(0, 8), torch.empty(0, dtype=torch.long)))
    loader = DataLoader(TensorDataset(torch.empty(0, 8), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="holdout is empty"):
        certify(mlp, mlp, loader)


def test_rejects_uninformative_holdout(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = holdout
    # simultaneous at 95%: each bound at 0.05/3, needs n >= 6 (0.0167^(1/6) = 0.505)
    certify(mlp, mlp, (x[:6], y[:6]))
    with pytest.raises(ValueError, match="at least 6"):
        certify(mlp, mlp, (x[:5], y[:5]))


def test_rejects_labels_out_of_range(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = holdout
    bad = y.clone()
    bad[5] = 3  # the models have 3 outputs
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        certify(mlp, mlp, (x, bad))
    with pytest.raises(TypeError, match="integer class indices"):
        certify(mlp, mlp, (x, y.float()))


def test_rejects_different_output_shapes(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    other = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="outputs of different shapes"):
        certify(mlp, other, holdout)


def test_rejects_bad_holdout_types(mlp: nn.Module) -> None:
    with pytest.raises(TypeError, match="holdout must be"):
        certify(mlp, mlp, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass \(inputs, labels\)"):
        certify(mlp, mlp, torch.randn(10, 8))  # type: ignore[arg-type]


def test_rejects_bad_label_in_a_later_loader_batch(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = holdout
    bad = y.clone()
    bad[-1] = -1
    with pytest.raises(ValueError, match="labels must lie in"):
        certify(mlp, mlp, DataLoader(TensorDataset(x, bad), batch_size=50))


def test_rejects_non_bool_simultaneous(
    mlp: nn.Module, holdout: tuple[torch.Tensor, torch.Tensor]
) -> None:
    with pytest.raises(TypeError, match="simultaneous must be True or False"):
        certify(mlp, mlp, holdout, simultaneous="yes")  # type: ignore[arg-type]
