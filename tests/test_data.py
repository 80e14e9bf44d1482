"""Data loading: IDX and CIFAR readers on files written here, splits, transforms, loaders."""

from __future__ import annotations

import codecs
import gzip
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import coreprune.harness.data.mnist as mnist_module
from coreprune.harness.data import (
    DATASETS,
    ImageData,
    TransformedTensorDataset,
    build_transform,
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
    load_split,
    make_loaders,
    read_idx,
    save_split,
    train_val_split,
    write_idx,
)
from coreprune.harness.data.transforms import Normalize, PadTo, RandomCrop, RandomHorizontalFlip

# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 70000], dtype=np.int32),
        np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32),
        np.array([-3, 7], dtype=np.int16),
    ],
)
def test_idx_round_trip(tmp_path: Path, array: np.ndarray, compress: bool) -> None:
    path = tmp_path / "a.idx"
    write_idx(path, array, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "hand.idx"
    path.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + bytes([0x01, 0x02, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(path), np.array([258, -2], dtype=np.int16))


def _idx_bytes(array: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 0x08, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
        + (array.astype(np.uint8).tobytes())
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "dtype code"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_idx_corrupt_raw_names_file(tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mutate(_idx_bytes(np.zeros((3, 2, 2)))))  # type: ignore[operator]
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_truncated_gzip_names_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    blob = gzip.compress(_idx_bytes(np.arange(4000).reshape(10, 20, 20) % 251))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint64))


# ---------------------------------------------------------------- MNIST family


def _write_mnist(root: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", images, compress=gz)
        write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress=gz)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_folder(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, gz=gz)
    data = load_mnist(tmp_path)
    assert data.train_images.shape == (50, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_labels.shape == (20,) and data.test_labels.dtype == torch.int64
    assert data.train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    expected = read_idx(tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")))
    np.testing.assert_array_equal(data.test_images.numpy(), expected)


def test_mnist_count_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8), compress=True)
    with pytest.raises(ValueError, match="t10k-labels"):
        load_mnist(tmp_path)


def test_mnist_bad_label_value(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        load_mnist(tmp_path)


def test_mnist_missing_folder_says_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="put the IDX files"):
        load_mnist(tmp_path / "absent")
    with pytest.raises(TypeError, match="root"):
        load_mnist(None)  # type: ignore[arg-type]


def test_fashion_default_missing_says_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_module, "DEFAULT_FASHION_MNIST_ROOT", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not _FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    data = load_fashion_mnist()
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    pixels = data.train_images.double() / 255
    spec = DATASETS["fashion_mnist"]
    assert abs(pixels.mean().item() - spec.mean[0]) < 1e-4
    assert abs(pixels.std().item() - spec.std[0]) < 1e-4


# ---------------------------------------------------------------- CIFAR


def _cifar_batch(n: int, label_key: str, classes: int, offset: int, py2: bool) -> dict:
    data = ((np.arange(n * 3072) + offset) % 256).astype(np.uint8).reshape(n, 3072)
    labels = [(i + offset) % classes for i in range(n)]
    batch = {"data": data, label_key: labels, "batch_label": "b"}
    if py2:  # the real files come from Python 2: bytes keys
        batch = {k.encode(): v for k, v in batch.items()}
    return batch


@pytest.mark.parametrize(("protocol", "py2"), [(2, True), (4, False), (5, False)])
def test_cifar10_loads(tmp_path: Path, protocol: int, py2: bool) -> None:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for offset, name in enumerate(names):
        batch = _cifar_batch(4, "labels", 10, offset, py2)
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    data = load_cifar10(tmp_path)
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.train_labels.tolist() == [(i % 4 + i // 4) % 10 for i in range(20)]
    # image 0 of batch 1: red plane first, pixels row-major, values start at the offset
    assert data.train_images[0, 0, 0, :3].tolist() == [0, 1, 2]
    assert data.train_images[0, 1, 0, 0].item() == 1024 % 256
    assert data.train_images[4, 0, 0, 0].item() == 1  # batch 2 has offset 1


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    for offset, name in enumerate(("train", "test")):
        batch = _cifar_batch(6, "fine_labels", 100, 95 + offset, py2=True)
        batch[b"coarse_labels"] = [i % 20 for i in range(6)]
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    fine = load_cifar100(tmp_path)
    assert fine.num_classes == 100 and fine.train_labels.tolist() == [95, 96, 97, 98, 99, 0]
    coarse = load_cifar100(tmp_path, label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.test_labels.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="label_mode"):
        load_cifar100(tmp_path, label_mode="medium")  # type: ignore[arg-type]


def _write_cifar10(root: Path) -> None:
    for offset, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = _cifar_batch(3, "labels", 10, offset, py2=True)
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_truncated_names_file(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "data_batch_3"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(tmp_path)


def test_cifar_refuses_foreign_globals(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    evil = {b"data": OrderedDict(a=1), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch.*collections\.OrderedDict"):
        load_cifar10(tmp_path)


def test_cifar_accepts_numpy1_module_path(tmp_path: Path) -> None:
    # files written by Python 2 / numpy 1 name numpy.core.multiarray._reconstruct
    _write_cifar10(tmp_path)
    blob = pickle.dumps(_cifar_batch(3, "labels", 10, 9, py2=True), protocol=2)
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    (tmp_path / "test_batch").write_bytes(old)
    assert load_cifar10(tmp_path).test_labels.tolist() == [9, 0, 1]


class _Rot13:
    def __reduce__(self) -> tuple:
        return (codecs.encode, ("abc", "rot13"))


def test_cifar_refuses_other_codecs(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": _Rot13()}, protocol=2))
    with pytest.raises(ValueError, match="rot13"):
        load_cifar10(tmp_path)


def test_cifar_wrong_content(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8)}))
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(tmp_path)


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path / "absent")


# ---------------------------------------------------------------- splits


def test_split_deterministic_disjoint_complete() -> None:
    train, val = train_val_split(1000, 0.1, seed=3)
    again_train, again_val = train_val_split(1000, 0.1, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert torch.all(train[1:] > train[:-1]) and torch.all(val[1:] > val[:-1])
    _, other_val = train_val_split(1000, 0.1, seed=4)
    assert not torch.equal(val, other_val)


def test_split_is_not_just_the_tail() -> None:
    _, val = train_val_split(1000, 0.1, seed=0)
    assert val.min() < 500 < val.max()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1000, 0.0), ValueError),
        ((1000, 1.0), ValueError),
        ((10, 0.01), ValueError),  # rounds to no validation example
        ((1, 0.5), ValueError),
        ((10.0, 0.1), TypeError),
    ],
)
def test_split_bad_arguments(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        train_val_split(*args)


def test_split_json_round_trip(tmp_path: Path) -> None:
    train, val = train_val_split(200, 0.1, seed=1)
    path = tmp_path / "split.json"
    save_split(path, train, val)
    back_train, back_val = load_split(path)
    assert torch.equal(back_train, train) and torch.equal(back_val, val)
    payload = json.loads(path.read_text())
    payload["val"][0] = payload["train"][0]  # overlap
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="disjoint"):
        load_split(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        load_split(path)


# ---------------------------------------------------------------- transforms


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    torch.manual_seed(0)
    batch = torch.rand(16, 2, 6, 5)
    out = RandomCrop(2)(batch)
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])
        ]
        assert found, f"image {i} is not a crop"
        offsets.update(found)
    assert len(offsets) > 3  # offsets vary between images


