"""`PruneResult`: what `coreset_prune` returns for one layer, and what it can still do with it
(apply the cut, rewire the next layer, certify a rewiring of one's own)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coreprune.checks import check_choice, check_tensor
from coreprune.coreset.certificate import Certificate
from coreprune.coreset.query import QuerySpace
from coreprune.coreset.sensitivity import Sensitivities
from coreprune.surgery.activations import Activation
from coreprune.surgery.rewire import (
    DEFAULT_RIDGE,
    check_same_geometry,
    consumer_from_reading,
    expand_reading,
    merge_weights,
    refit_consumer,
    rewired_eps,
)
from coreprune.surgery.slicing import slice_consumer, slice_norm, slice_producer
from coreprune.surgery.units import (
    Norm,
    Producer,
    layer_units,
    next_weights,
)

COMPENSATIONS = ("none", "merge", "lstsq")


@dataclass(frozen=True)
class PruneResult:
    """Which units to keep, how to rescale them, and what that guarantees."""

    keep: torch.Tensor
    scale: torch.Tensor
    sensitivity: torch.Tensor
    certificate: Certificate
    sensitivities: Sensitivities
    units: torch.Tensor
    reading: torch.Tensor
    activation: Activation
    query: QuerySpace
    layer: Producer
    next_layer: Producer | None
    norm: Norm | None

    @property
    def weights(self) -> torch.Tensor:
        """One multiplier per unit (0 for pruned ones): z^_j = sum_i w_i U_ji phi(p_i . x~)."""
        w = torch.zeros(self.units.shape[0], dtype=torch.float64, device=self.scale.device)
        w[self.keep] = self.scale
        return w

    def apply(
        self,
        compensate: str = "none",
        *,
        calibration: torch.Tensor | None = None,
        ridge: float = DEFAULT_RIDGE,
    ) -> tuple[Producer, Producer | None]:
        """New, smaller (layer, next_layer); the next layer's inputs rescaled. Inputs untouched.

        The certificate assumes kept unit i's output is multiplied by `scale`; the scales go into
        the next layer's input columns. Without a next layer there is nowhere to put them, so a
        result whose scales are not all 1 (mode="sample") is refused with a ValueError rather
        than returned without them; scales of 1 (mode="select") need nothing.

        `compensate` rewires the next layer for what the removed units carried: "merge"
        (data-free: each removed unit folded into its best-matching kept unit) or "lstsq"
        (`calibration`, a batch of this layer's inputs, refits the next layer by ridge least
        squares to reproduce its dense output; the next layer must read this layer's output
        directly or through a flatten). `self.certificate` covers the plain slice ("none");
        `rewired_eps(new_next)` certifies a rewired next layer (often looser, never hidden).
        """
        check_choice(compensate, COMPENSATIONS, "compensate")
        self.check_unchanged()
        if self.next_layer is None and bool((self.scale != 1).any()):
            raise ValueError(
                "apply() needs next_layer: the certificate assumes the kept units' outputs are "
                "multiplied by result.scale (sampling weights), and without a next layer there is "
                "nowhere to put them. Pass next_layer to coreset_prune, use mode='select' "
                "(all scales 1), or multiply the kept outputs by result.scale yourself"
            )
        if compensate != "none" and self.next_layer is None:
            raise ValueError(f"compensate={compensate!r} rewires next_layer; pass next_layer")
        if compensate == "lstsq" and calibration is None:
            raise ValueError(
                "compensate='lstsq' needs calibration= (a batch of this layer's inputs); "
                "use compensate='merge' without data"
            )
        new_layer = slice_producer(self.layer, self.keep)
        if self.next_layer is None:
            return new_layer, None
        n = self.units.shape[0]
        if compensate == "merge":
            scaled = self.reading.clone()
            scaled[:, self.keep] = scaled[:, self.keep] * self.scale.to(scaled)[None, :]
            merged = merge_weights(self.units, scaled, self.keep, self.activation)
            return new_layer, consumer_from_reading(self.next_layer, merged.reading)
        if compensate == "none":
            return new_layer, slice_consumer(self.next_layer, n, self.keep, self.scale)
        assert calibration is not None
        dense_in = self._as_next_input(self._hidden(self.layer, self.norm, calibration))
        pruned_in = self._hidden(new_layer, self.apply_norm(), calibration)
        if isinstance(self.next_layer, nn.Linear):
            pruned_in = pruned_in.flatten(1)
        with torch.no_grad():
            target = self.next_layer(dense_in)
        sliced = slice_consumer(self.next_layer, n, self.keep)  # the refit replaces any scale
        refit, _ = refit_consumer(sliced, pruned_in, target, ridge=ridge)
        return new_layer, refit

    def _hidden(self, layer: Producer, norm: Norm | None, x: torch.Tensor) -> torch.Tensor:
        """phi(norm(layer(x))) with the norm in eval mode, as the certificate reads it."""
        check_tensor(x, "calibration", min_rows=2, device=self.units.device)
        try:
            with torch.no_grad():
                h = layer(x.to(layer.weight.dtype))
                if norm is not None:
                    h = F.batch_norm(
                        h, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        training=False, eps=norm.eps,
                    )  # fmt: skip
        except RuntimeError as err:
            raise ValueError(
                f"calibration does not fit the layer ({err}); pass a batch of this layer's inputs"
            ) from err
        return self.activation(h)

    def _as_next_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next layer's input: the hidden map itself, or flattened before a Linear."""
        assert self.next_layer is not None
        if isinstance(self.next_layer, nn.Linear):
            hidden = hidden.flatten(1)
        if (
            isinstance(self.next_layer, nn.Linear)
            and hidden.shape[1] != self.next_layer.in_features
        ):
            raise ValueError(
                "compensate='lstsq' here needs next_layer to read this layer's output directly or "
                "through a flatten; with pooling in between, use "
                "coreprune.compress(..., compensate='lstsq')"
            )
        return hidden

    def rewired_eps(self, new_next: Producer) -> float:
        """The certified relative error (Theorem R1) of `new_next`, any rewiring of the next
        layer that reads the kept units; inf when it reads a unit the dense layer did not, or
        when its bias changed (an absolute shift the relative certificate cannot cover)."""
        if self.next_layer is None:
            raise ValueError("rewired_eps needs a result computed with next_layer")
        self.check_unchanged()
        check_same_geometry(self.next_layer, new_next, names=("next_layer", "new_next"))
        old_bias, new_bias = self.next_layer.bias, new_next.bias
        if (old_bias is None) != (new_bias is None) or (
            old_bias is not None and new_bias is not None and not torch.equal(old_bias, new_bias)
        ):
            return math.inf
        full = expand_reading(
            next_weights(new_next, self.keep.numel()), self.keep, self.units.shape[0]
        )
        return rewired_eps(self.reading, full, self.sensitivities.per_next)

    def check_unchanged(self) -> None:
        """Refuse to go on if the caller's layers changed since `coreset_prune` ran.

        `layer`, `next_layer` and `norm` are the caller's own modules (never copied), while the
        certificate, `units` and `reading` describe them as they were. Training them or editing
        them in place afterwards would make `apply` slice, and `rewired_eps` certify, layers the
        certificate was not computed for; so both compare the layers' units and reading with the
        stored ones, exactly, first."""
        now = layer_units(self.layer, self.norm).to(self.units)
        changed = [] if torch.equal(now, self.units) else ["layer (or its norm)"]
        if self.next_layer is not None:
            reading = next_weights(self.next_layer, self.units.shape[0]).to(self.reading)
            if not torch.equal(reading, self.reading):
                changed.append("next_layer")
        if changed:
            raise ValueError(
                f"{' and '.join(changed)} changed since coreset_prune ran: the kept units and "
                "the certificate describe the layers as they were then; run coreset_prune again "
                "on the layers as they are now"
            )

    def apply_norm(self) -> Norm | None:
        """The batch norm between the layers, sliced to the kept units (None if there is none)."""
        return None if self.norm is None else slice_norm(self.norm, self.keep)
