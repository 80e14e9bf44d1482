"""The chooser interface: every method `compress` runs goes through `Chooser`, a chooser of
one's own plugs in as an instance or through the registry, and misuse is refused before any
work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from coreprune import compress
from coreprune.compress.choosers import (
    CHOOSERS,
    Choice,
    ChoiceContext,
    ChoiceSettings,
    Chooser,
    GreedyOBS,
    ScorerChooser,
    find_chooser,
)
from coreprune.compress.choosers.base import Budget, Plan
from coreprune.compress.coupled import resolve_groups
from coreprune.scoring import Magnitude
from coreprune.surgery.groups import ChannelGroup

ROOT = Path(__file__).resolve().parents[2]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )


class FirstUnits(Chooser):
    """Keeps units 0..count-1; records what it was asked."""

    name = "first_units"

    def __init__(self) -> None:
        self.asked: list[tuple[str, int | None]] = []

    def choose(
        self, model: nn.Module, item: ChannelGroup, count: int | None, context: ChoiceContext
    ) -> Choice:
        assert count is not None
        self.asked.append((item.producers[0], count))
        return Choice.of(torch.arange(count), note="the first units")


def test_a_chooser_instance_decides_what_stays() -> None:
    chooser = FirstUnits()
    result = compress(_mlp(), target=0.5, method=chooser, progress=False)
    assert [name for name, _ in chooser.asked] == ["0", "2"]
    for row, (_, count) in zip(result.report.rows, chooser.asked, strict=True):
        assert row.keep.tolist() == list(range(count))
        assert "the first units" in row.note
        assert row.compensate == "none"  # not rewired unless compensate= asks
    assert result.report.method == "first_units"
    x = torch.randn(5, 10)
    assert result.model(x).shape == (5, 3)


def test_a_registered_chooser_is_built_from_the_run_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[ChoiceSettings] = []

    class Registered(FirstUnits):
        name = "registered"

        @classmethod
        def from_settings(cls, settings: ChoiceSettings) -> Registered:
            seen.append(settings)
            return cls()

    monkeypatch.setitem(CHOOSERS, "registered", Registered)
    result = compress(_mlp(), target=0.5, method="registered", delta=0.2, progress=False)
    assert result.report.method == "registered"
    assert len(seen) == 1 and seen[0].delta == 0.2


def test_greedy_obs_alone_keeps_what_the_coreset_default_keeps() -> None:
    net = _mlp()
    x = torch.randn(300, 10)
    ours = compress(net, target=0.5, calibration=x, progress=False)
    obs = compress(net, target=0.5, method=GreedyOBS(), calibration=x, progress=False)
    assert [r.keep.tolist() for r in obs.report.rows] == [r.keep.tolist() for r in ours.report.rows]
    assert all(r.compensate == "lstsq" for r in obs.report.rows)
    assert torch.allclose(obs.model(x), ours.model(x))


def test_a_scorer_chooses_one_item_as_its_plan_does() -> None:
    net = _mlp()
    chooser = ScorerChooser(Magnitude())
    result = compress(net, target=0.5, method="magnitude", groups=False, progress=False)
    first = result.report.rows[0]
    items, _ = resolve_groups(net, None, (), False, True)  # single pairs, as compress sees them
    alone = chooser.choose(net, items[0], first.units_after, ChoiceContext())
    assert alone.keep.tolist() == first.keep.tolist()


def test_misuse_is_refused_before_any_work() -> None:
    class Asked(FirstUnits):
        def choose(self, *args: object, **kwargs: object) -> Choice:
            raise AssertionError("no work may start")

    net, x = _mlp(), torch.randn(50, 10)
    with pytest.raises(ValueError, match="calibration"):
        compress(net, target=0.5, method=GreedyOBS(), progress=False)
    with pytest.raises(ValueError, match="eps needs"):
        compress(net, eps=0.5, method=Asked(), progress=False)
    with pytest.raises(ValueError, match="mode='select'"):
        compress(net, target=0.5, method=Asked(), mode="sample", progress=False)
    with pytest.raises(ValueError, match="allocation='uniform'"):
        compress(
            net, target=0.5, method=Asked(), allocation="global", calibration=x, progress=False
        )

    class Nameless(Chooser):
        def choose(self, *args: object, **kwargs: object) -> Choice:
            raise AssertionError("no work may start")

    with pytest.raises(TypeError, match="needs a name"):
        compress(net, target=0.5, method=Nameless(), progress=False)
    with pytest.raises(ValueError, match="a Chooser or a scorer"):
        find_chooser("no_such_method", None)


def test_a_plan_of_the_wrong_length_is_refused() -> None:
    class Short(FirstUnits):
        def plan(
            self, model: nn.Module, items: list[ChannelGroup], budget: Budget,
            context: ChoiceContext,
        ) -> Plan:  # fmt: skip
            return Plan([Choice.of(torch.arange(2))], "short")

    with pytest.raises(ValueError, match="returned 1 choices for 2 items"):
        compress(_mlp(), target=0.5, method=Short(), progress=False)


def test_an_error_curve_is_what_global_allocation_levels() -> None:
    class Curved(FirstUnits):
        def error_curve(
            self, model: nn.Module, item: ChannelGroup, context: ChoiceContext
        ) -> torch.Tensor:
            n = item.width
            return torch.arange(n + 1, dtype=torch.float64) / n  # the same curve everywhere

    result = compress(_mlp(), target=0.5, method=Curved(), allocation="global", progress=False)
    assert "common first_units error level" in result.report.budget
    assert result.report.achieved >= 0.5


def test_compress_names_no_method() -> None:
    """The composition reads only the interface: no method name, no concrete chooser."""
    for name in ("api", "plan", "pairs", "coupled", "options"):
        tree = ast.parse((ROOT / "coreprune" / "compress" / f"{name}.py").read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "coreset" not in strings, name
        assert not names & {"CoresetChooser", "ScorerChooser", "GreedyOBS"}, name
