"""DDP through torchrun on CPU (Gloo, 2 processes): the same training as one process with the
two ranks' batches joined, up to float rounding; and the demo entry point runs under torchrun
and without it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from coreprune.harness.data import write_idx
from coreprune.harness.training import ddp_demo, fit, load_checkpoint
from coreprune.training.distributed import setup_distributed

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed+gloo"
)


def _write_tiny_mnist(root: Path) -> list[str]:
    """80 train / 20 test random digits; returns the demo arguments that train on them."""
    rng = np.random.default_rng(0)
    for stem, n in (("train", 80), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images, compress=True)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels, compress=True)
    return ["--model", "lenet300100", "--dataset", "mnist", "--root", str(root), "--epochs", "2"]


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``torchrun --nproc_per_node=2`` of ddp_worker.py: the tiny DDP fit, then the demo."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    demo = [*_write_tiny_mnist(out), "--no-progress", "--output", str(out / "demo.json")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(HERE / "ddp_worker.py"), str(out), *demo, "--device", "cpu"],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_gloo
def test_ddp_two_processes_match_one_process(torchrun_out: Path) -> None:
    ddp = torch.load(torchrun_out / "ddp.pt", weights_only=True)
    worker = _worker()
    dataset = worker.data()
    # one process, batch 16 = 2 x 8, the permutation DistributedSampler draws for seed + epoch
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=worker.SEED)
    single = worker.model()
    history = fit(
        single,
        DataLoader(dataset, batch_size=16, sampler=sampler),
        epochs=worker.EPOCHS,
        lr=0.2,
        seed=worker.SEED,
        progress=False,
    )
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], tensor, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ddp["history"]["train_loss"], history.train_loss, atol=1e-5)
    assert ddp["history"]["world_size"] == 2 and history.world_size == 1
    assert not torch.equal(single.state_dict()["0.weight"], worker.model().state_dict()["0.weight"])

    checkpoint = load_checkpoint(torchrun_out / "ck.pt")  # rank 0 alone writes it
    assert checkpoint["epoch"] == worker.EPOCHS and len(checkpoint["rng"]) == 2
    assert checkpoint["config"]["world_size"] == 2 and checkpoint["config"]["steps_per_epoch"] == 4
    for name, tensor in ddp["state"].items():
        assert torch.equal(checkpoint["model"][name], tensor), name
    assert not list(torchrun_out.glob("*.tmp"))


@needs_gloo
def test_demo_under_torchrun(torchrun_out: Path) -> None:
    result = json.loads((torchrun_out / "demo.json").read_text())
    assert result["world_size"] == 2 and result["batch_per_process"] == 64  # recipe 128 / 2
    assert len(result["history"]["train_loss"]) == 2
    assert 0.0 <= result["test"]["accuracy"] <= 1.0


def test_demo_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    args = [*_write_tiny_mnist(tmp_path), "--no-progress", "--checkpoint", str(tmp_path / "c.pt")]
    result = ddp_demo.main(args)
    assert result["world_size"] == 1 and result["batch_per_process"] == 128
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2
    again = ddp_demo.main([*args, "--resume"])  # finished: resumes to the same weights
    assert again["test"] == result["test"]


def test_distributed_true_without_torchrun_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert not setup_distributed(None, "cpu")[0].enabled
    with pytest.raises(ValueError, match="torchrun"):
        setup_distributed(True, "cpu")
