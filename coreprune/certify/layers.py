"""Per-layer held-out certificates: how often a layer's output error exceeds eps.

For each compared layer, every held-out input runs through the dense network and through the
pruned network (so the pruned layer sees what the pruned network really feeds it), and the
relative error ||z - z_hat|| / ||z|| of that layer's output (per example, all output
coordinates) is compared with eps. The count of exceedances gives an exact Clopper-Pearson
upper bound on the probability that a deployment input exceeds eps at that layer.

This is the held-out counterpart of a layer's worst-case eps: it certifies a fraction of the
distribution instead of every input of a query space, and it includes the error carried in
from the layers pruned before it. With `simultaneous=True` delta is split evenly over the
layers (Bonferroni), so all the bounds hold together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coreprune.certify._data import (
    DEFAULT_BATCH_SIZE,
    Holdout,
    check_batch_size,
    check_confidence,
    check_fits,
    check_holdout,
    check_model,
    on_device,
    read_only,
    run_device,
)
from coreprune.certify.bounds import clopper_pearson_upper
from coreprune.certify.heldout import ASSUMPTION
from coreprune.checks import check_bool, check_float
from coreprune.compress import LayerRow

__all__ = ["LayerExceedance", "LayerExceedanceReport", "layer_exceedance"]


@dataclass(frozen=True)
class LayerExceedance:
    """One layer: the share of held-out inputs whose relative output error exceeds `eps`.

    `exceed_upper` bounds the probability of exceeding `eps` on a deployment input, at failure
    probability `delta`. `units` is the dense output units compared (the kept ones when the
    layer was itself pruned as a producer), None when the outputs are compared whole.
    """

    dense_name: str
    pruned_name: str
    eps: float
    n: int
    exceed: int
    exceed_fraction: float
    exceed_upper: float
    delta: float
    median_error: float
    worst_error: float
    units: int | None


@dataclass(frozen=True)
class LayerExceedanceReport(Sequence[LayerExceedance]):
    """The layers (iterate or index it like a list), the confidence and the assumption."""

    layers: tuple[LayerExceedance, ...]
    confidence: float
    simultaneous: bool
    assumption: str = ASSUMPTION

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: Any) -> Any:
        return self.layers[index]

    def __iter__(self) -> Iterator[LayerExceedance]:
        return iter(self.layers)

    def __str__(self) -> str:
        together = "together" if self.simultaneous else "each on its own"
        lines = [
            f"layer exceedance, confidence {self.confidence:g} ({together}):",
            "| layer | eps | n | exceed | observed | certified <= | median err | worst err |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.layers:
            name = (
                r.dense_name
                if r.dense_name == r.pruned_name
                else f"{r.dense_name} / {r.pruned_name}"
            )
            lines.append(
                f"| {name} | {r.eps:g} | {r.n} | {r.exceed} | {r.exceed_fraction:.4f} | "
                f"{r.exceed_upper:.4f} | {r.median_error:.3g} | {r.worst_error:.3g} |"
            )
        lines.append(f"assumes {self.assumption}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Target:
    dense_name: str
    pruned_name: str
    keep: torch.Tensor | None  # dense output units the pruned layer still has


def layer_exceedance(
    dense: nn.Module,
    pruned: nn.Module,
    layers: Sequence[tuple[str, str]] | Sequence[LayerRow],
    holdout: Holdout | torch.Tensor,
    eps: float,
    confidence: float = 0.95,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    simultaneous: bool = True,
) -> LayerExceedanceReport:
    """Upper confidence bounds on P(||z - z_hat|| / ||z|| > eps) at each layer.

    `layers`: (dense_module_name, pruned_module_name) pairs, or the rows of a compress report
    (each row's consumer is compared, in both models under the same name, every consumer of a
    coupled group's row; when a consumer is also a row's producer, only its kept output units
    are compared). `holdout`: a
    DataLoader, an (inputs, labels) pair or a tensor of inputs; labels are not used. An output
    with ||z|| = 0 counts as error 0 if z_hat = 0 too, else as infinite. `device` is read as
    `certify` reads it. Before the run both models are tried on one held-out example, so inputs
    they cannot take are a ValueError naming the holdout.
    """
    check_model(dense, "dense")
    check_model(pruned, "pruned")
    confidence = check_confidence(confidence)
    eps = check_float(eps, "eps", low=0.0)
    check_bool(simultaneous, "simultaneous")
    where = run_device(device, dense)
    targets = _targets(dense, pruned, layers)
    batches = check_holdout(holdout, check_batch_size(batch_size), labelled=False)
    delta = (1.0 - confidence) / (len(targets) if simultaneous else 1)
    run_dense, run_pruned = on_device(dense, where), on_device(pruned, where)
    # Before the layer hooks go in: a failure in them must not read as a holdout that misfits.
    probe = batches.first()[0][:1].to(where)
    check_fits(run_dense, probe, "dense")
    check_fits(run_pruned, probe, "pruned")
    errors = _errors(run_dense, run_pruned, targets, batches, where, (dense, pruned))
    rows = []
    for target, err in zip(targets, errors, strict=True):
        n = int(err.numel())
        if n == 0:
            raise ValueError("holdout is empty: pass at least one held-out example")
        exceed = int((err > eps).sum())
        rows.append(
            LayerExceedance(
                dense_name=target.dense_name,
                pruned_name=target.pruned_name,
                eps=float(eps),
                n=n,
                exceed=exceed,
                exceed_fraction=exceed / n,
                exceed_upper=clopper_pearson_upper(exceed, n, delta),
                delta=delta,
                median_error=float(err.median()),
                worst_error=float(err.max()),
                units=None if target.keep is None else int(target.keep.numel()),
            )
        )
    return LayerExceedanceReport(tuple(rows), confidence, simultaneous)


def _targets(dense: nn.Module, pruned: nn.Module, layers: object) -> list[_Target]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(
            "layers must be a list of (dense_module_name, pruned_module_name) pairs or the rows "
            f"of a compress report, got {type(layers).__name__}"
        )
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one (dense, pruned) module pair")
    rows = [r for r in layers if isinstance(r, LayerRow)]
    keeps = {name: r.keep for r in rows for name in _members(r.producer)}
    dense_names, pruned_names = dict(dense.named_modules()), dict(pruned.named_modules())
    pairs: list[tuple[str, str]] = []
    for item in layers:
        if isinstance(item, LayerRow):  # a coupled group's row names every consumer
            pairs += [(c, c) for c in _members(item.consumer) if (c, c) not in pairs]
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and all(isinstance(s, str) for s in item)
        ):
            pairs.append((item[0], item[1]))
        else:
            raise TypeError(
                "layers must hold (dense_module_name, pruned_module_name) string pairs or "
                f"compress report rows, got {item!r}"
            )
    out = []
    for names in pairs:
        for name, table, which in ((names[0], dense_names, "dense"),
                                   (names[1], pruned_names, "pruned")):  # fmt: skip
            if name not in table:
                raise ValueError(f"layers: {which} model has no module named {name!r}")
        out.append(_Target(names[0], names[1], keeps.get(names[0])))
    return out


def _members(names: str) -> list[str]:
    """The module names of a report row's producer or consumer (a group joins them with " + ")."""
    return [n.strip() for n in names.split(" + ")]


