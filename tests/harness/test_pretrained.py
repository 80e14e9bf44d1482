"""The shipped Fashion-MNIST models load into their registered architectures and still
classify: each must reach a stated accuracy on the first 1,000 test images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import coreprune.harness.pretrained as pretrained
from coreprune.harness.data import make_loaders
from coreprune.harness.models import build_model
from coreprune.harness.pretrained import PRETRAINED, load_pretrained, manifest

_FASHION = Path("/usr/share/datasets/fashion-mnist")

# Floors on the first 1,000 test images, about 2-3 points under what the shipped files
# measured there (0.907, 0.919, 0.939, 0.854), so a broken file, loader or normalisation fails.
_MIN_ACCURACY = {"lenet300100": 0.88, "vgg_small": 0.89, "resnet20": 0.91, "vit_small": 0.83}

_SHIPPED = [name for name in PRETRAINED if pretrained._path(name).exists()]


def test_every_name_has_a_floor() -> None:
    assert set(_MIN_ACCURACY) == set(PRETRAINED)


def test_shipped_files_are_in_the_manifest() -> None:
    assert list(PRETRAINED) == _SHIPPED, "every pretrained model must ship its file"
    entries = manifest()
    for name in _SHIPPED:
        entry = entries[name]
        assert entry["file"] == pretrained._path(name).name
        assert entry["train_size"] == 54_000 and entry["test_size"] == 10_000
        assert entry["command"].startswith("python benchmarks/train_fixtures.py")


@pytest.mark.parametrize("name", _SHIPPED)
def test_loads_registered_architecture(name: str) -> None:
    model = load_pretrained(name)
    kwargs: dict[str, object] = (
        {"in_features": 784} if name == "lenet300100" else {"in_channels": 1}
    )
    fresh = build_model(name, num_classes=10, **kwargs)
    assert type(model) is type(fresh)
    assert not model.training
    loaded, reference = model.state_dict(), fresh.state_dict()
    assert list(loaded) == list(reference)
    assert all(loaded[k].shape == reference[k].shape for k in reference)
    assert all(loaded[k].dtype == reference[k].dtype for k in reference)
    # The weights are the trained ones, not the fresh initialisation.
    assert any(not torch.equal(loaded[k], reference[k]) for k in reference)


@pytest.mark.skipif(not _FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("name", _SHIPPED)
def test_accuracy_on_test_slice(name: str) -> None:
    loaders = make_loaders("fashion_mnist", augment=False, limit=1000, eval_batch_size=500)
    model = load_pretrained(name)
    correct = total = 0
    with torch.inference_mode():
        for x, y in loaders.test:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    assert total == 1000
    assert correct / total >= _MIN_ACCURACY[name], f"{name}: {correct / total:.3f}"


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="available: lenet300100, vgg_small, resnet20"):
        load_pretrained("resnet56")


def test_non_string_name() -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        load_pretrained(20)  # type: ignore[arg-type]


def test_missing_file_names_the_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(
        FileNotFoundError, match=re.escape("benchmarks/train_fixtures.py --models vgg_small")
    ):
        load_pretrained("vgg_small")


def test_mismatched_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = "lenet300100"
    tensors = load_file(str(pretrained._path(name)))
    tensors["layers.1.weight"] = tensors["layers.1.weight"][:, :-1].contiguous()
    save_file(tensors, str(tmp_path / pretrained._path(name).name))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(ValueError, match=re.escape("layers.1.weight")):
        load_pretrained(name)
    del tensors["layers.1.weight"]
    save_file(tensors, str(tmp_path / pretrained._path(name).name))
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(name)


def test_manifest_is_valid_json() -> None:
    text = (pretrained.PRETRAINED_DIR / "manifest.json").read_text()
    assert isinstance(json.loads(text), dict)
