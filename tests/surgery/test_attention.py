"""Attention heads as coupled groups: discovery, exact identity at zero pruning, masking equals
physical removal, recounted costs, nn.MultiheadAttention through HeadAttention, and the
least-squares refit of the output projection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import coreprune
from coreprune.compress import count_macs, count_params
from coreprune.compress.heads import prune_attention_heads
from coreprune.surgery.attention import (
    AttentionHeads,
    HeadAttention,
    find_attention_heads,
    head_columns,
    prune_heads,
)
from coreprune.surgery.graph import find_prunable_pairs
from coreprune.zoo.vit import ViT

DIM, HEADS, HEAD_DIM, DEPTH = 16, 4, 4, 2


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    model = ViT(image_size=8, patch=2, dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_hidden=24)
    with torch.no_grad():  # away from the init's near-zero weights, so heads differ
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, 1, 8, 8)


class MHABlock(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        a, _ = self.attn(y, y, y, need_weights=False)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return x + a


def _tokens(seed: int = 2) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(3, 5, DIM)


def _masked(model: nn.Module, spec: AttentionHeads, keep: list[int]) -> nn.Module:
    """The dense model with the removed heads' outputs multiplied by 0 on the way into the
    output projection: what removal must reproduce."""
    gate = torch.zeros(spec.num_heads * spec.head_dim)
    gate[head_columns(spec, keep)] = 1.0
    model.get_submodule(spec.out).register_forward_pre_hook(lambda _m, args: (args[0] * gate,))
    return model


def test_the_vits_fused_attention_is_found() -> None:
    specs = find_attention_heads(_vit())
    assert [(s.module, s.layout, s.projections, s.out) for s in specs] == [
        (f"blocks.{i}.attn", "fused", (f"blocks.{i}.attn.qkv",), f"blocks.{i}.attn.proj")
        for i in range(DEPTH)
    ]
    assert all((s.num_heads, s.head_dim) == (HEADS, HEAD_DIM) for s in specs)
    by_hand = AttentionHeads.fused("blocks.0.attn", HEADS, HEAD_DIM)
    assert by_hand == specs[0]


def test_zero_pruning_is_the_dense_model_exactly() -> None:
    model, x = _vit(), _images()
    specs = find_attention_heads(model)
    same = prune_heads(model, specs, [list(range(HEADS))] * DEPTH)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    result = prune_attention_heads(model, 0.0)
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


@pytest.mark.parametrize("keep", [[0, 2], [3], [1, 2, 3]])
def test_masking_heads_equals_removing_them(keep: list[int]) -> None:
    model, x = _vit(), _images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    specs = find_attention_heads(model)
    small = prune_heads(model, specs, [keep, [0, 1]])
    masked = _masked(_masked(_vit(), specs[0], keep), specs[1], [0, 1])
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=0)
    attn = small.get_submodule("blocks.0.attn")
    assert attn.num_heads == len(keep) and attn.qkv.out_features == 3 * len(keep) * HEAD_DIM
    assert attn.proj.in_features == len(keep) * HEAD_DIM
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_costs_are_recounted() -> None:
    model, x = _vit(), _images()
    specs = find_attention_heads(model)
    small = prune_heads(model, specs, [[0, 1, 2], [1]])
    removed_heads = 1 + 3
    per_head = 3 * HEAD_DIM * (DIM + 1) + HEAD_DIM * DIM  # q, k, v rows (+bias), out columns
    assert count_params(small) == count_params(model) - removed_heads * per_head
    tokens, batch = (8 // 2) ** 2, x.shape[0]
    # per head and image: q, k, v projections, q @ k^T, weights @ v, and the output columns
    head_macs = (
        tokens * DIM * 3 * HEAD_DIM + 2 * tokens * tokens * HEAD_DIM + tokens * HEAD_DIM * DIM
    )
    assert count_macs(small, x) == count_macs(model, x) - batch * removed_heads * head_macs


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_prunes_through_head_attention(batch_first: bool) -> None:
    torch.manual_seed(0)
    block, x = MHABlock(batch_first).eval(), _tokens()
    mha = block.attn
    twin = HeadAttention.from_multihead(mha).eval()
    y = block.ln(x) if batch_first else block.ln(x).transpose(0, 1)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, -2:] = True
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": pad}):
            want, want_w = mha(y, y, y, **kwargs)
            got, got_w = twin(y, y, y, **kwargs)
            assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-6)
    specs = find_attention_heads(block)
    assert [(s.module, s.layout) for s in specs] == [("attn", "mha")]
    same = prune_heads(block, specs, [list(range(HEADS))])
    assert isinstance(same.attn, nn.MultiheadAttention)  # nothing removed: left as it was
    small = prune_heads(block, specs, [[1, 3]])
    assert isinstance(small.attn, HeadAttention) and small.attn.num_heads == 2
    converted = MHABlock(batch_first).eval()
    converted.load_state_dict(block.state_dict())
    converted.attn = HeadAttention.from_multihead(block.attn).eval()  # type: ignore[assignment]
    masked = _masked(converted, AttentionHeads.separate("attn", HEADS, HEAD_DIM, out="out_proj",
                                                        q="q_proj", k="k_proj", v="v_proj"), [1, 3])  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=0)
    pairs, _ = find_prunable_pairs(small)  # still traceable: HeadAttention stays one call
    assert pairs == []


@pytest.mark.parametrize("method", ["magnitude", "wanda", "flap", "refit", "random"])
def test_least_squares_refit_of_the_output_projection_helps(method: str) -> None:
    model, calib = _vit(), _images(40)
    results = {
        c: prune_attention_heads(
            model,
            0.5,
            method=method,
            calibration=calib,
            compensate=c,
            generator=torch.Generator().manual_seed(0),
        )
        for c in ("none", "lstsq")
    }
    plain, refit = results["none"], results["lstsq"]
    assert [k.tolist() for k in plain.keeps] == [k.tolist() for k in refit.keeps]
    assert all(k.numel() == HEADS // 2 for k in refit.keeps)
    with torch.no_grad():
        dense = model(calib)
        err_plain = (plain.model(calib) - dense).norm()
        err_refit = (refit.model(calib) - dense).norm()
    assert err_refit < err_plain
    assert all("least squares" in note for note in refit.notes)


def test_flap_bias_compensation_helps() -> None:
    model, calib = _vit(), _images(40)
    plain = prune_attention_heads(model, 0.5, method="flap", calibration=calib)
    comp = prune_attention_heads(model, 0.5, method="flap", calibration=calib, compensate="bias")
    with torch.no_grad():
        dense = model(calib)
        assert (comp.model(calib) - dense).norm() < (plain.model(calib) - dense).norm()


def test_bad_input_is_refused_before_any_work() -> None:
    model = _vit()
    specs = find_attention_heads(model)
    with pytest.raises(ValueError, match="fraction must be in"):
        prune_attention_heads(model, 1.0)
    with pytest.raises(TypeError, match="fraction must be a number"):
        prune_attention_heads(model, "half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        prune_attention_heads(model, 0.5, method="taylor")
    with pytest.raises(ValueError, match="needs calibration"):
        prune_attention_heads(model, 0.5, method="wanda")
    with pytest.raises(ValueError, match="distinct indices"):
        prune_heads(model, specs, [[0, 0], [1]])
    with pytest.raises(ValueError, match="at least one head"):
        prune_heads(model, specs, [[], [1]])
    with pytest.raises(ValueError, match="one each"):
        prune_heads(model, specs, [[0]])
    with pytest.raises(ValueError, match="outputs"):
        prune_heads(model, [AttentionHeads.fused("blocks.0.attn", 2, HEAD_DIM)], [[0]])
    with pytest.raises(ValueError, match="outputs"):  # checked before any work, at any budget
        prune_attention_heads(
            model, 0.1, specs=[AttentionHeads.fused("blocks.0.attn", 2, HEAD_DIM)]
        )
    with pytest.raises(ValueError, match="no attention module"):
        prune_attention_heads(nn.Sequential(nn.Linear(2, 2)), 0.5)


def test_ffn_pairs_still_prune_after_the_heads() -> None:
    """Heads and FFN neurons compose: the head-pruned ViT still traces, and compress finds and
    rewires its FFNs on token activations."""
    model, calib = _vit(), _images(20)
    heads = prune_attention_heads(model, 0.5, calibration=calib, compensate="lstsq").model
    result = coreprune.compress(
        heads, target=0.2, method="magnitude", compensate="lstsq", calibration=calib,
        progress=False,
    )  # fmt: skip
    assert [r.producer for r in result.report.rows] == [f"blocks.{i}.fc1" for i in range(DEPTH)]
    assert count_params(result.model) < count_params(heads) < count_params(model)
    with torch.no_grad():
        assert result.model(calib).shape == (20, 10)


def test_refit_head_choice_is_bounded_by_its_gap_and_optimal_for_one_head() -> None:
    """The head "refit" method is greedy structured OBS over head blocks: removing one head is
    the best single removal, and the reported lower bound is below every head set's refit."""
    from itertools import combinations

    from coreprune.compress.capture import capture_input, capture_output
    from coreprune.compress.heads import _greedy_refit, as_head_attention
    from coreprune.surgery.rewire import lstsq_weights

    model, calib = _vit(), _images(40)
    dense, specs = as_head_attention(model, find_attention_heads(model))
    spec = specs[0]
    x = capture_input(dense, spec.out, calib).reshape(-1, HEADS * HEAD_DIM).double()
    y = capture_output(dense, spec.out, calib).reshape(-1, DIM).double()
    for keep in (3, 2, 1):
        kept, gap = _greedy_refit(dense, dense, spec, calib, keep, 1e-12)
        residuals = {
            s: lstsq_weights(x[:, head_columns(spec, list(s))], y, ridge=1e-12, bias=True).residual
            for s in combinations(range(HEADS), keep)
        }
        best = min(residuals.values())
        assert gap.lower <= best * (1 + 1e-9)  # a bound for every head set, as stated
        assert gap.residual >= gap.lower
        assert abs(gap.residual - residuals[tuple(kept.tolist())]) < 1e-6
        if keep == HEADS - 1:
            assert residuals[tuple(kept.tolist())] <= best * (1 + 1e-9)
    note = prune_attention_heads(model, 0.5, method="refit", calibration=calib).notes[0]
    assert "lower bound" in note
