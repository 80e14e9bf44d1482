"""Main job: train LeNet-300-100 on Fashion-MNIST, prune each hidden layer with `coreset_prune`,
and print what was certified next to what was measured.

For each hidden layer (fc1 -> fc2, fc2 -> fc3) and each query space (data-free, and the
top-`rank` principal subspace of the layer's calibration inputs) it prunes in `select` and
`sample` mode and reports: units kept, the certified eps (and delta), the worst relative error
measured on held-out data inside Q (covered by the certificate) and on the raw data (not covered
when Q is a subspace), the worst error an adversarial search finds inside Q, and the test
accuracy of the network with that one layer pruned.

    python examples/lenet_certificates.py            # a few minutes on a 2-core CPU
    python examples/lenet_certificates.py --epochs 5 --rank 16
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from coreprune import QuerySpace, adversarial_search, coreset_prune, measure_error
from coreprune.harness.data import make_loaders
from coreprune.harness.models import LeNet300100
from coreprune.harness.training import evaluate, fit, set_seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rank", type=int, default=8, help="dimension of the calibration query space")
    p.add_argument("--calibration", type=int, default=2000, help="validation inputs spanning Q")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--restarts", type=int, default=32, help="adversarial search restarts")
    p.add_argument("--steps", type=int, default=150, help="adversarial search steps")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST idx folder (default: Debian's)")
    p.add_argument("--limit", type=int, default=None, help="use only this many examples per split")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def layer_inputs(
    model: LeNet300100, loader: torch.utils.data.DataLoader, count: int
) -> list[torch.Tensor]:
    """Inputs of fc1 and fc2 on up to `count` examples."""
    seen, first, second = 0, [], []
    model.eval()
    with torch.no_grad():
        for images, _ in loader:
            x = images.flatten(1)
            first.append(x)
            second.append(torch.relu(model.layers[1](x)))
            seen += len(x)
            if seen >= count:
                break
    return [torch.cat(first)[:count], torch.cat(second)[:count]]


def with_layers(
    model: nn.Module, index: int, new_layer: nn.Module, new_next: nn.Module
) -> nn.Module:
    """A copy of the model with layers[index] and layers[index + 2] replaced."""
    pruned = copy.deepcopy(model)
    pruned.layers[index] = new_layer
    pruned.layers[index + 2] = new_next
    return pruned


def requests(n: int, k: int, eps_list: list[float]) -> list[tuple[str, dict]]:
    rows: list[tuple[str, dict]] = [
        (f"select eps={e:g}", {"mode": "select", "eps": e}) for e in eps_list
    ]
    rows.append((f"select keep={n // 2}", {"mode": "select", "eps": None, "keep": n // 2}))
    rows.append((f"sample eps={max(eps_list):g}", {"mode": "sample", "eps": max(eps_list)}))
    rows.append((f"sample keep={n // 2}", {"mode": "sample", "eps": None, "keep": n // 2}))
    if n * k <= 2000:  # the exact LP bound (one LP per unit and next unit) where it takes seconds
        rows += [
            (f"select eps={e:g} LP", {"mode": "select", "eps": e, "sensitivity": "exact"})
            for e in eps_list
        ]
        rows.append(
            (
                f"select keep={n // 2} LP",
                {"mode": "select", "eps": None, "keep": n // 2, "sensitivity": "exact"},
            )
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    set_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    loaders = make_loaders(
        "fashion_mnist", args.data_root, batch_size=128, augment=False, limit=args.limit
    )
    model = LeNet300100()
    start = time.perf_counter()
    fit(model, loaders.train, epochs=args.epochs, lr=0.05, weight_decay=5e-4, progress=False)
    dense_acc = evaluate(model, loaders.test)["accuracy"]
    print(
        f"LeNet-300-100, {args.epochs} epochs on Fashion-MNIST: test accuracy {dense_acc:.4f} "
        f"({time.perf_counter() - start:.0f} s)\n"
    )
    calib = layer_inputs(model, loaders.val, args.calibration)
    held_out = layer_inputs(model, loaders.test, 2000)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for index, name in ((1, "fc1"), (3, "fc2")):
        layer, nxt = model.layers[index], model.layers[index + 2]
        which = 0 if index == 1 else 1
        spaces = [
            ("data-free", None),
            (f"calib rank {args.rank}", QuerySpace.from_calibration(calib[which], args.rank)),
        ]
        for qname, query in spaces:
            cache: dict[str, object] = {}
            for label, kwargs in requests(layer.out_features, nxt.out_features, args.eps):
                if query is None and (label.startswith("sample eps") or label.endswith("LP")):
                    continue  # data-free: every s = 1 (theory §7); these rows would repeat that
                method = kwargs.get("sensitivity", "auto")
                result = coreset_prune(
                    layer,
                    next_layer=nxt,
                    query=query,
                    delta=args.delta,
                    generator=gen,
                    sensitivities=cache.get(method),
                    **kwargs,
                )
                cache[method] = result.sensitivities
                rows.append(
                    _row(
                        name,
                        qname,
                        label,
                        result,
                        model,
                        index,
                        held_out[which],
                        loaders,
                        args,
                        gen,
                    )
                )
                _print_row(rows[-1], header=len(rows) == 1)
    return rows


def _row(name, qname, label, result, model, index, held_out, loaders, args, gen) -> dict:
    cert = result.certificate
    query = result.query
    inside = measure_error(result, query.project(held_out)).worst
    raw = measure_error(result, held_out).worst
    adv = adversarial_search(
        result, restarts=args.restarts, steps=args.steps, starts=held_out[:16], generator=gen
    )
    new_layer, new_next = result.apply()
    acc = evaluate(with_layers(model, index, new_layer, new_next), loaders.test)["accuracy"]
    return {
        "layer": name,
        "query": qname,
        "request": label,
        "kept": f"{result.keep.numel()}/{result.units.shape[0]}",
        "eps": cert.eps,
        "delta": cert.delta,
        "vacuous": cert.vacuous,
        "data_in_Q": inside,
        "data_raw": raw,
        "adversarial": adv.worst,
        "tightness": adv.worst / cert.eps if cert.eps > 0 else float("nan"),
        "t": cert.total_sensitivity,
        "accuracy": acc,
    }


def _print_row(row: dict, header: bool) -> None:
    if header:
        print(
            f"{'layer':5} {'query':16} {'request':18} {'kept':>8} {'cert eps':>9} {'delta':>5} "
            f"{'data in Q':>9} {'data raw':>9} {'advers.':>9} {'adv/eps':>7} {'t':>7} {'test acc':>8}"
        )
    eps = f"{row['eps']:.3g}" + ("*" if row["vacuous"] else "")
    print(
        f"{row['layer']:5} {row['query']:16} {row['request']:18} {row['kept']:>8} {eps:>9} {row['delta']:>5.2g} "
        f"{row['data_in_Q']:>9.2e} {row['data_raw']:>9.2e} {row['adversarial']:>9.2e} {row['tightness']:>7.2f} "
        f"{row['t']:>7.1f} {row['accuracy']:>8.4f}"
    )


if __name__ == "__main__":
    main()
    print(
        "\n* vacuous certificate (eps >= 1). 'data in Q': held-out inputs projected onto Q (covered);"
        "\n  'data raw': the same inputs unprojected (not covered when Q is a subspace);"
        "\n  'advers.': worst error found by gradient ascent inside Q; 'adv/eps': tightness."
    )
