"""Held-out certificates refuse what would fool them or fail obscurely: NaN outputs, a reused
holdout, held-out inputs the models cannot take."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune import compress
from coreprune.certify import certified_compress, certify, check_disjoint, layer_exceedance
from tests.certify.conftest import make_mlp

FAST = {"method": "magnitude", "progress": False}


def _holdout(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _nan_model() -> nn.Module:
    model = make_mlp()
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))  # type: ignore[index, union-attr]
    return model


def test_two_all_nan_models_are_not_certified_to_agree() -> None:
    a, b = _nan_model(), _nan_model()
    with pytest.raises(ValueError, match="dense returned NaN or Inf class scores on 400"):
        certify(a, b, _holdout())


def test_a_pruned_model_with_nan_on_a_few_examples_is_refused() -> None:
    dense = make_mlp()
    x, y = _holdout()
    x = x.clone()
    x[123] = float("inf")
    with pytest.raises(ValueError, match=r"holdout: 1 input\(s\) contain NaN or Inf \(first: "
                       r"example 123\)"):  # fmt: skip
        certify(dense, copy.deepcopy(dense), (x, y), batch_size=50)
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    with pytest.raises(ValueError, match=r"holdout: 1 input.*example 123"):
        certify(dense, copy.deepcopy(dense), loader)
    with pytest.raises(ValueError, match=r"pruned returned NaN or Inf"):
        certify(dense, _nan_model(), _holdout())


def test_layer_exceedance_refuses_nan_layer_outputs() -> None:
    dense = make_mlp()
    result = compress(dense, target=0.5, **FAST)
    broken = copy.deepcopy(result.model)
    with torch.no_grad():
        broken[4].weight.fill_(float("nan"))  # type: ignore[index, union-attr]
    with pytest.raises(ValueError, match=r"pruned: layer '4' returned NaN or Inf"):
        layer_exceedance(dense, broken, [("4", "4")], _holdout(), eps=0.5)


def test_certified_compress_refuses_calibration_reused_as_holdout() -> None:
    holdout = _holdout()
    with pytest.raises(ValueError, match="holdout and calibration share 400 of the holdout's 400"):
        certified_compress(make_mlp(), guarantee={"agreement": 0.5}, holdout=holdout,
                           targets=(0.2,), calibration=holdout[0], **FAST)  # fmt: skip


def test_compress_with_guarantee_refuses_calibration_reused_as_holdout() -> None:
    x, y = _holdout()
    with pytest.raises(ValueError, match="holdout and calibration share 10 of"):
        compress(make_mlp(), guarantee={"agreement": 0.5}, holdout=(x, y),
                 calibration=x[:10].double(), progress=False)  # fmt: skip


def test_check_disjoint_counts_shared_rows_across_batches() -> None:
    x, y = _holdout(40)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    check_disjoint(batches, torch.randn(5, 8))  # nothing shared
    with pytest.raises(ValueError, match=r"share 2 of the holdout's 40 inputs \(first: held-out "
                       r"example 17\)"):  # fmt: skip
        check_disjoint(batches, torch.stack([x[30], x[17]]))
    with pytest.raises(TypeError, match="calibration must be a tensor"):
        check_disjoint(batches, [1, 2])


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_a_holdout_the_models_cannot_take_is_refused_with_the_shape_they_want() -> None:
    net, y = _conv_net(), torch.zeros(20, dtype=torch.long)
    with pytest.raises(ValueError, match=r"holdout does not fit dense: each held-out input has "
                       r"shape \(1, 8, 8\).*layer '0' \(Conv2d\) wants torch.float32 input with 3 "
                       r"channels in dimension 1"):  # fmt: skip
        certify(net, copy.deepcopy(net), (torch.randn(20, 1, 8, 8), y))
    # the failing layer is found wherever it sits, here behind the flatten
    loader = DataLoader(TensorDataset(torch.randn(20, 3, 9, 9), y), batch_size=8)
    with pytest.raises(ValueError, match=r"layer '3' \(Linear\) wants torch.float32 input with "
                       r"144 features in the last dimension"):  # fmt: skip
        certify(net, copy.deepcopy(net), loader)
    with pytest.raises(ValueError, match=r"holdout does not fit pruned"):
        layer_exceedance(make_mlp(), _conv_net(), [("0", "0")], _holdout(), eps=0.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_the_fit_probe_leaves_no_hooks_and_takes_scripted_models() -> None:
    dense, misfit = make_mlp(), (torch.randn(20, 5), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="holdout does not fit dense"):
        certify(dense, copy.deepcopy(dense), misfit)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in dense.modules())
    scripted = torch.jit.script(make_mlp())  # takes no Python hooks: the probe runs it bare
    assert certify(scripted, scripted, _holdout()).agreement == 1.0
    with pytest.raises(ValueError, match=r"holdout does not fit dense.*the model"):
        certify(scripted, scripted, misfit)
