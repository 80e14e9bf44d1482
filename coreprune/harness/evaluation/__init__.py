"""Measuring models: parameters, MACs, latency, per-layer error, and the "Lost in Pruning"
metrics beyond accuracy (agreement with the dense model, noise robustness, calibration)."""

from coreprune.harness.evaluation.metrics import (
    LatencyStats,
    count_macs,
    count_params,
    layer_errors,
    measure_latency,
)
from coreprune.harness.evaluation.robustness import (
    DEFAULT_SIGMAS,
    agreement,
    expected_calibration_error,
    noisy_accuracy,
    robustness_report,
)

__all__ = [
    "DEFAULT_SIGMAS",
    "LatencyStats",
    "agreement",
    "count_macs",
    "count_params",
    "expected_calibration_error",
    "layer_errors",
    "measure_latency",
    "noisy_accuracy",
    "robustness_report",
]
