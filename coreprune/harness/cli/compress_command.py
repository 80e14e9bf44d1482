"""`coreprune compress`: a zoo model, a saved model or a factory's model, compressed (or certified
on the held-out test split), evaluated, fine-tuned and saved."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coreprune.certify import CertifiedCompression, certify
from coreprune.certify.bounds import min_holdout_size
from coreprune.certify.heldout import INFORMATIVE
from coreprune.certify.search import DEFAULT_TARGETS, certified_compress
from coreprune.compress import CompressResult, compress
from coreprune.harness.cli.run_folder import check_run_folder, run_dir, run_loaders, write_json
from coreprune.harness.comparison import (
    CompareConfig,
    first_inputs,
    make_pruner,
)
from coreprune.harness.data import Loaders
from coreprune.harness.training import (
    default_image_size,
    evaluate,
    fit,
    recalibrated_copy,
    set_seed,
)
from coreprune.serialization import ARCH_FILE, load_model, save_model
from coreprune.torch_utils import eval_mode, resolve_device
from coreprune.zoo import MODEL_NAMES


@dataclass
class _Source:
    """The model to compress, and how to save it again (architecture name and kwargs)."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any] | None


def prepare_compress(a: argparse.Namespace) -> Callable[[], int]:
    if a.weights is not None and a.model_factory is None:
        raise ValueError("--weights goes with --model-factory (a --model-dir holds its weights)")
    if a.factory_trained and (a.model_factory is None or a.weights is not None):
        raise ValueError("--factory-trained goes with --model-factory and no --weights")
    if a.guarantee is None and a.budgets != list(DEFAULT_TARGETS):
        raise ValueError("--budgets goes with --guarantee (--target sets one budget)")
    if a.guarantee is not None and a.finetune_epochs > 0:
        raise ValueError("--guarantee certifies the model as compressed; fine-tuning would "
                         "change it and void the guarantee: drop --finetune-epochs")  # fmt: skip
    if a.guarantee is not None and a.certify:
        raise ValueError("--guarantee already certifies the saved model: drop --certify")
    check_run_folder(Path(a.out), a, resume=False)
    source = _factory_model(a.model_factory, a.weights) if a.model_factory else _saved_model(a)
    if a.model_factory and a.weights is None and not a.factory_trained:
        raise ValueError(
            f"--model-factory {a.model_factory} without --weights would prune the model exactly "
            "as the factory builds it, usually untrained; pass --weights FILE, or "
            "--factory-trained if the factory loads its own trained weights"
        )
    size = a.image_size
    if size is None and a.model_dir is not None:
        arch = source.arch
        size = default_image_size(arch, a.dataset) if arch in MODEL_NAMES else None
    loaders = run_loaders(a, size)
    device = resolve_device(a.device)
    model = source.model.to(device)
    example = next(iter(loaders.train))[0][:1].to(device)  # MACs are counted per image
    _check_accepts(model, example, a.dataset)
    set_seed(a.seed)
    kwargs: dict[str, Any] = {"example_input": example, "metric": a.metric,
                              "allocation": a.allocation, "mode": a.mode}  # fmt: skip
    if a.method == "coreset" and a.calibration > 0:
        kwargs.update(
            calibration=first_inputs(loaders.train, a.calibration).to(device), rank=a.rank
        )
    if a.eps is not None:
        kwargs.update(eps=a.eps)
        kwargs.pop("metric"), kwargs.pop("allocation")
    elif a.guarantee is None:
        kwargs.update(target=a.target)
    if a.certify or a.guarantee is not None:
        _check_holdout_size(loaders, a.confidence)
    method = make_pruner(CompareConfig(out="unused"), a.method, loaders.train, a.seed)
    print(f"compressing with {a.method} ({device})")
    generator = torch.Generator().manual_seed(a.seed)
    certified = None
    if a.guarantee is not None:  # the test split is the holdout, used for nothing else
        certified = certified_compress(
            model, guarantee=a.guarantee, holdout=loaders.test, confidence=a.confidence,
            targets=a.budgets, method=method, generator=generator, **kwargs,
        )  # fmt: skip
        result = certified.result
    else:
        result = compress(model, method=method, generator=generator, **kwargs)

    def work() -> int:
        _compress_rest(a, source, model, result, loaders, device, certified)
        return 0

    return work


def _check_holdout_size(loaders: Loaders, confidence: float) -> None:
    """A held-out certificate needs enough test images to say anything: refuse fewer."""
    need = min_holdout_size(1 - confidence, INFORMATIVE)
    have = len(loaders.test.dataset)  # type: ignore[arg-type]
    if have < need:
        raise ValueError(
            f"--certify/--guarantee: the test split has {have} images; at --confidence "
            f"{confidence:g} a held-out bound needs at least {need} (raise --limit or lower "
            "--confidence)"
        )