def test_flip_and_pad_and_normalize() -> None:
    batch = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    assert torch.equal(RandomHorizontalFlip(1.0)(batch), batch.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(batch), batch)
    padded = PadTo(6)(batch)
    assert padded.shape == (2, 1, 6, 6) and torch.equal(padded[:, :, 2:4, 1:4], batch)
    assert padded.sum() == batch.sum()
    norm = Normalize((1.0,), (2.0,))(batch)
    torch.testing.assert_close(norm, (batch - 1) / 2)
    with pytest.raises(ValueError, match="shrink"):
        PadTo(2)(batch)
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(1.5)


def test_dataset_batched_and_single_access_agree() -> None:
    images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10)
    transform = build_transform(DATASETS["fashion_mnist"], image_size=32, augment=False)
    ds = TransformedTensorDataset(images, labels, transform)
    batch = ds.__getitems__([3, 7])
    x3, y3 = ds[3]
    assert x3.shape == (1, 32, 32) and y3.item() == 3
    torch.testing.assert_close(batch[0][0], x3)
    torch.testing.assert_close(batch[1][0], ds[7][0])


# ---------------------------------------------------------------- make_loaders


def _synthetic(n_train: int = 100, n_test: int = 30) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(
        train_images=torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=g),
        train_labels=torch.arange(n_train) % 10,
        test_images=torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=g),
        test_labels=torch.arange(n_test) % 10,
        num_classes=10,
    )


def test_make_loaders_sizes_and_shapes() -> None:
    loaders = make_loaders("mnist", data=_synthetic(), batch_size=32, image_size=32)
    assert len(loaders.train.dataset) == 90
    assert len(loaders.val.dataset) == 10
    assert len(loaders.test.dataset) == 30
    x, y = next(iter(loaders.train))
    assert x.shape == (32, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    small = make_loaders("mnist", data=_synthetic(), limit=7)
    assert [len(small.train.dataset), len(small.val.dataset), len(small.test.dataset)] == [7, 7, 7]


def test_make_loaders_val_is_the_fixed_split() -> None:
    data = _synthetic()
    loaders = make_loaders("mnist", data=data, augment=False, seed=5)
    _, val_idx = train_val_split(100, 0.1, seed=5)
    x, y = next(iter(loaders.val))
    assert torch.equal(y, data.train_labels[val_idx])
    expected = (data.train_images[val_idx].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], expected)


