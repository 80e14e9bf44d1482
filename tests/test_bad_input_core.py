"""Bad input to the library core is refused before any work, with the right type and a fix.

Each case names a call, the exception type it must raise (ValueError for a bad value, TypeError for
a bad type) and a fragment of the message, which must name the argument or say what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from coreprune.coreset import QuerySpace, Sensitivities, compute_sensitivities, coreset_prune
from coreprune.geometry import caratheodory, mvee


def _zero_width_linear() -> nn.Linear:
    """nn.Linear(0, 5), built without torch's "zero-element tensors" init warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(0, 5)


NAN = float("nan")


def _linear(d_in: int = 3, n: int = 5, seed: int = 0, **kw: object) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, n, **kw)  # type: ignore[arg-type]


def _nan_filter() -> nn.Linear:
    layer = _linear()
    with torch.no_grad():
        layer.weight[2, 1] = NAN
    return layer


def _nan_conv() -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight[1, 0, 0, 0] = NAN
    return conv


def _nan_next() -> nn.Linear:
    layer = _linear(5, 2)
    with torch.no_grad():
        layer.weight[0, 0] = NAN
    return layer


def _prune(**kw: object) -> Callable[[], object]:
    kw.setdefault("layer", _linear())
    kw.setdefault("eps", 0.5)
    kw.setdefault("mode", "select")
    return lambda: coreset_prune(**kw)  # type: ignore[arg-type]


