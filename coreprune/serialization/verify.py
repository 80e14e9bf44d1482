"""Loading, part one: checks of the spec and the safetensors header that allocate nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from coreprune.serialization.format import (
    _DTYPES,
    _HEADER_DTYPES,
    _TENSOR_KINDS,
    FORMAT,
    SIZE_ATTRIBUTES,
    VERSION,
    Spec,
    _is_int,
    _join,
)


def _read_spec(file: Path) -> Spec:
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{str(file)!r} is not valid JSON ({err}); it is corrupt, save the model again"
        ) from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{str(file)!r} is not a coreprune model spec (format != {FORMAT!r})")
    if spec.get("version") != VERSION:
        raise ValueError(
            f"{str(file)!r} has format version {spec.get('version')!r}; this coreprune reads "
            f"version {VERSION}: save the model again with this version"
        )
    expected: dict[str, type | tuple[type, ...]] = {
        "arch": (str, type(None)), "arch_kwargs": dict, "training": bool,
        "training_differs": list, "modules": dict, "aliases": dict, "frozen": list,
        "weights_sha256": str,
    }  # fmt: skip
    for key, kind in expected.items():
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"{str(file)!r}: field {key!r} is missing or has the wrong type")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec["aliases"].items()):
        raise ValueError(f"{str(file)!r}: field 'aliases' must map names to names")
    for key in ("training_differs", "frozen"):
        if not all(isinstance(v, str) for v in spec[key]):
            raise ValueError(f"{str(file)!r}: field {key!r} must be a list of names")
    return spec


def _expected_tensors(spec: Spec, spec_file: Path) -> dict[str, Spec]:
    """Every tensor key the spec describes (shared modules expanded), checked for form."""
    where = str(spec_file)
    modules: dict[str, Any] = spec["modules"]
    table: dict[str, Spec] = {}
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where!r}: module {name!r} has a malformed entry")
        if "same_as" in entry:
            target = entry["same_as"]
            if set(entry) != {"same_as"} or not isinstance(modules.get(target), dict):
                raise ValueError(f"{where!r}: module {name!r} is the same as an unknown one")
            if "same_as" in modules[target]:
                raise ValueError(f"{where!r}: module {name!r} points at another alias")
            continue
        _check_entry(name, entry, where)
    for name, entry in modules.items():
        source = modules[entry["same_as"]] if "same_as" in entry else entry
        for key, info in source["tensors"].items():
            table[_join(name, key)] = info
    return table


def _check_entry(name: str, entry: Spec, where: str) -> None:
    if set(entry) != {"type", "attributes", "tensors", "absent"}:
        raise ValueError(f"{where!r}: module {name!r} needs exactly type/attributes/tensors/absent")
    if not isinstance(entry["type"], str) or not isinstance(entry["absent"], list):
        raise ValueError(f"{where!r}: module {name!r} has a malformed type or absent list")
    attributes, tensors = entry["attributes"], entry["tensors"]
    if not isinstance(attributes, dict) or not isinstance(tensors, dict):
        raise ValueError(f"{where!r}: module {name!r} has malformed attributes or tensors")
    for attr, value in attributes.items():
        if attr not in SIZE_ATTRIBUTES:
            raise ValueError(f"{where!r}: module {name!r} sets {attr!r}, not a size attribute")
        if not (_is_size(value) or (isinstance(value, list) and all(map(_is_size, value)))):
            raise ValueError(f"{where!r}: {name!r}.{attr} = {value!r} is not a size")
    for key, info in tensors.items():
        ok = (
            isinstance(info, dict)
            and set(info) == {"shape", "dtype", "kind"}
            and isinstance(info["shape"], list)
            and all(map(_is_size, info["shape"]))
            and info["dtype"] in _DTYPES
            and info["kind"] in _TENSOR_KINDS
        )
        if not ok:
            raise ValueError(f"{where!r}: tensor {_join(name, key)!r} has a malformed entry")


def _is_size(value: object) -> bool:
    return _is_int(value) and value >= 0


def _read_header(file: Path) -> dict[str, tuple[list[int], str]]:
    """Shape and dtype of every tensor in a safetensors file, read without loading any data.

    safetensors refuses a header whose tensors do not exactly cover the file's bytes, so these
    sizes are bounded by the file size.
    """
    header: dict[str, tuple[list[int], str]] = {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not a dict
                part = handle.get_slice(key)
                header[key] = (list(part.get_shape()), str(part.get_dtype()))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{str(file)!r} is not a readable safetensors file: {err}") from err
    return header


def _check_header(
    expected: dict[str, Spec],
    aliases: dict[str, str],
    header: dict[str, tuple[list[int], str]],
    weights_file: Path,
) -> None:
    """Every recorded shape and dtype equals the weights file's, before anything is built."""
    where = str(weights_file)
    stored = {k for k in expected if k not in aliases}
    if stored != set(header):
        missing, extra = sorted(stored - set(header)), sorted(set(header) - stored)
        raise ValueError(
            f"{where!r} does not hold the tensors the spec records: missing {missing[:5]}, "
            f"unexpected {extra[:5]} (files edited or from different saves)"
        )
    for key in stored:
        shape, code = header[key]
        info = expected[key]
        if info["shape"] != shape or _HEADER_DTYPES.get(code) != info["dtype"]:
            raise ValueError(
                f"the spec records {key!r} as {info['dtype']}{info['shape']} but {where!r} "
                f"holds {code}{shape}; refusing to build sizes the weights do not back"
            )
    for alias, primary in aliases.items():
        if alias not in expected or primary not in stored:
            raise ValueError(f"{where!r}: alias {alias!r} -> {primary!r} names an unknown tensor")
        a, p = expected[alias], expected[primary]
        if (a["shape"], a["dtype"]) != (p["shape"], p["dtype"]):
            raise ValueError(f"{where!r}: alias {alias!r} and {primary!r} differ in shape or dtype")