def _errors(
    dense: nn.Module,
    pruned: nn.Module,
    targets: list[_Target],
    batches: object,
    where: torch.device,
    originals: tuple[nn.Module, nn.Module],
) -> list[torch.Tensor]:
    """Per-example relative errors of every target layer over the whole holdout."""
    found: dict[tuple[str, int], torch.Tensor] = {}

    def recorder(key: tuple[str, int]):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _i: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {key[0]!r} returns {type(output).__name__}, not a tensor")
            found[key] = output.detach()

        return hook

    handles = []
    for side, model in ((0, dense), (1, pruned)):
        for t in targets:
            name = t.dense_name if side == 0 else t.pruned_name
            handles.append(model.get_submodule(name).register_forward_hook(recorder((name, side))))
    out: list[list[torch.Tensor]] = [[] for _ in targets]
    try:
        with read_only(*originals, dense, pruned):
            for x, _ in batches:  # type: ignore[attr-defined]
                x = x.to(where)
                dense(x)
                pruned(x)
                for i, t in enumerate(targets):
                    z = found[(t.dense_name, 0)]
                    z_hat = found[(t.pruned_name, 1)]
                    if t.keep is not None and z.shape[1:] != z_hat.shape[1:]:
                        z = z.index_select(1, t.keep.to(z.device))
                    if z.shape != z_hat.shape:
                        raise ValueError(
                            f"layers: {t.dense_name!r} gives shape {tuple(z.shape)} in the dense "
                            f"model and {t.pruned_name!r} gives {tuple(z_hat.shape)} in the "
                            "pruned one; compare layers whose outputs match (e.g. pass the "
                            "compress report rows, which know the kept units)"
                        )
                    for which, name, value in (("dense", t.dense_name, z),
                                               ("pruned", t.pruned_name, z_hat)):  # fmt: skip
                        _check_finite_layer(value, which, name)
                    out[i].append(_relative(z, z_hat).cpu())
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(e) if e else torch.empty(0) for e in out]


def _check_finite_layer(output: torch.Tensor, which: str, name: str) -> None:
    """A NaN output would compare as "not above eps" and be counted as a success: refuse it."""
    if not bool(torch.isfinite(output).all()):
        raise ValueError(
            f"{which}: layer {name!r} returned NaN or Inf on the holdout; a relative error of a "
            "non-finite output is undefined, so no exceedance bound is given: fix the model"
        )


def _relative(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    z = z.flatten(1).to(torch.float64)
    diff = torch.linalg.vector_norm(z - z_hat.flatten(1).to(torch.float64), dim=1)
    norm = torch.linalg.vector_norm(z, dim=1)
    rel = diff / norm.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(norm > 0, rel, torch.where(diff > 0, torch.inf, 0.0))
