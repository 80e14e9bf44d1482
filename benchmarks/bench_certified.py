"""Certified compression of the shipped ResNet-20 at "agreement >= 0.97 with 95% confidence".

The Fashion-MNIST test set is split at random (seed 0) into 5,000 held-out images, used only by
the certificate, and 5,000 fresh ones. `compress(guarantee=..., holdout=...)` tests the budgets
0.1 ... 0.9 in a fixed sequence (coreset, 1,024 calibration training images, least-squares
rewiring) and returns the strongest certified one. Then every budget is compressed again and its
agreement with the dense model measured on the fresh half: the budget an oracle would pick.

    python benchmarks/bench_certified.py > benchmarks/results/certified.txt
"""

from __future__ import annotations

import argparse
import time

import torch

from coreprune import certify, compress
from coreprune.harness.data import make_loaders
from coreprune.harness.evaluation.machine import cpu_name
from coreprune.harness.pretrained import load_pretrained


def main() -> None:
    # no options; --help says what runs and where it writes, without running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.set_num_threads(1)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, 1 thread")
    loaders = make_loaders("fashion_mnist", batch_size=1000, augment=False)
    x, y = map(torch.cat, zip(*loaders.test, strict=True))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    hold, fresh = perm[:5000], perm[5000:]
    calibration = next(iter(make_loaders("fashion_mnist", batch_size=1024, augment=False).train))[0]
    model = load_pretrained("resnet20")
    start = time.time()
    best = compress(
        model, guarantee={"agreement": 0.97}, holdout=(x[hold], y[hold]), confidence=0.95,
        calibration=calibration, progress=False,
    )  # fmt: skip
    print(best)
    print(f"certified in {time.time() - start:.0f} s")
    for target in [t.target for t in best.tests] + list(best.untested):
        pruned = compress(model, target=target, calibration=calibration, progress=False).model
        fresh_cert = certify(model, pruned, (x[fresh], y[fresh]), confidence=0.95)
        print(
            f"fresh half: target {target:g} agreement {fresh_cert.agreement:.4f} "
            f"accuracy {fresh_cert.accuracy:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
