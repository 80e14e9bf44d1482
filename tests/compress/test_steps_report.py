"""`compress(..., steps=n)` reports the whole run against the dense model, and every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coreprune.compress import compress
from coreprune.compress.report import CompressStep
from coreprune.harness.evaluation.metrics import count_params


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)
    )


@pytest.mark.parametrize("method", ["magnitude", "coreset"])
def test_the_report_describes_the_whole_run(method: str) -> None:
    model = _mlp()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress(model, target=0.5, steps=3, method=method, progress=False)
    report = result.report
    removed = 1 - count_params(result.model) / count_params(model)
    assert removed >= 0.5
    # the whole run, not the last step
    assert report.target == 0.5
    assert report.achieved == pytest.approx(removed)
    assert report.target_reached
    assert report.params_before == count_params(model)
    assert report.params_after == count_params(result.model)
    assert report.params_removed == pytest.approx(removed)
    assert "target 50% of params removed in 3 steps" in report.budget
    # every step, each relative to its input, chained to the dense model
    assert [s.step for s in report.steps] == [1, 2, 3]
    assert all(isinstance(s, CompressStep) and s.report is not None for s in report.steps)
    befores = [s.report.params_before for s in report.steps if s.report]
    afters = [s.report.params_after for s in report.steps if s.report]
    assert befores[0] == count_params(model) and afters[-1] == count_params(result.model)
    assert befores[1:] == afters[:-1]
    assert report.steps[-1].removed == pytest.approx(removed)
    text = report.to_markdown()
    assert "steps (3):" in text and "step 2: target" in text
    assert "50% of params removed in 3 steps" in text
    # rows start from the dense model: widths, and kept indices into its units
    first = next(r for r in report if r.producer == "0")
    assert first.units_before == 32
    assert first.units_after == result.model[0].out_features
    assert first.keep.numel() == first.units_after
    assert first.keep.max() < 32 and torch.equal(first.keep, first.keep.sort().values)
    if method == "magnitude":  # no rewiring: the producer's kept rows are the dense ones
        assert torch.equal(result.model[0].weight, model[0].weight[first.keep])
    # a per-step certificate does not cover the whole run, so the rows claim none
    assert all(r.eps is None and r.certificate is None for r in report)
    # the caller's model is untouched
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_one_step_report_is_unchanged() -> None:
    report = compress(_mlp(), target=0.5, method="magnitude", progress=False).report
    assert report.steps == ()
    assert "steps (" not in report.to_markdown()
