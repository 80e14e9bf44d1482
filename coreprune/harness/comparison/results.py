"""The results file: one CSV row per finished run, appended as it finishes and read back to
resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from coreprune.harness.comparison.config import FIELDS


def row_key(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (str(row["model"]), str(row["seed"]), str(row["method"]), str(row["metric"]),
            f"{float(row['target']):g}")  # fmt: skip


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv (numbers parsed), or [] if there is none yet."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(value: str) -> Any:
    if value in ("", "None"):
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(FIELDS):  # written by an older version: rewrite under today's columns
            with path.open(newline="") as f:
                old = list(csv.DictReader(f))
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows({k: r.get(k) for k in FIELDS} for r in old)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k) for k in FIELDS})
