"""The file format: its names, version, the size attributes it may set, tensor kinds, dtypes,
and the small helpers both directions share."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

FORMAT = "coreprune-model"
VERSION = 2
ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"

# Attributes that describe a tensor size. These are the ones surgery changes (registry.py) and
# the ones the standard torch modules keep; only these names are ever set from a file.
SIZE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "in_features", "out_features", "in1_features", "in2_features",
        "in_channels", "out_channels", "groups",
        "num_features", "num_channels", "num_groups", "normalized_shape",
        "num_embeddings", "embedding_dim",
        "embed_dim", "kdim", "vdim", "num_heads", "head_dim",
        "input_size", "hidden_size", "proj_size",
    }
)  # fmt: skip

_PARAMETER, _BUFFER, _TRANSIENT = "parameter", "buffer", "nonpersistent_buffer"
_TENSOR_KINDS = (_PARAMETER, _BUFFER, _TRANSIENT)
# safetensors header dtype codes -> torch dtype names (those this torch has).
_HEADER_CODES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip
_HEADER_DTYPES: dict[str, str] = {
    code: name
    for code, name in _HEADER_CODES.items()
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in _HEADER_DTYPES.values()}

Spec = dict[str, Any]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor | None, str]]:
    """(name, tensor or None, kind) for the module's own parameters and buffers."""
    for name, param in module._parameters.items():
        yield name, param, _PARAMETER
    for name, buf in module._buffers.items():
        kind = _TRANSIENT if name in module._non_persistent_buffers_set else _BUFFER
        yield name, buf, kind


def _join(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
