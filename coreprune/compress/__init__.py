"""Whole-model compression as public steps: plan (cost model, allocation, choice) and apply
(cut, rewire); `compress()` composes them."""

from coreprune.compress.allocate import ALLOCATIONS
from coreprune.compress.api import compress
from coreprune.compress.apply import GroupCut, PairCut, apply_plan, cut_group, cut_groups, cut_pair
from coreprune.compress.capture import MAX_CALIBRATION_ROWS, capture_input, capture_output
from coreprune.compress.choosers import DEFAULT_RANK
from coreprune.compress.cost import METRICS, CostModel, count_macs, count_params
from coreprune.compress.heads import HeadPruneResult, prune_attention_heads
from coreprune.compress.options import COMPENSATIONS, MODES
from coreprune.compress.report import CompressReport, CompressResult, LayerRow

__all__ = [
    "ALLOCATIONS",
    "COMPENSATIONS",
    "DEFAULT_RANK",
    "MAX_CALIBRATION_ROWS",
    "METRICS",
    "MODES",
    "CompressReport",
    "CompressResult",
    "CostModel",
    "GroupCut",
    "HeadPruneResult",
    "LayerRow",
    "PairCut",
    "apply_plan",
    "capture_input",
    "capture_output",
    "compress",
    "count_macs",
    "count_params",
    "cut_group",
    "cut_groups",
    "cut_pair",
    "prune_attention_heads",
]
