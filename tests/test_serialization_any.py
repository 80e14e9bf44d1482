"""Pruned models of any architecture round-trip bit for bit, and a tampered file never makes the
loader allocate the sizes it names."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from coreprune.compress import PairCut, apply_plan, compress
from coreprune.harness.models import build_model
from coreprune.serialization import ARCH_FILE, WEIGHTS_FILE, load_model, save_model
from coreprune.surgery.graph import PrunablePair

HUGE = 16000 * 16000


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _assert_round_trip(model: nn.Module, loaded: nn.Module, x: torch.Tensor) -> None:
    """Same parameter names, shapes, dtypes, values and flags; the same outputs bit for bit."""
    pa = dict(model.named_parameters(remove_duplicate=False))
    pb = dict(loaded.named_parameters(remove_duplicate=False))
    assert list(pa) == list(pb)
    for name, p in pa.items():
        q = pb[name]
        assert p.shape == q.shape and p.dtype == q.dtype, name
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, name
    ba, bb = dict(model.named_buffers()), dict(loaded.named_buffers())
    assert list(ba) == list(bb)
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    assert loaded.training == model.training
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# --------------------------------------------------------------------------------------------
# Library models pruned by compress()


@pytest.mark.parametrize(
    ("arch", "shape"), [("lenet5", (3, 1, 28, 28)), ("resnet20", (2, 3, 32, 32))]
)
def test_compressed_library_model(tmp_path: Path, arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch).eval()
    pruned = compress(model, target=0.4, method="magnitude", progress=False).model.eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    first = next(pruned.parameters())
    first.requires_grad_(False)
    save_model(pruned, tmp_path / "m", arch=arch)
    x = torch.randn(*shape)
    _assert_round_trip(pruned, load_model(tmp_path / "m"), x)
    _assert_round_trip(pruned, load_model(tmp_path / "m", factory=lambda: build_model(arch)), x)


# --------------------------------------------------------------------------------------------
# Plain-PyTorch architectures pruned with apply_plan


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class token and positional embedding as root parameters, blocks."""

    def __init__(self, dim: int = 16, depth: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*(VitBlock(dim, 2) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class LayerNorm2d(nn.Module):
    """A custom module with parameters only (no size attributes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, int] = (8, 16), classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.stage1 = ConvNeXtBlock(dims[0])
        self.down = nn.Sequential(LayerNorm2d(dims[0]), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = ConvNeXtBlock(dims[1])
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


def _pair(producer: str, consumer: str) -> PrunablePair:
    return PrunablePair(producer, consumer, None, "gelu", False, (), ())


def _cut_hidden(model: nn.Module, fcs: list[tuple[str, str]], seed: int) -> nn.Module:
    """Keep a random half of every FFN's hidden units, via the public apply_plan."""
    gen = torch.Generator().manual_seed(seed)
    pairs, cuts = [], []
    for producer, consumer in fcs:
        n = model.get_submodule(producer).out_features
        keep = torch.randperm(n, generator=gen)[: n // 2]
        pairs.append(_pair(producer, consumer))
        cuts.append(PairCut(keep=keep))
    return apply_plan(model, pairs, cuts)


def _vit() -> TinyViT:
    return TinyViT()


def _convnext() -> TinyConvNeXt:
    return TinyConvNeXt()


@pytest.mark.parametrize(
    ("factory", "fcs"),
    [
        (_vit, [(f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2") for i in range(2)]),
        (_convnext, [("stage1.pwconv1", "stage1.pwconv2"), ("stage2.pwconv1", "stage2.pwconv2")]),
    ],
)
def test_plain_pytorch_models_pruned_with_apply_plan(
    tmp_path: Path, factory: Callable[[], nn.Module], fcs: list[tuple[str, str]]
) -> None:
    torch.manual_seed(0)
    pruned = _cut_hidden(factory().eval(), fcs, seed=1)
    producer = pruned.get_submodule(fcs[0][0])
    assert producer.out_features < factory().get_submodule(fcs[0][0]).out_features
    frozen = next(n for n, _ in pruned.named_parameters() if "." not in n or "stem" in n)
    pruned.get_parameter(frozen).requires_grad_(False)
    save_model(pruned, tmp_path / "m")
    loaded = load_model(tmp_path / "m", factory=factory)
    assert not loaded.get_parameter(frozen).requires_grad
    _assert_round_trip(pruned, loaded, torch.randn(2, 3, 16, 16))


class TinyBert(nn.Module):
    """Embedding, positional root parameter, LayerNorm, a custom scale module, tied head."""

    def __init__(self, vocab: int = 30, dim: int = 12, length: int = 6, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length, dim))
        self.norm = nn.LayerNorm(dim)
        self.scale = LayerNorm2d(dim)  # used as a per-feature scale and shift
        self.ffn = Mlp(dim, hidden)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("mask", torch.ones(length, dtype=torch.bool), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(ids) + self.pos) * self.scale.weight + self.scale.bias
        x = x + self.ffn(x)
        return self.head(x * self.mask[:, None])


def _narrow_width(model: TinyBert, keep: torch.Tensor) -> TinyBert:
    """Remove hidden features everywhere (a width cut surgery does not offer), by hand."""
    vocab, dim = model.embed.num_embeddings, len(keep)
    length = model.pos.shape[1]
    new = TinyBert(vocab, dim, length)
    new.mask = model.mask.clone()
    new.mask[1] = False
    with torch.no_grad():
        new.embed.weight.copy_(model.embed.weight[:, keep])
        new.pos.copy_(model.pos[:, :, keep])
        new.norm.weight.copy_(model.norm.weight[keep] + 0.25)
        new.norm.bias.copy_(model.norm.bias[keep] - 0.1)
        new.scale.weight.copy_(torch.rand(dim) + 0.5)
        new.scale.bias.copy_(torch.randn(dim))
        new.ffn.fc1.weight.copy_(model.ffn.fc1.weight[:, keep])
        new.ffn.fc1.bias.copy_(model.ffn.fc1.bias)
        new.ffn.fc2.weight.copy_(model.ffn.fc2.weight[keep])
        new.ffn.fc2.bias.copy_(model.ffn.fc2.bias[keep])
    return new


def test_width_pruned_embedding_layernorm_root_parameter_and_tied_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = TinyBert()
    pruned = _narrow_width(dense, torch.tensor([0, 2, 3, 5, 8, 11])).double().train()
    pruned.norm.eval()
    pruned.pos.requires_grad_(False)
    save_model(pruned, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / ARCH_FILE).read_text())
    assert spec["modules"][""]["tensors"]["pos"]["shape"] == [1, 6, 6]
    assert spec["modules"][""]["tensors"]["mask"]["kind"] == "nonpersistent_buffer"
    assert spec["modules"]["embed"]["attributes"] == {"embedding_dim": 6, "num_embeddings": 30}
    assert spec["modules"]["norm"]["attributes"] == {"normalized_shape": [6]}
    assert spec["modules"]["scale"]["attributes"] == {}
    assert spec["aliases"] == {"head.weight": "embed.weight"}
    loaded = load_model(tmp_path / "m", factory=TinyBert)
    assert loaded.norm.normalized_shape == (6,) and loaded.embed.embedding_dim == 6
    assert loaded.head.weight is loaded.embed.weight
    assert not loaded.mask[1] and loaded.pos.dtype == torch.float64
    assert loaded.training and not loaded.norm.training
    _assert_round_trip(pruned.eval(), loaded.eval(), torch.randint(0, 30, (3, 6)))


class NeedsRealTensors(nn.Module):
    """Cannot be built on the meta device (reads a value), and keeps a plain tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.offset = float(torch.ones(1).sum().item())
        self.shift = torch.full((3,), self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.shift.sum()


class PlainTensorAttribute(NeedsRealTensors):
    """Builds on the meta device, but keeps a plain tensor attribute the file cannot restore."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.fc = nn.Linear(4, 6)
        self.shift = torch.full((3,), 2.0)


@pytest.mark.parametrize("factory", [NeedsRealTensors, PlainTensorAttribute])
def test_factory_that_needs_real_tensors(tmp_path: Path, factory: Callable[[], nn.Module]) -> None:
    model = factory()
    model.fc = nn.Linear(4, 2)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", factory=factory)
    assert not any(t.is_meta for t in [*loaded.parameters(), loaded.shift])
    _assert_round_trip(model, loaded, torch.randn(2, 4))


# --------------------------------------------------------------------------------------------
# Tampered files: refused before anything of the named size is allocated


class TrackAllocations(TorchFunctionMode):
    """Records the largest real (non-meta) tensor any torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not out.is_meta:
            self.largest = max(self.largest, out.numel())
        return out


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x))


def _saved_small(folder: Path) -> dict[str, Any]:
    save_model(Small(), folder)
    spec: dict[str, Any] = json.loads((folder / ARCH_FILE).read_text())
    return spec


def test_tracker_sees_a_real_allocation() -> None:
    """The tracker used below does catch a large tensor built by a module constructor."""
    with TrackAllocations() as track:
        nn.Linear(300, 200)
    assert track.largest == 60000


def test_spec_naming_a_huge_linear_is_refused_before_allocating(tmp_path: Path) -> None:
    spec = _saved_small(tmp_path / "m")
    fc = spec["modules"]["fc"]
    fc["attributes"] = {"in_features": 16000, "out_features": 16000}
    fc["tensors"]["weight"]["shape"] = [16000, 16000]
    fc["tensors"]["bias"]["shape"] = [16000]
    (tmp_path / "m" / ARCH_FILE).write_text(json.dumps(spec))
    calls = []

    def factory() -> nn.Module:
        calls.append(1)
        return Small()

    with TrackAllocations() as track, pytest.raises(ValueError, match=r"records 'fc\.\w+' as"):
        load_model(tmp_path / "m", factory=factory)
    assert calls == []  # refused before the base model was even built
    assert track.largest < 1000


def test_huge_size_attributes_with_small_weights_are_refused(tmp_path: Path) -> None:
    spec = _saved_small(tmp_path / "m")
    spec["modules"]["fc"]["attributes"] = {"in_features": 16000, "out_features": 16000}
    (tmp_path / "m" / ARCH_FILE).write_text(json.dumps(spec))
    with TrackAllocations() as track, pytest.raises(ValueError, match=r"imply weight of shape"):
        load_model(tmp_path / "m", factory=Small)
    assert track.largest < 1000  # the base was built on the meta device, nothing else made


def test_weights_header_claiming_a_huge_tensor_is_refused(tmp_path: Path) -> None:
    """A header (and a matching spec and checksum) naming more data than the file holds."""
    spec = _saved_small(tmp_path / "m")
    spec["modules"]["fc"]["attributes"] = {"in_features": 16000, "out_features": 16000}
    spec["modules"]["fc"]["tensors"]["weight"]["shape"] = [16000, 16000]
    spec["modules"]["fc"]["tensors"]["bias"]["shape"] = [16000]
    tensors = {"fc.weight": [16000, 16000], "fc.bias": [16000], "out.weight": [2, 4]}
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in sorted(tensors.items()):
        size = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["out.bias"] = {"dtype": "F32", "shape": [2], "data_offsets": [offset, offset + 8]}
    raw = json.dumps(header).encode()
    weights = tmp_path / "m" / WEIGHTS_FILE
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    spec["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "m" / ARCH_FILE).write_text(json.dumps(spec))
    with TrackAllocations() as track, pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path / "m", factory=Small)
    assert track.largest < 1000


def test_loader_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pickle must not be used")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (torch, "save")):
        monkeypatch.setattr(owner, name, refuse)
    model = _narrow_width(TinyBert(), torch.tensor([1, 4, 7]))
    save_model(model, tmp_path / "m")
    _assert_round_trip(
        model, load_model(tmp_path / "m", factory=TinyBert), torch.zeros(1, 6).long()
    )
