"""The shared argument checks: accepted values come back unchanged, refused ones raise the
documented error type with a message naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from coreprune.checks import (
    check_bool,
    check_choice,
    check_float,
    check_fraction,
    check_generator,
    check_int,
    check_module,
    check_probability,
    check_tensor,
)


def test_check_int_accepts_and_bounds() -> None:
    assert check_int(3, "n") == 3
    assert check_int(0, "n", minimum=0) == 0
    assert check_int(5, "n", minimum=1, maximum=5) == 5
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0"):
        check_int(0, "n", minimum=1)
    with pytest.raises(ValueError, match=r"n must be <= 5, got 6"):
        check_int(6, "n", maximum=5)


@pytest.mark.parametrize("bad", [True, False, 3.0, "3", None, torch.tensor(3)])
def test_check_int_refuses_non_ints(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^count must be an int"):
        check_int(bad, "count")


def test_check_float_accepts_int_and_float() -> None:
    value = check_float(2, "x")
    assert value == 2.0 and type(value) is float
    wide = check_float(np.float64(0.25), "x")  # a float subclass
    assert wide == 0.25 and type(wide) is float
    for other in (np.float32(0.25), np.int64(1)):
        with pytest.raises(TypeError, match="x must be a real number"):
            check_float(other, "x")
    assert check_float(0.5, "x", low=0.5, high=0.5) == 0.5


@pytest.mark.parametrize("bad", [True, "0.5", None, torch.tensor(0.5), [0.5]])
def test_check_float_refuses_non_numbers(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^lr must be a real number"):
        check_float(bad, "lr")


def test_check_float_bounds_open_and_closed() -> None:
    assert check_float(0.0, "x", low=0.0) == 0.0
    with pytest.raises(ValueError, match=r"x must lie in \(0, inf\), got 0.0"):
        check_float(0.0, "x", low=0.0, low_open=True)
    assert check_float(1.0, "x", high=1.0) == 1.0
    with pytest.raises(ValueError, match=r"x must lie in \(-inf, 1\), got 1"):
        check_float(1, "x", high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"x must lie in \[2, 3\]"):
        check_float(1.5, "x", low=2.0, high=3.0)


def test_check_float_nan_and_inf() -> None:
    with pytest.raises(ValueError, match="NaN"):
        check_float(math.nan, "x", finite=False)
    with pytest.raises(ValueError, match="finite"):
        check_float(math.inf, "x")
    assert check_float(math.inf, "x", finite=False, low=0.0) == math.inf
    with pytest.raises(ValueError, match="lie in"):
        check_float(-math.inf, "x", finite=False, low=0.0)


def test_check_fraction_and_probability() -> None:
    assert check_fraction(0.25, "s") == 0.25
    for edge in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"s must lie in \(0, 1\)"):
            check_fraction(edge, "s")
        with pytest.raises(ValueError, match=r"delta must be a probability in \(0, 1\)"):
            check_probability(edge, "delta")
    assert check_fraction(0.0, "s", low_open=False) == 0.0
    assert check_fraction(1, "s", high_open=False) == 1.0
    with pytest.raises(ValueError, match=r"s must lie in \[0, 1\]"):
        check_fraction(1.5, "s", low_open=False, high_open=False)
    with pytest.raises(TypeError):
        check_probability(True, "delta")
    assert check_probability(0.1, "delta") == 0.1


def test_check_choice() -> None:
    assert check_choice("a", ("a", "b"), "mode") == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'A'"):
        check_choice("A", ("a", "b"), "mode")
    with pytest.raises(TypeError, match=r"mode must be a str"):
        check_choice(1, ("a", "b"), "mode")


def test_check_bool() -> None:
    assert check_bool(True, "flag") is True
    assert check_bool(False, "flag") is False
    for bad in (0, 1, "yes", None, torch.tensor(True)):
        with pytest.raises(TypeError, match=r"flag must be True or False"):
            check_bool(bad, "flag")


def test_check_module() -> None:
    layer = nn.Linear(2, 2)
    assert check_module(layer, "model") is layer
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got dict"):
        check_module({}, "model")


def test_check_generator() -> None:
    gen = torch.Generator().manual_seed(0)
    assert check_generator(gen, "generator") is gen
    assert check_generator(None, "generator") is None
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None.*seed"):
        check_generator(0, "generator")


def test_check_tensor_returns_same_object() -> None:
    x = torch.ones(3, 2)
    assert check_tensor(x, "x", ndim=2, min_rows=3, device="cpu") is x


def test_check_tensor_refusals() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        check_tensor([1.0], "x")
    with pytest.raises(TypeError, match=r"x must be a real tensor, got complex"):
        check_tensor(torch.ones(2, dtype=torch.complex64), "x", floating=False)
    with pytest.raises(TypeError, match=r"x must have a floating dtype, got torch.int64"):
        check_tensor(torch.ones(2, dtype=torch.int64), "x")
    assert check_tensor(torch.ones(2, dtype=torch.int64), "x", floating=False).dtype == torch.int64
    with pytest.raises(ValueError, match=r"x must have 2 dimension\(s\), got shape \(3,\)"):
        check_tensor(torch.ones(3), "x", ndim=2)
    with pytest.raises(ValueError, match=r"at least 2 row\(s\)"):
        check_tensor(torch.ones(1, 3), "x", min_rows=2)
    with pytest.raises(ValueError, match=r"at least one dimension"):
        check_tensor(torch.tensor(1.0), "x", min_rows=1)
    with pytest.raises(ValueError, match=r"x is on cpu but must be on meta"):
        check_tensor(torch.ones(2), "x", device="meta")


def test_check_tensor_finiteness() -> None:
    bad = torch.tensor([1.0, math.nan])
    with pytest.raises(ValueError, match=r"x contains NaN or infinity"):
        check_tensor(bad, "x")
    with pytest.raises(ValueError, match=r"x contains NaN or infinity"):
        check_tensor(torch.tensor([math.inf]), "x")
    assert check_tensor(bad, "x", finite=False) is bad
