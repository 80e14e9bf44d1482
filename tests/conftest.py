"""Test-wide settings: one thread per process (faster than two contending threads on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    torch.set_num_threads(1)
