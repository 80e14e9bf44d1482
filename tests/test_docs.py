"""Every Python snippet in the README and the API reference runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/api.md"]
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def snippets(page: str) -> list[str]:
    return _BLOCK.findall((ROOT / page).read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", PAGES)
def test_every_python_snippet_runs(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = snippets(page)
    assert blocks, f"{page} has no python snippets"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for index, code in enumerate(blocks):  # later snippets may use earlier names
            try:
                exec(compile(code, f"{page}[{index}]", "exec"), namespace)
            except Exception as err:  # name the snippet that failed
                raise AssertionError(f"{page} snippet {index} failed: {err!r}\n{code}") from err
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
