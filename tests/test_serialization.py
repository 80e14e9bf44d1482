"""Pruned models round-trip through JSON + safetensors to bit-identical outputs, without pickle."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from coreprune.serialization import ARCH_FILE, WEIGHTS_FILE, load_model, save_model


class Net(nn.Module):
    """conv-BN-ReLU -> conv-BN-ReLU -> pool/flatten -> MLP, a base architecture to prune."""

    def __init__(self, width: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 6, 3, stride=2, padding=(1, 1), padding_mode="reflect")
        self.bn2 = nn.BatchNorm2d(6, momentum=None)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(6, hidden)
        self.norm = nn.BatchNorm1d(hidden, affine=False)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x)))).flatten(1)
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def _pruned(seed: int = 0) -> Net:
    """A Net whose layers were narrowed by hand, as surgery would, with non-default statistics."""
    torch.manual_seed(seed)
    model = Net()
    model.conv1 = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(5)
    model.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=(1, 1), padding_mode="reflect")
    model.fc1 = nn.Linear(6, 9)
    model.norm = nn.BatchNorm1d(9, affine=False)
    model.fc2 = nn.Linear(9, 4)
    model.train()
    for _ in range(3):  # move the running statistics away from their defaults
        model(torch.randn(8, 3, 8, 8))
    return model.eval()


def _assert_same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_round_trip_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def no_pickle(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pickle must not be used")

    monkeypatch.setattr(pickle, "dump", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(torch, "save", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    save_model(model, tmp_path / "m", arch="net", arch_kwargs={"width": 8})
    loaded = load_model(tmp_path / "m", factory=lambda: Net(width=8))
    _assert_same(model, loaded, torch.randn(2, 3, 8, 8))
    assert not loaded.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    spec = json.loads((tmp_path / "m" / ARCH_FILE).read_text())
    assert spec["arch"] == "net" and spec["arch_kwargs"] == {"width": 8}
    modules = spec["modules"]
    assert modules["conv1"]["attributes"]["out_channels"] == 5
    assert modules["conv1"]["tensors"]["weight"]["shape"] == [5, 3, 3, 3]
    assert modules["conv1"]["absent"] == ["bias"]
    assert modules["norm"] == {
        "type": "BatchNorm1d",
        "attributes": {"num_features": 9},
        "tensors": {
            "running_mean": {"shape": [9], "dtype": "float32", "kind": "buffer"},
            "running_var": {"shape": [9], "dtype": "float32", "kind": "buffer"},
            "num_batches_tracked": {"shape": [], "dtype": "int64", "kind": "buffer"},
        },
        "absent": ["weight", "bias"],
    }
    assert "pool" not in modules  # nothing sized in it
    assert loaded.conv1.out_channels == 5 and loaded.fc2.in_features == 9
    assert loaded.conv1.bias is None
    assert loaded.conv2.padding == (1, 1) and loaded.conv2.padding_mode == "reflect"


def test_dtype_mode_frozen_and_ties_survive(tmp_path: Path) -> None:
    model = _pruned().double().train()
    model.bn1.eval()
    model.fc1.weight.requires_grad_(False)
    save_model(model, tmp_path / "m", arch="net")
    loaded = load_model(tmp_path / "m", factory=Net)
    assert loaded.fc1.weight.dtype == torch.float64
    assert loaded.training and not loaded.bn1.training and loaded.conv1.training
    assert not loaded.fc1.weight.requires_grad and loaded.fc1.bias.requires_grad
    _assert_same(model.eval(), loaded.eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_tied_parameters_and_shared_modules_stay_shared(tmp_path: Path) -> None:
    def factory() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    model = factory()
    model[2].weight = model[0].weight
    save_model(model, tmp_path / "tied", arch="tied")
    loaded = load_model(tmp_path / "tied", factory=factory)
    assert loaded[2].weight is loaded[0].weight
    assert loaded[2].bias is not loaded[0].bias
    _assert_same(model, loaded, torch.randn(3, 4))

    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)  # one module under two names
    save_model(model, tmp_path / "shared", arch="shared")
    loaded = load_model(tmp_path / "shared", factory=factory)
    assert loaded[2] is loaded[0]
    _assert_same(model, loaded, torch.randn(3, 4))


class _WithExtraState(nn.Linear):
    def get_extra_state(self) -> object:
        return {"note": "python object"}


def test_extra_state_fails_at_save(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), _WithExtraState(4, 4))
    with pytest.raises(ValueError, match=r"'1' \(_WithExtraState\) has extra state"):
        save_model(model, tmp_path / "m", arch="x")
    assert not (tmp_path / "m").exists()


def test_bad_save_arguments(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="arch"):
        save_model(model, tmp_path / "m", arch="")
    with pytest.raises(TypeError, match="arch_kwargs"):
        save_model(model, tmp_path / "m", arch="x", arch_kwargs={"f": object()})
    with pytest.raises(ValueError, match="arch_kwargs were given without arch"):
        save_model(model, tmp_path / "m", arch_kwargs={"width": 2})
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        save_model("model", tmp_path / "m")  # type: ignore[arg-type]
    with torch.device("meta"):
        on_meta = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="meta device"):
        save_model(on_meta, tmp_path / "m")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        save_model(model, tmp_path / "file", arch="x")


def test_mismatched_and_corrupt_files_are_named(tmp_path: Path) -> None:
    save_model(_pruned(0), tmp_path / "a", arch="net")
    wider = _pruned(1)
    wider.fc2 = nn.Linear(9, 5)
    save_model(wider, tmp_path / "b", arch="net")
    # weights from another save
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes((tmp_path / "b" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match=r"(?s)weights\.safetensors.*does not match.*SHA-256"):
        load_model(tmp_path / "a", factory=Net)
    # a spec edited by hand so its size attributes no longer fit the weights
    spec_file = tmp_path / "b" / ARCH_FILE
    good = json.loads(spec_file.read_text())
    spec = json.loads(spec_file.read_text())
    spec["modules"]["fc2"]["attributes"]["out_features"] = 4
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"(?s)'fc2' \(Linear\) imply weight of shape \[4, 9\]"):
        load_model(tmp_path / "b", factory=Net)
    # ... or its tensor shapes no longer fit the weights file
    spec = json.loads(json.dumps(good))
    spec["modules"]["fc2"]["tensors"]["bias"]["shape"] = [4]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"(?s)records 'fc2.bias' as float32\[4\].*F32\[5\]"):
        load_model(tmp_path / "b", factory=Net)
    # a base model without the recorded module
    spec = json.loads(json.dumps(good))
    spec["modules"]["ghost"] = {"type": "Linear", "attributes": {}, "tensors": {}, "absent": []}
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'ghost', which the base model does not have"):
        load_model(tmp_path / "b", factory=Net)
    # a size attribute the loader never sets from a file
    spec = json.loads(json.dumps(good))
    spec["modules"]["fc2"]["attributes"]["__class__"] = 3
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not a size attribute"):
        load_model(tmp_path / "b", factory=Net)
    spec_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"architecture\.json.*not valid JSON"):
        load_model(tmp_path / "b", factory=Net)
    spec = json.loads(json.dumps(good))
    spec["version"] = 1
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"version 1.*save the model again"):
        load_model(tmp_path / "b", factory=Net)
    spec["format"] = "other"
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not a coreprune model spec"):
        load_model(tmp_path / "b", factory=Net)
    with pytest.raises(FileNotFoundError, match=r"architecture\.json.*not found.*save_model"):
        load_model(tmp_path / "missing", factory=Net)
    (tmp_path / "b" / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"weights\.safetensors.*not found"):
        load_model(tmp_path / "b", factory=Net)


def test_factory_errors_name_the_fix(tmp_path: Path) -> None:
    save_model(_pruned(), tmp_path / "m", arch="net")
    with pytest.raises(ValueError, match=r"architecture 'net'.*not a coreprune model.*factory="):
        load_model(tmp_path / "m")
    save_model(_pruned(), tmp_path / "anon")
    with pytest.raises(ValueError, match=r"saved without arch=.*pass factory="):
        load_model(tmp_path / "anon")
    with pytest.raises(TypeError, match="factory must be a zero-argument callable"):
        load_model(tmp_path / "m", factory=Net())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"factory\(\) must return an nn.Module, got dict"):
        load_model(tmp_path / "m", factory=lambda: {})  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match=r"records 'fc1' as Linear.*has a Conv2d"):
        load_model(tmp_path / "m", factory=_conv_fc1_net)


def _conv_fc1_net() -> Net:
    model = Net()
    model.fc1 = nn.Conv2d(6, 16, 1)  # type: ignore[assignment]
    return model


def test_corrupt_weights_are_named(tmp_path: Path) -> None:
    save_model(_pruned(), tmp_path / "m", arch="net")
    weights = tmp_path / "m" / WEIGHTS_FILE
    weights.write_bytes(b"\x00" * 16)
    spec_file = tmp_path / "m" / ARCH_FILE
    spec = json.loads(spec_file.read_text())
    spec["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"weights\.safetensors.*not a readable safetensors"):
        load_model(tmp_path / "m", factory=Net)


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [
        ("lenet5", {}, (2, 1, 28, 28)),
        ("vgg11", {"width_multiplier": 0.125}, (2, 3, 32, 32)),
        ("resnet20", {}, (2, 3, 32, 32)),
    ],
)
def test_registry_round_trip(tmp_path: Path, arch: str, kwargs: dict, shape: tuple) -> None:
    models = pytest.importorskip("coreprune.harness.models")
    torch.manual_seed(0)
    model = models.build_model(arch, **kwargs)
    # narrow the first prunable layer by hand (its consumer too), as surgery would
    named = dict(model.named_modules())
    convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)]
    first, second = convs[0], convs[1]
    if arch == "resnet20":
        first, second = "layer1.0.conv1", "layer1.0.conv2"
    keep = torch.arange(0, named[first].out_channels, 2)
    _narrow(model, first, second, keep)
    model.eval()
    save_model(model, tmp_path / arch, arch=arch, arch_kwargs=kwargs)
    loaded = load_model(tmp_path / arch)
    _assert_same(model, loaded.eval(), torch.randn(*shape))


def _narrow(model: nn.Module, producer: str, consumer: str, keep: torch.Tensor) -> None:
    named = dict(model.named_modules())
    p, c = named[producer], named[consumer]
    new_p = nn.Conv2d(p.in_channels, len(keep), p.kernel_size, p.stride, p.padding, bias=False)
    new_c = nn.Conv2d(len(keep), c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    with torch.no_grad():
        new_p.weight.copy_(p.weight[keep])
        new_c.weight.copy_(c.weight[:, keep])
    _set(model, producer, new_p)
    _set(model, consumer, new_c)
    # the batch norm right after the producer, if any, shrinks with it
    names = list(named)
    after = named[names[names.index(producer) + 1]]
    if isinstance(after, nn.BatchNorm2d):
        bn = nn.BatchNorm2d(len(keep))
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(len(keep)))
            bn.weight.copy_(torch.rand(len(keep)) + 0.5)
        _set(model, names[names.index(producer) + 1], bn)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def test_whole_model_is_one_recorded_module(tmp_path: Path) -> None:
    model = nn.Conv2d(3, 2, 1)
    save_model(model, tmp_path / "m", arch="conv")
    loaded = load_model(tmp_path / "m", factory=lambda: nn.Conv2d(3, 7, 1))
    assert isinstance(loaded, nn.Conv2d) and loaded.out_channels == 2
    _assert_same(model, loaded, torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="whole model"):
        load_model(tmp_path / "m", factory=lambda: nn.Linear(3, 2))