def _units(n: int = 4, d: int = 2) -> torch.Tensor:
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _pts() -> torch.Tensor:
    return _units(6, 2)


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # coreset_prune: the layer pair
    ("nan_in_a_filter", _prune(layer=_nan_filter()), ValueError, "contains NaN or Inf"),
    ("nan_in_a_conv_filter", _prune(layer=_nan_conv()), ValueError, "contains NaN or Inf"),
    (
        "conv1d_layer",
        _prune(layer=nn.Conv1d(3, 5, 1)),
        TypeError,
        "nn.Linear, nn.Conv2d or HF-style Conv1D",
    ),
    ("grouped_conv", _prune(layer=nn.Conv2d(4, 4, 3, groups=2)), ValueError, "groups=2"),
    (
        "not_a_module",
        _prune(layer=torch.randn(5, 3)),
        TypeError,
        "nn.Linear, nn.Conv2d or HF-style Conv1D",
    ),
    (
        "next_layer_wrong_width",
        _prune(next_layer=nn.Linear(7, 2)),
        ValueError,
        "reads 7 inputs but the layer has 5 units",
    ),
    (
        "linear_next_layer_twice_as_wide",
        _prune(next_layer=nn.Linear(10, 2)),
        ValueError,
        "reads 10 inputs but the layer has 5 units",
    ),
    ("nan_in_next_layer", _prune(next_layer=_nan_next()), ValueError, "next_layer.weight"),
    ("norm_wrong_width", _prune(norm=nn.BatchNorm1d(4)), ValueError, "4 features"),
    ("norm_wrong_type", _prune(norm=nn.LayerNorm(5)), TypeError, "BatchNorm1d/2d"),
    # coreset_prune: the request
    ("eps_nan", _prune(eps=NAN), ValueError, "eps must be a number, got NaN"),
    ("eps_negative", _prune(eps=-0.1), ValueError, "eps must lie in (0, inf)"),
    ("eps_string", _prune(eps="0.5"), TypeError, "eps must be a real number"),
    ("eps_and_keep", _prune(keep=2), ValueError, "give exactly one of eps"),
    ("neither_eps_nor_keep", _prune(eps=None), ValueError, "give exactly one of eps"),
    ("keep_zero", _prune(eps=None, keep=0), ValueError, "keep must be >= 1"),
    ("keep_too_many", _prune(eps=None, keep=6), ValueError, "keep must be <= 5"),
    ("keep_float", _prune(eps=None, keep=2.0), TypeError, "keep must be an int"),
    ("delta_one", _prune(mode="sample", delta=1.0), ValueError, "delta must be a probability"),
    ("mode_case", _prune(mode="Select"), ValueError, "mode must be one of"),
    ("sensitivity_unknown", _prune(sensitivity="lp"), ValueError, "sensitivity must be one of"),
    ("tol_out_of_range", _prune(tol=5.0), ValueError, "tol must be a number in (0, 1)"),
    (
        "max_pooling_string",
        _prune(max_pooling="yes"),
        TypeError,
        "max_pooling must be True or False",
    ),
    ("query_not_a_space", _prune(query=torch.eye(3)), TypeError, "query must be a coreprune"),
    (
        "wrong_shape_calibration",
        _prune(query=QuerySpace.from_calibration(torch.randn(10, 4), 2)),
        ValueError,
        "query lives in R^4 but the layer's inputs are in R^3",
    ),
    (
        "sensitivities_not_sensitivities",
        _prune(sensitivities=torch.ones(1, 5)),
        TypeError,
        "sensitivities must come from an earlier result",
    ),
    (
        "sensitivities_without_provenance",
        _prune(sensitivities=Sensitivities(torch.zeros(1, 5, dtype=torch.float64))),
        ValueError,
        "carry no provenance",
    ),
    # activations: unknown names vs names that cannot be certified
    ("activation_trailing_space", _prune(activation="relu "), ValueError, "not a known activation"),
    ("activation_sigmoid", _prune(activation="sigmoid"), ValueError, "is not covered"),
    ("activation_softplus", _prune(activation="softplus"), ValueError, "is not covered"),
    ("activation_gelu_tanh_arg", _prune(activation="gelu:tanh"), ValueError, "gelu_tanh"),
    ("activation_relu_with_arg", _prune(activation="relu:0.5"), ValueError, "write 'relu'"),
    ("activation_bad_slope", _prune(activation="leaky_relu:abc"), ValueError, "slope"),
    ("activation_slope_two", _prune(activation="leaky_relu:2"), ValueError, "|slope| <= 1"),
    ("activation_not_a_name", _prune(activation=3), TypeError, "activation must be"),
    # QuerySpace
    (
        "calibration_rank_true",
        lambda: QuerySpace.from_calibration(torch.randn(10, 3), True),
        TypeError,
        "rank must be an int",
    ),
    (
        "calibration_rank_zero",
        lambda: QuerySpace.from_calibration(torch.randn(10, 3), 0),
        ValueError,
        "rank must be an int in [1, 3]",
    ),
    (
        "calibration_rank_above_span",
        lambda: QuerySpace.from_calibration(torch.ones(10, 3), 1),
        ValueError,
        "span only 0 directions",
    ),
    (
        "calibration_nan_row",
        lambda: QuerySpace.from_calibration(torch.tensor([[1.0, NAN], [0.0, 1.0]]), 1),
        ValueError,
        "drop those rows",
    ),
    (
        "calibration_complex",
        lambda: QuerySpace.from_calibration(torch.randn(10, 3, dtype=torch.complex64), 2),
        TypeError,
        "inputs must be a real tensor",
    ),
    (
        "calibration_one_dimensional",
        lambda: QuerySpace.from_calibration(torch.randn(10), 2),
        ValueError,
        "inputs must be 2-D",
    ),
    (
        "calibration_affine_string",
        lambda: QuerySpace.from_calibration(torch.randn(10, 3), 2, affine="yes"),
        TypeError,
        "affine must be a bool",
    ),
    (
        "calibration_list",
        lambda: QuerySpace.from_calibration([[1.0, 2.0]], 1),
        TypeError,
        "inputs must be a torch.Tensor",
    ),
    ("full_dim_bool", lambda: QuerySpace.full(True), TypeError, "dim must be an int"),
    ("full_dim_zero", lambda: QuerySpace.full(0), ValueError, "dim must be a positive int"),
    (
        "subspace_dependent",
        lambda: QuerySpace.subspace(torch.ones(3, 2)),
        ValueError,
        "linearly dependent",
    ),
    (
        "subspace_complex",
        lambda: QuerySpace.subspace(torch.eye(3, 1, dtype=torch.complex64)),
        TypeError,
        "basis must be a real tensor",
    ),
    (
        "subspace_meta",
        lambda: QuerySpace.subspace(torch.eye(3, 1, device="meta")),
        ValueError,
        "meta device",
    ),
    (
        "subspace_offset_shape",
        lambda: QuerySpace.subspace(torch.eye(3, 1), torch.zeros(2)),
        ValueError,
        "offset must have shape (3,)",
    ),
    (
        "subspace_offset_nan",
        lambda: QuerySpace.subspace(torch.eye(3, 1), torch.tensor([0.0, NAN, 0.0])),
        ValueError,
        "offset contains NaN",
    ),
    # compute_sensitivities
    (
        "sensitivities_nan_units",
        lambda: compute_sensitivities(torch.tensor([[NAN, 1.0]]), torch.ones(1, 1)),
        ValueError,
        "units contains NaN or Inf",
    ),
    (
        "sensitivities_complex_units",
        lambda: compute_sensitivities(_units().to(torch.complex128), torch.ones(1, 4)),
        TypeError,
        "units must be a real tensor",
    ),
    (
        "sensitivities_units_list",
        lambda: compute_sensitivities([[1.0, 2.0]], torch.ones(1, 1)),
        TypeError,
        "units must be a torch.Tensor",
    ),
    (
        "sensitivities_one_dimensional",
        lambda: compute_sensitivities(torch.randn(4), torch.ones(1, 4)),
        ValueError,
        "units must be 2-D",
    ),
    (
        "sensitivities_meta_units",
        lambda: compute_sensitivities(torch.randn(4, 2, device="meta"), torch.ones(1, 4)),
        ValueError,
        "meta device",
    ),
    (
        "sensitivities_reading_shape",
        lambda: compute_sensitivities(_units(), torch.ones(1, 3)),
        ValueError,
        "reading must have shape (k, 4)",
    ),
    (
        "sensitivities_reading_nan",
        lambda: compute_sensitivities(_units(), torch.tensor([[1.0, NAN, 1.0, 1.0]])),
        ValueError,
        "reading contains NaN",
    ),
    (
        "sensitivities_method_case",
        lambda: compute_sensitivities(_units(), torch.ones(1, 4), "Exact"),
        ValueError,
        "sensitivity must be one of",
    ),
    (
        "sensitivities_tol_zero",
        lambda: compute_sensitivities(_units(), torch.ones(1, 4), tol=0),
        ValueError,
        "tol must be a number in (0, 1)",
    ),
    (
        "sensitivities_query_rank",
        lambda: compute_sensitivities(_units(), torch.ones(1, 4), query=QuerySpace.full(3)),
        ValueError,
        "lift the units",
    ),
    (
        "sensitivities_negative_error",
        lambda: compute_sensitivities(_units(), torch.ones(1, 4), error=-torch.ones(4, 2)),
        ValueError,
        "error must be nonnegative",
    ),
    # mvee
    ("mvee_complex", lambda: mvee(_pts().to(torch.complex128)), TypeError, "real floating"),
    ("mvee_nan", lambda: mvee(torch.tensor([[1.0, NAN], [0.0, 1.0]])), ValueError, "NaN or Inf"),
    ("mvee_list", lambda: mvee([[1.0, 2.0], [3.0, 4.0]]), TypeError, "torch.as_tensor"),
    ("mvee_one_dimensional", lambda: mvee(torch.randn(5)), ValueError, "must be 2-D"),
    ("mvee_meta", lambda: mvee(torch.randn(5, 2, device="meta")), ValueError, "meta device"),
    ("mvee_tol_two", lambda: mvee(_pts(), tol=2.0), ValueError, "tol must be < 1"),
    ("mvee_tol_nan", lambda: mvee(_pts(), tol=NAN), ValueError, "tol must be a number, got NaN"),
    ("mvee_centered_int", lambda: mvee(_pts(), centered=1), TypeError, "centered must be a bool"),
    ("mvee_max_iter_zero", lambda: mvee(_pts(), max_iter=0), ValueError, "max_iter must be >= 1"),
    # caratheodory
    (
        "caratheodory_negative_weight",
        lambda: caratheodory(_pts(), torch.tensor([1.0, -1, 1, 1, 1, 1])),
        ValueError,
        "nonnegative",
    ),
    (
        "caratheodory_weight_length",
        lambda: caratheodory(_pts(), torch.ones(4)),
        ValueError,
        "length 6",
    ),
    (
        "caratheodory_zero_weights",
        lambda: caratheodory(_pts(), torch.zeros(6)),
        ValueError,
        "positive sum",
    ),
    (
        "caratheodory_inf_weight",
        lambda: caratheodory(_pts()[:2], torch.tensor([1.0, float("inf")])),
        ValueError,
        "NaN or Inf",
    ),
    (
        "caratheodory_complex",
        lambda: caratheodory(_pts().to(torch.complex128), torch.ones(6)),
        TypeError,
        "real floating",
    ),
    (
        "caratheodory_tol_bool",
        lambda: caratheodory(_pts(), torch.ones(6), tol=True),
        TypeError,
        "tol must be a real number",
    ),
    (
        "caratheodory_meta",
        lambda: caratheodory(torch.randn(6, 2, device="meta"), torch.ones(6, device="meta")),
        ValueError,
        "meta device",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused(
    call: Callable[[], object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value), str(info.value)


# Checks that belong to coreprune.surgery (check_producer / check_consumer) and to coreset_prune's
# own argument checks: recorded here so that they fail loudly until those land.

SURGERY_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "complex_layer",
        _prune(layer=nn.Linear(3, 5, dtype=torch.complex64)),
        TypeError,
        "complex",
    ),
    (
        "complex_next_layer",
        _prune(next_layer=nn.Linear(5, 2, dtype=torch.complex64)),
        TypeError,
        "complex",
    ),
    ("meta_device_layer", _prune(layer=nn.Linear(3, 5, device="meta")), ValueError, "meta"),
    ("zero_width_linear", _prune(layer=_zero_width_linear()), ValueError, "in_features=0"),
]


@pytest.mark.parametrize(
    ("call", "error", "fragment"), [c[1:] for c in SURGERY_CASES], ids=[c[0] for c in SURGERY_CASES]
)
def test_bad_layers_are_refused(
    call: Callable[[], object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value), str(info.value)


def test_a_generator_that_is_not_one_is_refused_before_any_work() -> None:
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        coreset_prune(_linear(), mode="sample", keep=2, generator=3)  # type: ignore[arg-type]


def test_nothing_is_mutated_by_a_refused_call() -> None:
    layer = _nan_filter()
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError):
        coreset_prune(layer, eps=0.5, mode="select")
    assert torch.equal(before.isnan(), layer.weight.isnan())
    assert torch.equal(before.nan_to_num(), layer.weight.detach().nan_to_num())
