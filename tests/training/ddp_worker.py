"""Run by ``torchrun`` from test_ddp.py (not collected by pytest): train the tiny problem with
``fit`` under DDP, which fit detects from torchrun's environment, and rank 0 saves the result;
then run the demo entry point with the remaining arguments in the same process group (one
torchrun start instead of two keeps the test quick)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreprune.harness.training import ddp_demo, fit

SEED = 3
EPOCHS = 3


def data() -> TensorDataset:
    """64 points, 4 features, a linear rule: no batch norm, so DDP equals one big batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return TensorDataset(x, (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long())


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    net = model()
    loader = DataLoader(data(), batch_size=8, shuffle=True)  # 8 per rank = 16 in all
    history = fit(
        net, loader, epochs=EPOCHS, lr=0.2, seed=SEED, progress=False, checkpoint=out / "ck.pt"
    )
    if dist.get_rank() == 0:
        torch.save({"state": net.state_dict(), "history": history.to_dict()}, out / "ddp.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    ddp_demo.main(sys.argv[2:])  # destroys the process group at the end
