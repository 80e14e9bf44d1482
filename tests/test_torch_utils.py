"""The shared torch helpers: device rules, submodule replacement, flag save/restore."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coreprune.torch_utils import (
    TrainingFlags,
    eval_mode,
    model_device,
    module_weight,
    preserved_flags,
    replace_submodule,
    resolve_device,
    restore_flags,
    training_flags,
)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Sequential(nn.Linear(3, 1)))


def test_model_device_single_and_empty() -> None:
    assert model_device(_net()) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    buffers_only = nn.Module()
    buffers_only.register_buffer("b", torch.zeros(1, device="meta"))
    assert model_device(buffers_only) == torch.device("meta")


def test_model_device_refuses_mixed_devices() -> None:
    net = _net()
    net[2] = net[2].to("meta")
    with pytest.raises(ValueError, match=r"several devices \(cpu, meta\)"):
        model_device(net)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        model_device("net")  # type: ignore[arg-type]


def test_resolve_device() -> None:
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == auto
    assert resolve_device(None) == auto
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be a str"):
        resolve_device(0)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_resolve_device_cuda_without_gpu() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(torch.device("cuda", 1))


def test_replace_submodule_nested_and_top_level() -> None:
    net = _net()
    new = nn.Linear(3, 1)
    replace_submodule(net, "2.0", new)
    assert net.get_submodule("2.0") is new
    top = nn.Identity()
    replace_submodule(net, "1", top)
    assert net[1] is top


def test_replace_submodule_refuses_missing_paths() -> None:
    net = _net()
    before = [n for n, _ in net.named_modules()]
    with pytest.raises(ValueError, match=r"no submodule '5'"):
        replace_submodule(net, "5.0", nn.ReLU())
    with pytest.raises(ValueError, match=r"no submodule '2.7'"):
        replace_submodule(net, "2.7", nn.ReLU())
    with pytest.raises(ValueError, match=r"no submodule '0.weight'"):
        replace_submodule(net, "0.weight", nn.ReLU())
    with pytest.raises(ValueError, match="root module cannot replace itself"):
        replace_submodule(net, "", nn.ReLU())
    with pytest.raises(TypeError, match=r"new must be a torch\.nn\.Module"):
        replace_submodule(net, "0", torch.zeros(1))  # type: ignore[arg-type]
    assert [n for n, _ in net.named_modules()] == before


def test_flags_round_trip_onto_a_copy() -> None:
    net = _net().train()
    net[1].eval()  # a submodule deliberately unlike its parent
    net[0].bias.requires_grad_(False)
    flags = training_flags(net)
    assert flags.training == {"": True, "0": True, "1": False, "2": True, "2.0": True}
    assert flags.requires_grad["0.bias"] is False and flags.requires_grad["0.weight"] is True

    work = copy.deepcopy(net).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    replace_submodule(work, "2.0", nn.Linear(3, 1))  # surgery: same name, new object
    restore_flags(work, flags)
    assert training_flags(work) == flags


def test_restore_flags_refuses_missing_names() -> None:
    flags = training_flags(_net())
    with pytest.raises(ValueError, match=r"model lacks .* name\(s\)"):
        restore_flags(nn.Sequential(nn.Linear(2, 3)), flags)
    with pytest.raises(TypeError, match="flags must be a TrainingFlags"):
        restore_flags(_net(), {"": True})  # type: ignore[arg-type]
    assert isinstance(flags, TrainingFlags)


def test_preserved_flags_restores_after_an_exception() -> None:
    net = _net().train()
    net[1].eval()
    before = training_flags(net)
    with pytest.raises(RuntimeError, match="boom"), preserved_flags(net):
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        raise RuntimeError("boom")
    assert training_flags(net) == before


def test_eval_mode() -> None:
    a, b = _net().train(), _net().train()
    b[1].eval()
    before_a, before_b = training_flags(a), training_flags(b)
    with eval_mode(a, b, no_grad=True):
        assert not any(m.training for m in (*a.modules(), *b.modules()))
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert training_flags(a) == before_a and training_flags(b) == before_b
    with eval_mode(a):
        assert not a.training and torch.is_grad_enabled()
    with pytest.raises(TypeError, match="no_grad must be True or False"), eval_mode(a, no_grad=1):  # type: ignore[arg-type]
        pass


def test_module_weight() -> None:
    net = _net()
    assert module_weight(net, "2.0") is net.get_submodule("2.0").weight
    with pytest.raises(ValueError, match=r"no submodule '3'"):
        module_weight(net, "3")
    with pytest.raises(ValueError, match=r"submodule '' \(Sequential\) has no weight tensor"):
        module_weight(net, "")
