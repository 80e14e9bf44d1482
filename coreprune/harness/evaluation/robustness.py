"""What a pruned network loses beyond test accuracy (Liebenwein et al., "Lost in Pruning", MLSys
2021): agreement with the dense network, accuracy under input noise, and calibration.

Two networks of equal test accuracy can disagree on many examples and degrade differently off
the test distribution, so a pruning method is judged on these too. Every function only reads the
models: eval mode (each submodule's train flag is restored), no autograd, inputs moved to each
model's own device. Loaders yield (inputs, integer labels) pairs and are iterated in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import RandomSampler

from coreprune.checks import check_float, check_int, check_module
from coreprune.torch_utils import eval_mode, model_device

__all__ = [
    "DEFAULT_SIGMAS",
    "agreement",
    "expected_calibration_error",
    "noisy_accuracy",
    "robustness_report",
]

DEFAULT_SIGMAS = (0.1, 0.25, 0.5)


# --------------------------------------------------------------------------------------------
# Checks and helpers


def _check_loader(loader: object, *, shuffled_ok: bool) -> Iterable[object]:
    if isinstance(loader, (torch.Tensor, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be a DataLoader (or iterable) of (inputs, labels), got "
            f"{type(loader).__name__}"
        )
    if not shuffled_ok and isinstance(getattr(loader, "sampler", None), RandomSampler):
        raise ValueError(
            "loader shuffles (RandomSampler), so the same seed would put different noise on "
            "each example for each model; build it with shuffle=False"
        )
    return loader


def _check_sigmas(sigmas: object) -> tuple[float, ...]:
    if isinstance(sigmas, (int, float, str)) or not isinstance(sigmas, Sequence):
        raise TypeError(
            f"sigmas must be a sequence of noise levels, e.g. [0.1]; got {type(sigmas).__name__}"
        )
    out = [check_float(s, f"sigmas[{i}] (a noise std)", low=0.0) for i, s in enumerate(sigmas)]
    if not out:
        raise ValueError("sigmas is empty; give at least one noise level")
    if len(set(out)) != len(out):
        raise ValueError(f"sigmas has repeated values {out}; give each level once")
    return tuple(out)


def _batches(loader: Iterable[object]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError("the loader must yield (inputs, labels) pairs")
        x, y = batch
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("the loader must yield tensors (inputs, labels)")
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(
                f"labels must be a 1-D integer class-index tensor, got {y.dtype} of shape "
                f"{tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"a batch has {x.shape[0]} inputs but {y.shape[0]} labels")
        yield x, y


def _logits(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's logits for `x` (moved to the model's device), as float64 on the CPU."""
    out = model(x.to(model_device(model)))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return logits of shape (batch, classes), got {got}")
    return out.detach().double().cpu()


