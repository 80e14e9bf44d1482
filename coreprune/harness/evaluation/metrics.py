"""Size, cost, speed and per-layer error of a model, measured the same way for every method.

Every function only reads the model: the train/eval flag of each submodule is restored, and
nothing runs with autograd. `count_params` and `count_macs` are the library's own (from
`coreprune.compress.cost`, re-exported here), so the harness and `compress` cost a model by the
same rules.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from coreprune.checks import check_int, check_module
from coreprune.compress.cost import Inputs, as_args, count_macs, count_params
from coreprune.torch_utils import eval_mode, model_device, resolve_device

__all__ = ["LatencyStats", "count_macs", "count_params", "layer_errors", "measure_latency"]


@dataclass(frozen=True)
class LatencyStats:
    """Forward-pass wall time in milliseconds over `repeats` timed runs on `device`."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    device: str


def measure_latency(
    model: nn.Module,
    example_input: Inputs,
    *,
    warmup: int = 10,
    repeats: int = 50,
    device: str | torch.device | None = None,
) -> LatencyStats:
    """Median and 10/90th percentile forward time, in eval mode under `torch.inference_mode`.

    With `device` different from where the model lives, a copy is moved there (the caller's
    model is never moved). On CUDA the device is synchronised around every timed run so the
    time covers the kernels, not just their launch.
    """
    check_module(model, "model")
    args = as_args(example_input, "example_input")
    check_int(warmup, "warmup", minimum=0)
    check_int(repeats, "repeats", minimum=1)
    home = model_device(model)
    target = home if device is None else resolve_device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    runner = model if target == home else copy.deepcopy(model).to(target)
    args = tuple(a.to(target) for a in args)
    sync = torch.cuda.synchronize if target.type == "cuda" else _no_sync
    times: list[float] = []
    with eval_mode(runner), torch.inference_mode():
        for _ in range(warmup):
            runner(*args)
        for _ in range(repeats):
            sync(target)
            start = time.perf_counter()
            runner(*args)
            sync(target)
            times.append((time.perf_counter() - start) * 1e3)
    p10, p90 = _percentiles(times)
    return LatencyStats(statistics.median(times), p10, p90, repeats, str(target))


def layer_errors(
    dense: nn.Module, compressed: nn.Module, inputs: Inputs, names: Sequence[str]
) -> dict[str, float]:
    """Relative error ||a - b|| / ||a|| of each named module's output, dense (a) vs compressed (b).

    Both models run once in eval mode on the same inputs; forward hooks record the outputs of
    the modules called `name` in each (surgery keeps names). Compare layers whose outputs keep
    their shape, such as the consumer of a pruned pair. A module called several times is
    compared over all its calls. A zero dense output gives 0 if the other is zero too, else inf.
    """
    check_module(dense, "dense")
    check_module(compressed, "compressed")
    args = as_args(inputs, "inputs")
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError("names must be a list of module names such as ['layer1.0.conv2']")
    if len(set(names)) != len(names):
        raise ValueError(f"names has duplicates: {list(names)}")
    ref = _record_outputs(dense, args, names, "dense")
    out = _record_outputs(compressed, args, names, "compressed")
    errors: dict[str, float] = {}
    for name in names:
        a, b = ref[name], out[name]
        if len(a) != len(b):
            raise ValueError(
                f"module {name!r} ran {len(a)} times in dense but {len(b)} times in compressed"
            )
        num = den = 0.0
        for x, y in zip(a, b, strict=True):
            if x.shape != y.shape:
                raise ValueError(
                    f"module {name!r} outputs {tuple(x.shape)} in dense but {tuple(y.shape)} in "
                    "compressed; compare a layer whose output keeps its shape (the consumer)"
                )
            num += float((x - y).pow(2).sum())
            den += float(x.pow(2).sum())
        errors[name] = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)
    return errors


# --------------------------------------------------------------------------------------------


def _record_outputs(
    model: nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str], label: str
) -> dict[str, list[torch.Tensor]]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{label} has no module named {missing}; use names from named_modules()")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inp: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {name!r} returns {type(output).__name__}, not a tensor")
            seen[name].append(output.detach().to(torch.float64, copy=True))

        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        with eval_mode(model, no_grad=True):
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _percentiles(times: list[float]) -> tuple[float, float]:
    if len(times) == 1:
        return times[0], times[0]
    cuts = statistics.quantiles(times, n=10, method="inclusive")
    return cuts[0], cuts[-1]


def _no_sync(_device: torch.device) -> None:
    return None
