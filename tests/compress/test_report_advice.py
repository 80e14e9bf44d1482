"""The report says what to do next when the run shows it: batch norm after data-free pruning."""

from __future__ import annotations

import torch
from torch import nn

from coreprune import compress


def _net(norm: bool) -> nn.Sequential:
    torch.manual_seed(0)
    middle = [nn.BatchNorm2d(8)] if norm else []
    return nn.Sequential(nn.Conv2d(1, 8, 3), *middle, nn.ReLU(), nn.Conv2d(8, 4, 3))


def test_data_free_pruning_with_batch_norm_advises_re_estimation() -> None:
    report = compress(_net(norm=True), target=0.3, progress=False).report
    assert len(report.advice) == 1 and "recalibrated_copy" in report.advice[0]
    assert "- advice: the model has batch norm" in report.to_markdown()


def test_no_advice_without_batch_norm_or_with_calibration() -> None:
    assert compress(_net(norm=False), target=0.3, progress=False).report.advice == ()
    calib = torch.randn(6, 1, 8, 8)
    report = compress(_net(norm=True), target=0.3, calibration=calib, progress=False).report
    assert report.advice == ()
