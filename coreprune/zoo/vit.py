"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 grey images, in plain PyTorch.

Transformers are what most users now bring to structured pruning, so the library needs a trained
one to measure on. This ViT has what the pruning surgery must handle in real transformers:
a patch embedding, pre-norm blocks whose attention uses one fused qkv Linear (the layout of timm
and HF ViT/GPT-2) with its heads split by a reshape, a GELU feed-forward network (FFN) read by a
Linear, residual streams, and (batch, tokens, features) activations everywhere. It is small
enough to train on Fashion-MNIST in a few CPU minutes.

Every layer is its own module so torch.fx sees one call per module. The attention module reads
its head count from ``num_heads`` at run time, so removing heads is slicing ``qkv`` and ``proj``
and lowering ``num_heads`` (``coreprune.surgery.attention``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_positive_int


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Linear (dim -> 3 * heads * head_dim,
    laid out [q heads | k heads | v heads], each head ``head_dim`` wide) and an output ``proj``
    Linear (heads * head_dim -> dim). Scores are scaled by 1/sqrt(head_dim)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        check_positive_int(num_heads, "num_heads")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"dim={dim} is not divisible by num_heads={num_heads}; give head_dim"
                )
            head_dim = dim // num_heads
        check_positive_int(head_dim, "head_dim")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    """x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x)))): the pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """Patch embedding (a stride-``patch`` conv) plus learned position embeddings, ``depth``
    pre-norm blocks, a final LayerNorm, mean pooling over tokens and a Linear classifier.

    Mean pooling instead of a class token keeps every token the same kind of row for the
    calibrated paths (all leading axes are rows). ``image_size`` must be a multiple of
    ``patch``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_hidden: int = 256,
    ) -> None:
        super().__init__()
        for value, name in (
            (in_channels, "in_channels"),
            (num_classes, "num_classes"),
            (image_size, "image_size"),
            (patch, "patch"),
            (dim, "dim"),
            (depth, "depth"),
            (num_heads, "num_heads"),
            (mlp_hidden, "mlp_hidden"),
        ):
            check_positive_int(value, name)
        if image_size % patch:
            raise ValueError(f"image_size={image_size} must be a multiple of patch={patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal(0.02) linears and position embeddings, zero biases: the usual ViT
        initialisation, which trains stably with SGD from a short warm-up."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def vit_small(in_channels: int = 1, num_classes: int = 10, **kwargs: int) -> ViT:
    """The shipped configuration: patch 4 (49 tokens), width 64, 4 blocks of 4 heads, FFN 256."""
    return ViT(in_channels=in_channels, num_classes=num_classes, **kwargs)
