"""DPF, dynamic pruning with feedback (Lin, Stich, Barba, Dmitriev & Jaggi, ICLR 2020).

One training pass produces the sparse model; no retraining. The dense weights w are kept. Each
step computes the stochastic gradient at the pruned model m ⊙ w and applies it to the dense w:

    w_{t+1} = w_t - lr * grad L(m_t ⊙ w_t)

so a pruned weight keeps receiving the gradient the pruned network sends it (the feedback), and
comes back once its dense magnitude beats a kept one. The mask m is recomputed every
`update_every` (16) steps from the dense magnitudes, at a sparsity that grows on Zhu & Gupta's
(2017) cubic schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3.

Two forms:

- unstructured: global (or per-layer) magnitude |w| over the weights of every Linear/Conv2d;
  the result is a copy of the model with `torch.nn.utils.prune` masks whose `weight_orig` holds
  the dense weights;
- structured (per unit): each prunable pair keeps the units with the largest L2 filter norm
  (producer weight row), at the per-pair counts `coreprune.compress(target=...)` would keep; a
  masked unit's output is zeroed where the consumer reads it, with a straight-through gradient,
  and at the end exactly the masked units are cut out (`coreprune.compress.apply_plan`).

The modules: `schedule` (the cubic sparsity schedule), `result` (the result and history types),
`masks` (the masker interface and the unstructured weight masks), `units` (the structured unit
masks and their cut) and `train` (`dpf_train`, the training pass). The names callers use are
re-exported here.
"""

from coreprune.methods.dpf.result import DPFHistory, DPFResult, MaskUpdate
from coreprune.methods.dpf.schedule import cubic_sparsity
from coreprune.methods.dpf.train import dpf_train

__all__ = ["DPFHistory", "DPFResult", "MaskUpdate", "cubic_sparsity", "dpf_train"]
