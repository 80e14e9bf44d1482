"""Tensor transforms that work on whole batches (B, C, H, W) at once.

Per-sample Python transforms would cost more than training LeNet itself on this CPU, so the
dataset hands each batch to these in one go. Randomness comes from ``generator`` when given,
else from torch's global RNG, so ``set_seed`` makes augmented training reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from coreprune.checks import check_fraction, check_int


def _check_batch(batch: torch.Tensor, name: str) -> None:
    if batch.ndim != 4:
        raise ValueError(f"{name} expects a (B, C, H, W) batch, got shape {tuple(batch.shape)}")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[object]) -> None:
        for t in transforms:
            if not callable(t):
                raise TypeError(f"every transform must be callable, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            batch = t(batch)  # type: ignore[operator]
        return batch

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToFloat:
    """uint8 (B, H, W) or (B, C, H, W) -> float32 (B, C, H, W) in [0, 1]."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8:
            raise TypeError(f"ToFloat expects uint8 images, got {batch.dtype}")
        if batch.ndim == 3:
            batch = batch.unsqueeze(1)
        _check_batch(batch, "ToFloat")
        return batch.to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return "ToFloat()"


class PadTo:
    """Zero-pad (black) each image symmetrically to ``size`` x ``size`` (e.g. 28 -> 32)."""

    def __init__(self, size: int) -> None:
        self.size = check_int(size, "size", minimum=1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch, "PadTo")
        h, w = batch.shape[-2:]
        if h > self.size or w > self.size:
            raise ValueError(f"PadTo({self.size}) cannot shrink {h}x{w} images; it only pads")
        top, left = (self.size - h) // 2, (self.size - w) // 2
        return F.pad(batch, (left, self.size - w - left, top, self.size - h - top))

    def __repr__(self) -> str:
        return f"PadTo({self.size})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then crop back to the input size at an
    independent random offset per image (the usual CIFAR augmentation)."""

    def __init__(self, padding: int, generator: torch.Generator | None = None) -> None:
        self.padding = check_int(padding, "padding", minimum=0)
        self.generator = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch, "RandomCrop")
        if self.padding == 0:
            return batch
        b, c, h, w = batch.shape
        p = self.padding
        padded = F.pad(batch, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        # two gathers (rows, then columns) beat one 4-D advanced index on CPU
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * p)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
        return padded.gather(2, rows).gather(3, cols)

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``, independently."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = check_fraction(p, "p (a probability)", low_open=False, high_open=False)
        self.generator = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch, "RandomHorizontalFlip")
        flip = torch.rand(batch.shape[0], generator=self.generator) < self.p
        return torch.where(flip[:, None, None, None], batch.flip(-1), batch)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Per-channel (x - mean) / std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError("mean and std must be non-empty and of equal length")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch, "Normalize")
        if batch.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Normalize has {self.mean.shape[1]} channels, batch has {batch.shape[1]}"
            )
        return (batch - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
