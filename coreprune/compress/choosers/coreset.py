"""The coreset as a chooser: each pair's kept units in the network as compressed so far, with the
worst-case certificate of what it keeps.

Its `choice` setting picks how units are ranked once a count is given:
- "refit" (the default with calibration): greedy structured OBS (`obs.GreedyOBS`), choosing for
  what the consumer's refit loses; the worst-case certificate only with `worst_case`;
- "empirical" / "empirical_rms": the worst-row or root-mean-square empirical sensitivity on
  calibration data, certified by the worst-case bounds;
- "certified": `coreset_prune` on the worst-case sensitivities (also what `eps=` runs, and the
  only choice without calibration).
Coupled groups are chosen on the dense model by the summed refit error of their consumers
("refit") or their summed empirical sensitivities; the global allocation levels the certified
eps curves of single pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from coreprune.compress.capture import capture_input
from coreprune.compress.choosers.base import Choice, ChoiceContext, ChoiceSettings, Chooser, ones
from coreprune.compress.choosers.group_scores import GroupScores
from coreprune.compress.choosers.obs import GreedyOBS, cached_group_scores, top_scored
from coreprune.compress.choosers.worst_case import (
    PairSensitivities,
    WorstCase,
    modules_of,
    nonzero_units,
    out_units,
)
from coreprune.coreset.empirical import empirical_unit_scores, mean_square_unit_scores
from coreprune.coreset.prune import coreset_prune
from coreprune.surgery.graph import PrunablePair
from coreprune.surgery.groups import ChannelGroup
from coreprune.surgery.units import next_weights

__all__ = ["CHOICES", "DEFAULT_RANK", "CoresetChooser"]

CHOICES = ("refit", "certified", "empirical", "empirical_rms")
DEFAULT_RANK = 8


class CoresetChooser(Chooser):
    """Chooses each pair's kept units with the coreset, in the current (partly cut) model."""

    name = "coreset"
    certifies = True
    modes = ("select", "sample")
    rewires_by_default = True

    def __init__(
        self,
        *,
        mode: str = "select",
        eps: float | None = None,
        delta: float = 0.1,
        sensitivity: str = "auto",
        generator: torch.Generator | None = None,
        rank: int = DEFAULT_RANK,
        rank_given: bool = False,
        choice: str = "certified",
        worst_case: bool = True,
    ) -> None:
        self.mode, self.eps, self.delta = mode, eps, delta
        self.sensitivity, self.generator, self.choice = sensitivity, generator, choice
        self.worst_case = worst_case
        self.bounds = WorstCase(sensitivity, rank, rank_given)
        self.obs = GreedyOBS()

    @classmethod
    def from_settings(cls, settings: ChoiceSettings) -> CoresetChooser:
        return cls(
            mode=settings.mode, eps=settings.eps, delta=settings.delta,
            sensitivity=settings.sensitivity, generator=settings.generator, rank=settings.rank,
            rank_given=settings.rank_given, choice=settings.choice,
            worst_case=settings.worst_case,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"CoresetChooser(choice={self.choice!r}, mode={self.mode!r})"

    def error_curve(
        self, model: nn.Module, item: ChannelGroup, context: ChoiceContext
    ) -> torch.Tensor:
        """A pair's certified eps curve; a coupled group's summed-sensitivity curve."""
        if item.pair is not None:
            return self.bounds.curve(model, item.pair, context.calibration, context.cache)
        return self._group_scores(model, item, context).curve()

    def global_label(self, level: float, coupled: bool) -> str:
        label = f"common eps {level:.4g} (certified), scored on the dense model"
        if coupled:
            label += "; coupled groups on their summed sensitivities (not certified)"
        return label

    def choose(
        self, model: nn.Module, item: ChannelGroup, count: int | None, context: ChoiceContext
    ) -> Choice:
        if item.pair is None:
            assert count is not None  # coupled groups are pruned with target= only
            if self.choice == "refit" and context.calibration is not None:
                return self.obs.choose(model, item, count, context)
            return top_scored(self._group_scores(model, item, context), item, count)
        return self._pair(model, item.pair, count, context)

    def _group_scores(
        self, model: nn.Module, group: ChannelGroup, context: ChoiceContext
    ) -> GroupScores:
        rms = self.choice in ("empirical_rms", "refit")
        return cached_group_scores(model, group, context, mean_square=rms)

    def _pair(
        self, model: nn.Module, pair: PrunablePair, count: int | None, context: ChoiceContext
    ) -> Choice:
        producer, norm, _ = modules_of(model, pair)
        n = out_units(producer)
        notes: list[str] = []
        nonzero = nonzero_units(producer, norm)
        if nonzero.numel() == 0:
            note = "every unit is all-zero (outputs 0); kept unit 0: at least one unit stays"
            return Choice.of(torch.zeros(1, dtype=torch.long), note)
        if nonzero.numel() < n:
            notes.append(f"{n - nonzero.numel()} all-zero units (output exactly 0) removed first")
        if any("max" in kind for kind in pair.pooling):
            notes.append(
                "max pooling between the layers: eps covers the map before pooling only, not "
                "the pooled network (docs/theory.md §8)"
            )
        if count is not None and count > nonzero.numel():
            notes.append(f"budget allowed {count} units, only {nonzero.numel()} are non-zero")
            count = nonzero.numel()
        calibration = context.calibration
        if self.choice == "refit" and count is not None and calibration is not None:
            return self._refit(model, pair, count, context, nonzero, notes)
        bounds = self.bounds.of(model, pair, calibration, context.cache)
        if self.choice != "certified" and count is not None and calibration is not None:
            keep_sub = self._empirical(model, pair, bounds, count, calibration)
            scale, cert = ones(keep_sub.numel()), bounds.certificate(bounds.nonzero[keep_sub])
            how = "root-mean-square" if self.choice == "empirical_rms" else "worst-row"
            notes.append(f"units chosen by {how} empirical sensitivity on calibration data")
        else:
            sub_producer, sub_norm, sub_consumer = bounds.sub
            result = coreset_prune(
                sub_producer, sub_consumer, eps=self.eps if count is None else None,
                delta=self.delta, mode=self.mode, keep=count, query=bounds.query,
                generator=self.generator, activation=pair.activation, norm=sub_norm,
                sensitivity=self.sensitivity, sensitivities=bounds.sens,
            )  # fmt: skip
            keep_sub, scale = result.keep.cpu(), result.scale.detach().cpu()
            cert = result.certificate
        if keep_sub.numel() == 1 and count != 1:
            notes.append("kept 1 unit: at least one unit stays")
        keep = bounds.nonzero[keep_sub]
        return Choice(keep, scale, cert, bounds.per_next_all(n), "; ".join(notes))

    def _refit(
        self,
        model: nn.Module,
        pair: PrunablePair,
        count: int,
        context: ChoiceContext,
        nonzero: torch.Tensor,
        notes: list[str],
    ) -> Choice:
        """Greedy structured OBS against the refit; the worst-case certificate of the kept set
        only when asked (`worst_case`): it is vacuous at the budgets users prune to."""
        picked = self.obs.pair_choice(model, pair, count, context, nonzero)
        notes.append(picked.note)
        cert, per_next = None, None
        if self.worst_case:
            bounds = self.bounds.of(model, pair, context.calibration, context.cache)
            cert = bounds.certificate(picked.keep)
            per_next = bounds.per_next_all(out_units(model.get_submodule(pair.producer)))
        else:
            notes.append("worst-case certificate not computed (worst_case=True computes it)")
        return Choice(picked.keep, picked.scale, cert, per_next, "; ".join(notes), picked.selection)

    def _empirical(
        self,
        model: nn.Module,
        pair: PrunablePair,
        bounds: PairSensitivities,
        count: int,
        calibration: torch.Tensor,
    ) -> torch.Tensor:
        """Top `count` non-zero units by empirical sensitivity (indices among the non-zero)."""
        acts = capture_input(model, pair.consumer, calibration)
        full_producer = model.get_submodule(pair.producer)
        n = out_units(full_producer)
        if not isinstance(full_producer, nn.Conv2d) and acts.shape[-1] == n:
            acts = acts.reshape(-1, n)  # (batch, tokens, ..., n): every leading index a row
        elif acts.ndim == 2 and acts.shape[1] != n:  # flatten -> Linear: one row per position
            acts = acts.reshape(acts.shape[0], n, -1, 1)
        acts = acts.index_select(1, bounds.nonzero.to(acts.device))
        reading = next_weights(bounds.sub[2], bounds.nonzero.numel(), device=acts.device)
        score = mean_square_unit_scores if self.choice == "empirical_rms" else empirical_unit_scores
        scores = score(acts, reading).cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        return torch.sort(order[:count]).values
