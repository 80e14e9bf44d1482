"""`PruneResult.apply(compensate=...)`: rewiring one pair, and the certificate of the rewiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coreprune import coreset_prune


def _pair(seed: int = 0) -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(12, 40), nn.Linear(40, 6), torch.randn(400, 12)


def _error(layer: nn.Module, nxt: nn.Module, a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        dense = nxt(torch.relu(layer(x)))
        return float((b(torch.relu(a(x))) - dense).norm() / dense.norm())


def test_plain_slice_rewired_eps_equals_the_certificate() -> None:
    layer, nxt, _ = _pair()
    result = coreset_prune(layer, nxt, mode="select", keep=15)
    _, sliced = result.apply()
    assert sliced is not None
    assert result.rewired_eps(sliced) == pytest.approx(result.certificate.eps, rel=1e-12)


def test_lstsq_is_no_worse_than_the_plain_slice_on_its_calibration() -> None:
    layer, nxt, x = _pair(1)
    result = coreset_prune(layer, nxt, mode="select", keep=12)
    plain = _error(layer, nxt, *result.apply(), x)  # type: ignore[arg-type]
    merged = _error(layer, nxt, *result.apply("merge"), x)  # type: ignore[arg-type]
    refit = _error(layer, nxt, *result.apply("lstsq", calibration=x), x)  # type: ignore[arg-type]
    assert refit <= plain * (1 + 1e-4)
    assert refit < merged  # on this layer the data-driven refit beats the data-free merge
    _, new_next = result.apply("lstsq", calibration=x)
    assert new_next is not None
    assert result.rewired_eps(new_next) == float("inf")  # its bias moved: not covered


def test_merged_consumer_respects_its_rewired_certificate() -> None:
    layer, nxt, _ = _pair(2)
    result = coreset_prune(layer, nxt, mode="select", keep=20)
    new_layer, merged = result.apply("merge")
    assert merged is not None
    eps = result.rewired_eps(merged)
    x = torch.randn(2000, 12) * 3
    with torch.no_grad():
        pre = layer(x)
        dense = nxt(torch.relu(pre))
        pruned = merged(torch.relu(new_layer(x)))
        envelope = pre.abs() @ nxt.weight.abs().T  # e_j(x) = sum_i |U_ji| |p_i . x~|
    assert bool(((pruned - dense).abs() <= eps * envelope + 1e-5).all())


def test_inputs_are_untouched_and_bad_requests_refused() -> None:
    layer, nxt, x = _pair(3)
    before = [p.clone() for p in (*layer.parameters(), *nxt.parameters())]
    result = coreset_prune(layer, nxt, mode="select", keep=10)
    result.apply("merge")
    result.apply("lstsq", calibration=x)
    after = [*layer.parameters(), *nxt.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="needs calibration"):
        result.apply("lstsq")
    with pytest.raises(ValueError, match="compensate must be one of"):
        result.apply("refit")
    with pytest.raises(ValueError, match="calibration does not fit"):
        result.apply("lstsq", calibration=torch.randn(10, 7))
    alone = coreset_prune(layer, mode="select", keep=10)
    with pytest.raises(ValueError, match="pass next_layer"):
        alone.apply("merge")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_result_refuses_layers_changed_after_pruning(dtype: torch.dtype) -> None:
    """The result keeps the caller's modules, but certifies them as they were: editing them in
    place afterwards (a float64 next layer's reading once aliased its weight) is refused."""
    torch.manual_seed(0)
    layer, nxt = nn.Linear(6, 10).to(dtype), nn.Linear(10, 4).to(dtype)
    result = coreset_prune(layer, nxt, keep=5)
    _, sliced = result.apply()
    assert sliced is not None
    eps = result.rewired_eps(sliced)
    assert eps == pytest.approx(result.certificate.eps)
    with torch.no_grad():
        nxt.weight.mul_(2.0)
    assert result.reading.data_ptr() != nxt.weight.data_ptr()
    with pytest.raises(ValueError, match="next_layer changed since coreset_prune ran"):
        result.rewired_eps(sliced)
    with pytest.raises(ValueError, match="next_layer changed"):
        result.apply()
    with torch.no_grad():
        nxt.weight.div_(2.0)  # back as it was: exactly the certified layers again
        layer.bias.add_(1.0)
    with pytest.raises(ValueError, match="layer \\(or its norm\\) changed"):
        result.apply()
