"""One labelled mini-batch for the data-driven scores (SNIP, GraSP, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from coreprune.checks import check_int

__all__ = ["is_labelled_pair", "labelled_batch", "labelled_batches"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]


def labelled_batch(
    data: object, batch_size: int | None, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch_size` examples of `data` (a DataLoader or iterable of (inputs, labels)
    batches, or one (inputs, labels) pair), concatenated across batches as needed.

    `batch_size=None` takes the first batch as it comes.
    """
    if data is None:
        raise ValueError(
            f"{who} needs labelled data: pass data= (a DataLoader of (inputs, labels) batches, "
            "or one (inputs, labels) pair)"
        )
    if batch_size is not None:
        check_int(batch_size, "batch_size (or None)", minimum=1)
    if is_labelled_pair(data):
        batches: Iterable[object] = [data]
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise TypeError(
            f"data must be a DataLoader/iterable of (inputs, labels) or one (inputs, labels) "
            f"pair, got {type(data).__name__}"
        )
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    have = 0
    for x, y in labelled_batches(batches, who):
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if batch_size is None or have >= batch_size:
            break
    if have == 0:
        raise ValueError(f"{who}: data yielded no examples; pass a non-empty loader")
    if batch_size is not None and have < batch_size:
        raise ValueError(
            f"{who}: batch_size={batch_size} but data holds only {have} examples; lower batch_size"
        )
    x, y = torch.cat(xs), torch.cat(ys)
    if batch_size is not None:
        x, y = x[:batch_size], y[:batch_size]
    return x, y


def labelled_batches(data: object, who: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (inputs, labels) batches of `data` (or the one pair it is), each checked."""
    batches: Iterable[object] = [data] if is_labelled_pair(data) else data  # type: ignore[assignment]
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(
                f"{who}: each batch must be (inputs, labels), got {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"{who}: inputs and labels must be tensors")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{who}: a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
        yield x, y


def is_labelled_pair(data: object) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor)
