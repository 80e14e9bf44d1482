"""Whole-model compression: plan (cost model, allocation, choice) and apply (cut, rewire)."""

from coreprune.compress.api import CompressReport, CompressResult, LayerRow, compress

__all__ = ["CompressReport", "CompressResult", "LayerRow", "compress"]
