"""Check a certificate: the worst relative error on given inputs, and an adversarial search for it.

Both work in float64 on the layer's own algebra: z_j(x) = sum_i U_ji phi(p_i . [x; 1]),
z^_j(x) = sum_i w_i U_ji phi(p_i . [x; 1]) and e_j(x) = sum_i |U_ji| |p_i . [x; 1]|.
The next layer's bias cancels in z - z^. For a conv layer, x is an im2col patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coreprune.coreset.result import PruneResult


@dataclass(frozen=True)
class ErrorReport:
    """The worst |z_j - z^_j| / e_j(x) found, where it was found, and how far inputs were from Q."""

    worst: float
    mean: float
    input_index: int
    next_unit: int
    inputs: int
    outside_query: float
    x: torch.Tensor

    def ratio(self, eps: float) -> float:
        """Tightness: measured worst error over certified eps."""
        return self.worst / eps if eps > 0 else float("inf")


def relative_errors(result: PruneResult, x: torch.Tensor) -> torch.Tensor:
    """|z - z^| / e for each input row and next unit (inputs x next units); 0 where e = 0."""
    lifted = torch.cat(
        [x.to(torch.float64), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], 1
    )
    pre = lifted @ result.units.T.to(x.device)
    reading = result.reading.to(x.device)
    diff = (result.activation(pre) * (1.0 - result.weights.to(x.device))) @ reading.T
    env = pre.abs() @ reading.abs().T
    out = diff.abs() / env.clamp_min(1e-300)
    return torch.where(env > 0, out, torch.zeros_like(out))


def measure_error(result: PruneResult, inputs: torch.Tensor) -> ErrorReport:
    """Worst relative error over given layer inputs (n x d_in), e.g. real activations."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    d_in = result.units.shape[1] - 1
    if inputs.ndim != 2 or inputs.shape[1] != d_in or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have shape (n, {d_in}) with n >= 1, got {tuple(inputs.shape)}"
        )
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or Inf")
    errors = relative_errors(result, inputs)
    flat = int(errors.argmax())
    row, col = divmod(flat, errors.shape[1])
    outside = float(result.query.residual(inputs).max())
    return ErrorReport(
        worst=float(errors.max()),
        mean=float(errors.max(dim=1).values.mean()),
        input_index=row,
        next_unit=col,
        inputs=inputs.shape[0],
        outside_query=outside,
        x=inputs[row].detach().clone(),
    )


def adversarial_search(
    result: PruneResult,
    *,
    restarts: int = 64,
    steps: int = 300,
    lr: float = 0.05,
    starts: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ErrorReport:
    """Gradient ascent on max_j |z_j - z^_j| / e_j over x in the query space, from many starts.

    Starts: random Gaussian points at several scales, the least-squares directions in which each
    pruned unit is most alone (the worst case of the leverage bound), and any `starts` given
    (e.g. real inputs, projected onto Q). Returns the worst input found; it lies in Q.
    """
    if restarts < 1 or steps < 0:
        raise ValueError(f"restarts must be >= 1 and steps >= 0, got {restarts}, {steps}")
    lift = result.query.lifting(result.units.device)
    units_q = result.units @ lift  # p_i in coordinates y = [z; 1]
    rank = units_q.shape[1] - 1
    z0 = _starting_points(result, units_q, restarts, starts, generator)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    reading = result.reading
    keep_w = 1.0 - result.weights

    def objective(zz: torch.Tensor) -> torch.Tensor:
        y = torch.cat([zz, torch.ones(zz.shape[0], 1, dtype=zz.dtype, device=zz.device)], dim=1)
        pre = y @ units_q.T
        diff = (result.activation(pre) * keep_w) @ reading.T
        env = (pre.abs() @ reading.abs().T).clamp_min(1e-300)
        return (diff.abs() / env).max(dim=1).values

    best = objective(z0.detach())
    best_z = z0.detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        value = objective(z)
        (-value.sum()).backward()
        opt.step()
        with torch.no_grad():
            current = objective(z)
            better = current > best
            best = torch.where(better, current, best)
            best_z[better] = z[better]
            # Keep the scale of each restart O(1) relative to its start (the ratio is scale-free
            # for homogeneous phi); avoids drifting to huge norms where steps do nothing.
            scale = z.norm(dim=1, keepdim=True) / z0.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z.div_(torch.where(scale > 10, scale / 10, torch.ones_like(scale)))
    idx = int(best.argmax())
    y = torch.cat([best_z[idx], best_z.new_ones(1)])
    x = (lift @ y)[:-1]
    errors = relative_errors(result, x[None])
    return ErrorReport(
        worst=float(errors.max()),
        mean=float(best.mean()),
        input_index=idx,
        next_unit=int(errors.argmax()),
        inputs=restarts,
        outside_query=float(result.query.residual(x[None]).max()) if rank else 0.0,
        x=x,
    )


def _starting_points(
    result: PruneResult,
    units_q: torch.Tensor,
    restarts: int,
    starts: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    rank = units_q.shape[1] - 1
    points = []
    if starts is not None:
        x = result.query.project(starts.to(torch.float64))
        lift = result.query.lifting(x.device)
        coords = torch.linalg.lstsq(
            lift, torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1).T
        ).solution.T
        points.append(coords[:, :-1] / coords[:, -1:])
    pruned = torch.nonzero(result.weights == 0).flatten()
    if pruned.numel() and rank:
        # y maximising |p_i . y| against ||P y||: y = G^+ p_i, G = P^T P, with y's last entry set to 1.
        gram_pinv = torch.linalg.pinv(units_q.T @ units_q)
        worst = pruned[torch.argsort(result.sensitivity[pruned], descending=True)][:restarts]
        ys = (gram_pinv @ units_q[worst].T).T
        last = ys[:, -1:]
        ok = last.abs().flatten() > 1e-12
        points.append(ys[ok, :-1] / last[ok])
    rand = torch.randn(restarts, rank, dtype=torch.float64, generator=generator)  # CPU generator
    scales = torch.logspace(-1, 1, restarts, dtype=torch.float64)[:, None]
    points.append((rand * scales).to(units_q.device))
    return torch.cat(points)[: max(restarts, 1) + (0 if starts is None else starts.shape[0])]
