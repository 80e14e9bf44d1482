"""The rewired certificate (Theorem R1) only for a consumer that differs in its weights alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coreprune.coreset import coreset_prune
from coreprune.surgery import rewire


def _conv_pair(padding: int = 1) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    return nn.Conv2d(2, 12, 3, padding=1), nn.Conv2d(12, 3, 3, padding=padding)


def _merged():  # type: ignore[no-untyped-def]
    layer, nxt = _conv_pair()
    result = coreset_prune(layer, nxt, keep=8, mode="select")
    _, merged = result.apply("merge")
    return result, merged


@pytest.mark.parametrize(
    ("attr", "value", "named"),
    [("padding", (0, 0), "padding"), ("dilation", (2, 2), "dilation"),
     ("stride", (2, 2), "stride"), ("padding_mode", "reflect", "padding_mode")],
)  # fmt: skip
def test_a_consumer_with_the_merged_weights_but_other_geometry_is_refused(
    attr: str, value: object, named: str
) -> None:
    result, merged = _merged()
    assert result.rewired_eps(merged) < float("inf")  # same geometry: certified
    other = copy.deepcopy(merged)
    setattr(other, attr, value)
    with pytest.raises(ValueError, match=rf"new_next differs from next_layer.*{named}"):
        result.rewired_eps(other)


def test_a_consumer_of_another_class_is_refused() -> None:
    result, _ = _merged()
    with pytest.raises(TypeError, match="new_next is a Linear but next_layer is a Conv2d"):
        result.rewired_eps(nn.Linear(8, 3))  # type: ignore[arg-type]


def test_rewired_eps_checks_the_consumers_it_is_given() -> None:
    result, _ = _merged()
    u = torch.ones(2, 3, dtype=torch.float64)
    s = torch.full((2, 3), 0.1, dtype=torch.float64)
    dense = result.next_layer
    assert rewire.rewired_eps(u, u, s, dense=dense, rewired=copy.deepcopy(dense)) == 0.0
    shifted = copy.deepcopy(dense)
    shifted.padding = (2, 2)  # type: ignore[union-attr]
    with pytest.raises(
        ValueError, match=r"rewired differs from dense.*padding \(2, 2\) vs \(1, 1\)"
    ):
        rewire.rewired_eps(u, u, s, dense=dense, rewired=shifted)
    with pytest.raises(ValueError, match="give both dense= and rewired="):
        rewire.rewired_eps(u, u, s, dense=dense)


def test_kernel_and_groups_are_geometry_too() -> None:
    dense = nn.Conv2d(4, 4, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        rewire.check_same_geometry(dense, nn.Conv2d(4, 4, 5))
    with pytest.raises(ValueError, match="groups"):
        rewire.check_same_geometry(dense, nn.Conv2d(4, 4, 3, groups=2))
    rewire.check_same_geometry(dense, nn.Conv2d(2, 4, 3))  # fewer inputs (units removed) is fine