def _compress_rest(
    a: argparse.Namespace, source: _Source, dense: nn.Module, result: CompressResult,
    loaders: Loaders, device: torch.device, certified: CertifiedCompression | None = None,
) -> None:  # fmt: skip
    """Everything after the (validated) compression: accuracies, BN repair, fine-tuning, files."""
    out = run_dir(Path(a.out), a, device)
    report = result.report
    metrics: dict[str, Any] = {
        "dense_accuracy": evaluate(dense, loaders.test, device=device)["accuracy"],
        "pruned_accuracy": evaluate(result.model, loaders.test, device=device)["accuracy"],
        "params_before": report.params_before, "params_after": report.params_after,
        "macs_per_image_before": report.macs_before, "macs_per_image_after": report.macs_after,
    }  # fmt: skip
    pruned = result.model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())
    if has_bn and certified is not None:
        print("batch-norm statistics left as compressed: re-estimating them would change the "
              "certified model and void its guarantee")  # fmt: skip
    elif has_bn:
        print("re-estimating batch-norm statistics on training batches")
        pruned = recalibrated_copy(pruned, loaders.train, device)
        metrics["recalibrated_accuracy"] = evaluate(pruned, loaders.test, device=device)["accuracy"]
    if a.finetune_epochs > 0:
        print(f"fine-tuning for {a.finetune_epochs} epochs")
        fit(pruned, loaders.train, epochs=a.finetune_epochs, lr=a.finetune_lr, device=device,
            seed=a.seed)  # fmt: skip
        metrics["finetuned_accuracy"] = evaluate(pruned, loaders.test, device=device)["accuracy"]
    certificate_text = None
    if certified is not None:
        certificate_text = str(certified)
        metrics["certified_compression"] = {
            "guarantee": dataclasses.asdict(certified.guarantee),
            "confidence": certified.confidence, "n": certified.n, "target": certified.target,
            "tests": [dataclasses.asdict(test) for test in certified.tests],
            "untested": list(certified.untested), "assumption": certified.assumption,
        }  # fmt: skip
    elif a.certify:
        cert = certify(dense, pruned, loaders.test, confidence=a.confidence, device=device)
        certificate_text = str(cert)
        metrics["certificate"] = dataclasses.asdict(cert)
    report_text = report.to_markdown()
    if certificate_text is not None:
        report_text += "\n\n```\n" + certificate_text + "\n```"
    (out / "report.md").write_text(report_text + "\n")
    save_model(pruned.cpu(), out / "model", arch=source.arch, arch_kwargs=source.arch_kwargs)
    if a.model_factory:
        metrics["load_with"] = load_with_code(str(out / "model"), source.arch)
    write_json(out / "metrics.json", metrics)
    print(report_text)
    print(json.dumps(metrics, indent=2))


def load_with_code(folder: str, factory: str) -> str:
    """Python that loads a model `compress --model-factory MODULE:FUNCTION` saved in `folder`."""
    module, _, function = factory.partition(":")
    return (
        f"from {module} import {function}; "
        "from coreprune.serialization import load_model; "
        f"model = load_model({folder!r}, factory={function})"
    )


def _saved_model(a: argparse.Namespace) -> _Source:
    folder = Path(a.model_dir)
    if not (folder / ARCH_FILE).is_file():
        raise FileNotFoundError(f"--model-dir {folder}: no {ARCH_FILE}; pass a folder written by "
                                "`coreprune train` (its model/ subfolder)")  # fmt: skip
    try:
        spec = json.loads((folder / ARCH_FILE).read_text())
        model = load_model(folder)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        # json.JSONDecodeError is a ValueError; load_model names what is wrong with the folder
        raise ValueError(f"--model-dir {folder}: {err}") from err
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(f"--model-dir {folder}: {ARCH_FILE} names no architecture (arch)")
    return _Source(model, spec["arch"], spec.get("arch_kwargs"))


def _factory_model(reference: str, weights: str | None) -> _Source:
    """Call the user's `module:function` for a model, and load `weights` into it if given."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--model-factory must be MODULE:FUNCTION, got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model-factory: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ValueError(f"--model-factory: {module_name!r} has no function {function_name!r}")
    try:
        model = factory()
    except Exception as err:  # the user's code: any failure is theirs to fix, shown in one line
        raise ValueError(
            f"--model-factory: {reference}() failed ({type(err).__name__}: {err}); it must "
            "build the model with no arguments"
        ) from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model-factory: {reference}() returned a {type(model).__name__}, "
                        "not an nn.Module")  # fmt: skip
    if weights is not None:
        _load_weights(model, Path(weights))
    return _Source(model.eval(), reference, None)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a plain state dict, refusing anything that is not one tensor per model entry."""
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for a broken file
            raise ValueError(f"--weights {path}: not a readable safetensors file "
                             f"({type(err).__name__}: {err})") from err  # fmt: skip
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"--weights {path}: not a state dict readable with "
                             f"weights_only=True ({type(err).__name__}: {err})") from err  # fmt: skip
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"--weights {path}: expected a state dict (names -> tensors)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))  # fmt: skip
    if wrong:
        problems.append(f"shape (file vs model) {'; '.join(wrong[:5])}")
    if problems:
        raise ValueError(f"--weights {path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _check_accepts(model: nn.Module, example: torch.Tensor, dataset: str) -> None:
    try:
        with eval_mode(model, no_grad=True):
            model(example)
    except RuntimeError as err:
        raise ValueError(f"the model does not accept {dataset} images of shape "
                         f"{tuple(example.shape)}: {err}") from err  # fmt: skip