@dataclass
class _Calibration:
    """Per-bin sums for ECE: the count, sum of confidences and sum of correct predictions."""

    bins: int
    count: torch.Tensor = field(init=False)
    confidence: torch.Tensor = field(init=False)
    correct: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.count = torch.zeros(self.bins, dtype=torch.float64)
        self.confidence = torch.zeros(self.bins, dtype=torch.float64)
        self.correct = torch.zeros(self.bins, dtype=torch.float64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = torch.softmax(logits, dim=1)
        conf, pred = probs.max(dim=1)
        # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 joins bin 0.
        index = (torch.ceil(conf * self.bins).long() - 1).clamp(0, self.bins - 1)
        self.count.index_add_(0, index, torch.ones_like(conf))
        self.confidence.index_add_(0, index, conf)
        self.correct.index_add_(0, index, (pred == labels).double())

    def ece(self) -> float:
        # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |correct_b - confidence_b| / N
        total = float(self.count.sum())
        return float((self.correct - self.confidence).abs().sum()) / total


def _empty(count: int) -> None:
    if count == 0:
        raise ValueError("loader yielded no examples; cannot evaluate on an empty loader")


# --------------------------------------------------------------------------------------------
# Public metrics


def agreement(model_a: nn.Module, model_b: nn.Module, loader: Iterable[object]) -> float:
    """Fraction of examples on which the two models' top-1 predictions agree.

    Labels are not used: this measures how far pruning moved the function (Liebenwein et al.),
    not whether either model is right. Each model runs on its own device.
    """
    check_module(model_a, "model_a")
    check_module(model_b, "model_b")
    loader = _check_loader(loader, shuffled_ok=True)
    same, count = 0, 0
    with eval_mode(model_a, model_b, no_grad=True):
        for x, _ in _batches(loader):
            pred_a = _logits(model_a, x, "model_a").argmax(dim=1)
            pred_b = _logits(model_b, x, "model_b").argmax(dim=1)
            same += int((pred_a == pred_b).sum())
            count += x.shape[0]
    _empty(count)
    return same / count


def noisy_accuracy(
    model: nn.Module, loader: Iterable[object], sigmas: Sequence[float], *, seed: int = 0
) -> dict[float, float]:
    """Top-1 accuracy with Gaussian noise of std sigma added to the (normalised) inputs.

    The noise is z * sigma with z ~ N(0, 1) drawn batch by batch, in loader order, from a CPU
    generator seeded with `seed`, restarted for each sigma: every model and every sigma sees the
    same z on the same example (hence `loader` must not shuffle), and results do not depend on
    the device. sigma = 0 gives the clean accuracy.
    """
    check_module(model, "model")
    loader = _check_loader(loader, shuffled_ok=False)
    levels = _check_sigmas(sigmas)
    seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
    out: dict[float, float] = {}
    with eval_mode(model, no_grad=True):
        for sigma in levels:
            generator = torch.Generator().manual_seed(seed)
            correct, count = 0, 0
            for x, y in _batches(loader):
                noisy = _add_noise(x, sigma, generator)
                correct += int((_logits(model, noisy, "model").argmax(dim=1) == y.cpu()).sum())
                count += x.shape[0]
            _empty(count)
            out[sigma] = correct / count
    return out


def _add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """A new tensor x + sigma * z; z is drawn in float32 on the CPU whatever x's device."""
    if not x.is_floating_point():
        raise TypeError(
            f"inputs must be floating point (normalised) to add noise to, got {x.dtype}; "
            "normalise them in the dataset"
        )
    z = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return x + sigma * z.to(device=x.device, dtype=x.dtype)


def expected_calibration_error(model: nn.Module, loader: Iterable[object], bins: int = 15) -> float:
    """Expected calibration error with `bins` equal-width confidence bins on [0, 1].

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, where confidence is the top softmax
    probability, B_b the examples whose confidence lies in (b/bins, (b+1)/bins], acc the
    fraction of them predicted right and conf their mean confidence (Guo et al., 2017).
    """
    check_module(model, "model")
    loader = _check_loader(loader, shuffled_ok=True)
    stats = _Calibration(check_int(bins, "bins", minimum=1))
    with eval_mode(model, no_grad=True):
        for x, y in _batches(loader):
            stats.add(_logits(model, x, "model"), y.cpu())
    _empty(int(stats.count.sum()))
    return stats.ece()


def robustness_report(
    model: nn.Module,
    dense: nn.Module,
    loader: Iterable[object],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    seed: int = 0,
    bins: int = 15,
) -> dict[str, object]:
    """`model` (pruned) judged against `dense` on one loader, in one clean pass plus one per sigma.

    Keys: "accuracy" and "dense_accuracy" (clean top-1), "agreement" (top-1 agreement with
    dense), "ece" (of `model`, `bins` bins), "noisy_accuracy" ({sigma: accuracy}, as in
    `noisy_accuracy` with `seed`) and "examples" (N). Each value equals the one the single
    function returns.
    """
    check_module(model, "model")
    check_module(dense, "dense")
    loader = _check_loader(loader, shuffled_ok=False)
    levels = _check_sigmas(sigmas)
    seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
    stats = _Calibration(check_int(bins, "bins", minimum=1))
    correct, dense_correct, same, count = 0, 0, 0, 0
    with eval_mode(model, dense, no_grad=True):
        for x, y in _batches(loader):
            logits = _logits(model, x, "model")
            pred = logits.argmax(dim=1)
            dense_pred = _logits(dense, x, "dense").argmax(dim=1)
            labels = y.cpu()
            correct += int((pred == labels).sum())
            dense_correct += int((dense_pred == labels).sum())
            same += int((pred == dense_pred).sum())
            count += x.shape[0]
            stats.add(logits, labels)
    _empty(count)
    return {
        "accuracy": correct / count,
        "dense_accuracy": dense_correct / count,
        "agreement": same / count,
        "ece": stats.ece(),
        "noisy_accuracy": noisy_accuracy(model, loader, levels, seed=seed),
        "examples": count,
    }
