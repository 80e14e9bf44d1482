"""`compress`'s arguments, checked once before any work and gathered in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coreprune.checks import (
    check_choice,
    check_float,
    check_fraction,
    check_generator,
    check_int,
    check_module,
    check_probability,
    check_tensor,
)
from coreprune.compress.allocate import ALLOCATIONS
from coreprune.compress.choosers import (
    CHOICES,
    DEFAULT_RANK,
    ChoiceSettings,
    Chooser,
    find_chooser,
)
from coreprune.compress.cost import METRICS, Inputs, as_args
from coreprune.coreset.sensitivity import METHODS as SENSITIVITY_METHODS
from coreprune.torch_utils import eval_mode, model_device

__all__ = ["COMPENSATIONS", "DEFAULT_FLOOR", "MODES", "Options", "check_options"]

MODES = ("select", "sample")
COMPENSATIONS = ("none", "merge", "lstsq")
DEFAULT_FLOOR = 0.1  # no pair keeps fewer than 10% of its units (at least 1) unless asked


@dataclass(frozen=True)
class Options:
    eps: float | None
    target: float | None
    method: str
    mode: str
    allocation: str
    metric: str
    rank: int
    calibration: torch.Tensor | None
    delta: float
    generator: torch.Generator | None
    sensitivity: str
    chooser: Chooser
    compensate: str
    choice: str
    floor: float
    ridge: float
    worst_case: bool = True
    rank_given: bool = False


def check_options(
    model: object, eps: object, target: object, method: object, mode: object,
    allocation: object, metric: object, example_input: object, calibration: object,
    rank: object, delta: object, generator: object, sensitivity: object, compensate: object,
    choice: object, floor: object, ridge: object, worst_case: object = None,
) -> Options:  # fmt: skip
    """Every argument checked (TypeError for a type, ValueError for a value) before any work."""
    model = check_module(model, "model")
    device = model_device(model)
    if (eps is None) == (target is None):
        raise ValueError(
            "give exactly one of eps (each layer's certificate target) and target (the fraction "
            "of the model to remove)"
        )
    generator = check_generator(generator, "generator")
    found = find_chooser(method, generator)
    name = found.name
    mode = check_choice(mode, MODES, "mode")
    allocation = check_choice(allocation, ALLOCATIONS, "allocation")
    if allocation == "global" and not found.allocates_globally():
        raise ValueError(
            f"allocation='global' ranks units across layers, and method {name!r} gives no error "
            "curve to rank by (Chooser.error_curve) and plans no budget (Chooser.plan): use "
            "allocation='uniform'"
        )
    metric = check_choice(metric, METRICS, "metric")
    sensitivity = check_choice(sensitivity, SENSITIVITY_METHODS, "sensitivity")
    eps_value = target_value = None
    if eps is not None:
        eps_value = check_float(eps, "eps", low=0.0, low_open=True)
        if not found.certifies:
            raise ValueError(
                f"eps needs method='coreset' (method={name!r} gives no certificate); "
                "pass target= instead"
            )
        if allocation != "uniform" or metric != "params":
            raise ValueError(
                "allocation and metric apply only with target=; with eps every layer meets the "
                "same certificate target, so leave them at their defaults"
            )
    if target is not None:
        target_value = check_fraction(target, "target")
        if metric == "macs" and example_input is None:
            raise ValueError("metric='macs' needs example_input (a batch the model accepts)")
    if mode not in found.modes:
        raise ValueError(f"mode={mode!r} is a coreset mode; method={name!r} needs mode='select'")
    if example_input is not None:
        for i, tensor in enumerate(as_args(example_input)):
            check_tensor(tensor, f"example_input[{i}]", min_rows=1, floating=False, device=device)
    calib = None
    if calibration is not None:
        calib = check_tensor(calibration, "calibration", min_rows=1, device=device)
    if rank is not None:
        if calib is None:
            raise ValueError("rank sets the calibration query space; pass calibration= with it")
        rank = check_int(rank, "rank", minimum=1)
    delta_value = check_probability(delta, "delta")
    if found.needs_calibration and calib is None:
        raise ValueError(f"method {name!r} chooses on calibration data: pass calibration=")
    if compensate is None:
        rewires = found.rewires_by_default and mode == "select"
        compensate = "none" if not rewires else ("lstsq" if calib is not None else "merge")
    compensate = check_choice(compensate, COMPENSATIONS, "compensate")
    if compensate == "lstsq" and calib is None:
        raise ValueError(
            "compensate='lstsq' refits each consumer on calibration data: pass calibration= "
            "(a batch of model inputs, a few hundred recommended), or use "
            "compensate='merge' (data-free)"
        )
    if compensate != "none" and mode == "sample":
        raise ValueError(
            f"compensate={compensate!r} rewires a selected subset; mode='sample' already "
            "reweights its draw: use mode='select', or compensate='none'"
        )
    if choice is None:
        choice = "refit" if calib is not None and eps is None else "certified"
    choice = check_choice(choice, CHOICES, "choice")
    if choice in ("refit", "empirical", "empirical_rms") and calib is None:
        raise ValueError(f"choice={choice!r} ranks units on data: pass calibration=")
    if choice == "refit" and eps is not None:
        raise ValueError(
            "choice='refit' keeps a given number of units; with eps= the certificate sizes each "
            "layer: pass target= instead, or choice='certified'"
        )
    if worst_case is None:  # rank= or sensitivity= given: the caller asks for a certificate
        worst_case = choice != "refit" or rank is not None or sensitivity != "auto"
    if not isinstance(worst_case, bool):
        raise TypeError(f"worst_case must be True, False or None, got {type(worst_case).__name__}")
    floor_value = check_fraction(floor, "floor", low_open=False, high_open=True)
    ridge_value = check_float(ridge, "ridge", low=0.0, low_open=True)
    rank_value = DEFAULT_RANK if rank is None else rank
    settings = ChoiceSettings(
        mode=mode, eps=eps_value, delta=delta_value, sensitivity=sensitivity,
        generator=generator, rank=rank_value, rank_given=rank is not None, choice=choice,
        worst_case=worst_case,
    )  # fmt: skip
    chooser = found.from_settings(settings) if isinstance(found, type) else found
    return Options(
        eps=eps_value, target=target_value, method=name, mode=mode, allocation=allocation,
        metric=metric, rank=rank_value, calibration=calib,
        delta=delta_value, generator=generator, sensitivity=sensitivity, chooser=chooser,
        compensate=compensate, choice=choice, floor=floor_value, ridge=ridge_value,
        worst_case=worst_case, rank_given=rank is not None,
    )  # fmt: skip


def check_model_inputs(
    model: nn.Module, example_input: Inputs | None, calibration: torch.Tensor | None
) -> None:
    """Run the model once on each given batch, so a wrong shape or dtype is a clear error now."""
    for name, value in (("example_input", example_input), ("calibration", calibration)):
        if value is None:
            continue
        args = as_args(value, name)
        try:
            with eval_mode(model, no_grad=True):
                model(*(a[:1] for a in args))
        except Exception as err:  # the model's own error, re-raised with the argument's name
            raise ValueError(
                f"{name} does not fit the model ({type(err).__name__}: {err}); pass a batch the "
                "model accepts, shaped (batch, ...) like its training inputs"
            ) from err
