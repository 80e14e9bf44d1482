"""Measuring models: parameters, MACs, latency and per-layer error."""

from coreprune.evaluation.metrics import (
    LatencyStats,
    count_macs,
    count_params,
    layer_errors,
    measure_latency,
)

__all__ = ["LatencyStats", "count_macs", "count_params", "layer_errors", "measure_latency"]