def test_make_loaders_reproducible_under_global_seed() -> None:
    def first_batch() -> torch.Tensor:
        torch.manual_seed(11)
        return next(iter(make_loaders("fashion_mnist", data=_synthetic()).train))[0]

    assert torch.equal(first_batch(), first_batch())


def test_make_loaders_from_idx_folder(tmp_path: Path) -> None:
    _write_mnist(tmp_path, n_train=40, n_test=10)
    loaders = make_loaders("mnist", tmp_path, batch_size=8)
    assert len(loaders.train.dataset) == 36 and len(loaders.test.dataset) == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "svhn"}, ValueError, "fashion_mnist"),
        ({"name": "mnist"}, ValueError, "root"),
        ({"name": "cifar10", "data": _synthetic(), "image_size": 28}, ValueError, "padding"),
        ({"name": "mnist", "data": _synthetic(), "batch_size": 0}, ValueError, "batch_size"),
        ({"name": "mnist", "data": _synthetic(), "limit": 0}, ValueError, "limit"),
        ({"name": "mnist", "data": "x"}, TypeError, "ImageData"),
    ],
)
def test_make_loaders_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_loaders(**kwargs)


# ---------------------------------------------------------------- gaps: files, augmentation, splits


def test_mnist_truncated_file_in_folder_names_it(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-784])  # one image short
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_missing_idx_file_says_which_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*put the IDX files"):
        load_mnist(tmp_path)
    monkeypatch.setattr(mnist_module, "DEFAULT_FASHION_MNIST_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_make_loaders_needs_root_says_where(name: str) -> None:
    with pytest.raises(ValueError, match=r"root=.*cs\.toronto\.edu"):
        make_loaders(name)


def test_augmentation_per_dataset() -> None:
    def kinds(name: str, augment: bool) -> list[type]:
        spec = DATASETS[name]
        tf = build_transform(spec, image_size=spec.native_size, augment=augment)
        return [type(t) for t in tf.transforms]

    assert RandomHorizontalFlip not in kinds("mnist", True)  # a mirrored 3 is not a 3
    assert RandomCrop in kinds("mnist", True)
    for name in ("fashion_mnist", "cifar10", "cifar100"):
        assert {RandomCrop, RandomHorizontalFlip} <= set(kinds(name, True))
        assert not {RandomCrop, RandomHorizontalFlip} & set(kinds(name, False))
    assert DATASETS["cifar10"].crop_padding == 4


def test_make_loaders_from_cifar_pickles(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)  # 15 train, 3 test images
    torch.manual_seed(0)
    loaders = make_loaders("cifar10", tmp_path, batch_size=4, val_fraction=0.2)
    assert [len(loaders.train.dataset), len(loaders.val.dataset)] == [12, 3]
    x, _ = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    x_val, y_val = next(iter(loaders.val))
    raw = load_cifar10(tmp_path)
    _, val_idx = train_val_split(15, 0.2, seed=0)
    spec = DATASETS["cifar10"]
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    expected = (raw.train_images[val_idx].float() / 255 - mean) / std
    torch.testing.assert_close(x_val, expected)
    assert torch.equal(y_val, raw.train_labels[val_idx])


def test_make_loaders_reuses_a_saved_split(tmp_path: Path) -> None:
    data = _synthetic()
    train_idx, val_idx = train_val_split(100, 0.1, seed=9)
    path = tmp_path / "split.json"
    save_split(path, train_idx, val_idx)
    for split in (path, (train_idx, val_idx)):
        loaders = make_loaders("mnist", data=data, augment=False, split=split, seed=0)
        assert torch.equal(loaders.val.dataset.labels, data.train_labels[val_idx])
        assert len(loaders.train.dataset) == 90
    other = make_loaders("mnist", data=data, seed=0)
    assert not torch.equal(other.val.dataset.images, data.train_images[val_idx])


@pytest.mark.parametrize(
    ("split", "error", "match"),
    [
        ((torch.arange(50), torch.arange(50, 60)), ValueError, "cover 0..99"),
        ((torch.arange(90), torch.arange(85, 95)), ValueError, "disjoint"),
        ([torch.arange(90), torch.arange(90, 100)], TypeError, "split"),
        ((torch.arange(90).reshape(9, 10), torch.arange(90, 100)), TypeError, "1-D"),
    ],
)
def test_make_loaders_bad_split(split: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_loaders("mnist", data=_synthetic(), split=split)  # type: ignore[arg-type]


def test_saved_split_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    save_split(path, *train_val_split(50, 0.1, seed=0))
    with pytest.raises(ValueError, match="covers 50 examples"):
        make_loaders("mnist", data=_synthetic(), split=path)
