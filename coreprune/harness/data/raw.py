"""The in-memory form every loader returns, so the dataset and loader code is shared."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageData:
    """Raw train/test images (uint8; (N, H, W) grey or (N, C, H, W)) and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.ndim not in (3, 4):
                raise ValueError(
                    f"{split}_images must be uint8 (N, H, W) or (N, C, H, W), "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.ndim != 1:
                raise ValueError(f"{split}_labels must be a 1-D int64 tensor")
            if len(images) != len(labels):
                raise ValueError(
                    f"{split}: {len(images)} images but {len(labels)} labels; they must match"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"{split}_labels must lie in [0, {self.num_classes})")
