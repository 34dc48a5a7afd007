"""Optimisation pieces of FedAFD's ``code`` variant: the encoder lr's step decay, optimiser state kept
in client or server state, and AdamP for the server's distillation pass."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from semanticfl.algorithms.base import Arrays


def decayed_lr(lr: float, round_number: int, rounds: int, decay_at: Sequence[float], factor: float) -> float:
    """``lr · factor^k`` with k the number of fractions f in ``decay_at`` with ``round − 1 ≥ f · rounds``:
    the code's ``ClientTrainer.lr_scheduler(cur_epoch)``, called with the 0-based round at the start
    of each round (40 rounds, (0.5, 0.8): rounds 1–20 at lr, 21–32 at lr/10, 33–40 at lr/100)."""
    return lr * factor ** sum(round_number - 1 >= f * rounds for f in decay_at)


def optimizer_arrays(optimizer: torch.optim.Optimizer, prefix: str) -> Arrays:
    """The optimiser's per-parameter state as named arrays, ``<prefix><index>.<key>`` (e.g. Adam's
    ``exp_avg``, ``exp_avg_sq`` and ``step``; scalars as shape (1,)), to keep in a client or server
    state; hyperparameters are not saved (they come from the config)."""
    return {
        f"{prefix}{index}.{key}": np.atleast_1d(value.detach().cpu().numpy()).copy()
        for index, entries in optimizer.state_dict()["state"].items()
        for key, value in entries.items()
    }


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: Arrays, prefix: str) -> None:
    """Restore what :func:`optimizer_arrays` saved (nothing saved: the optimiser stays fresh)."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in arrays.items():
        if name.startswith(prefix):
            index, _, key = name[len(prefix):].partition(".")
            tensor = torch.from_numpy(np.array(value))
            state.setdefault(int(index), {})[key] = tensor.reshape(()) if key == "step" else tensor
    if state:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def without(arrays: Arrays, prefix: str) -> Arrays:
    """``arrays`` less the entries under ``prefix``."""
    return {k: v for k, v in arrays.items() if not k.startswith(prefix)}


class AdamP(torch.optim.Optimizer):
    """AdamP (Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021, Algorithm 2), the public code's server optimiser (package ``adamp``).

    Adam's step ``p = m̂ / (√v̂ + ε)``; for a weight of two or more dims whose gradient is nearly
    orthogonal to it -- ``max |cos(w, g)| < δ / √dim`` per output channel, else over the whole tensor --
    the step's radial component is removed, ``p ← p − (ŵ·p) ŵ``, and the decoupled weight decay is
    scaled by ``wd_ratio``; ``w ← w (1 − lr λ r) − lr p``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "delta": delta, "wd_ratio": wd_ratio})

    @staticmethod
    def _projection(weight: Tensor, grad: Tensor, step: Tensor, delta: float, eps: float) -> tuple[Tensor, bool]:
        """``step`` less its component along ``weight`` (per channel, else whole), if the weight is
        scale-invariant by the cosine test; and whether it was projected."""
        for rows in (weight.shape[0], 1):  # channel view, then layer view
            w, g = weight.reshape(rows, -1), grad.reshape(rows, -1)
            cosine = (w * g).sum(1).abs() / (w.norm(dim=1) * g.norm(dim=1) + eps)
            if cosine.max() < delta / math.sqrt(w.shape[1]):
                unit = w / (w.norm(dim=1, keepdim=True) + eps)
                s = step.reshape(rows, -1)
                return (s - unit * (unit * s).sum(1, keepdim=True)).reshape(step.shape), True
        return step, False

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                update = state["exp_avg"] / (1 - beta1 ** t) / denom
                ratio = 1.0
                if p.dim() > 1:
                    update, projected = self._projection(p, p.grad, update, group["delta"], group["eps"])
                    ratio = group["wd_ratio"] if projected else 1.0
                p.mul_(1 - group["lr"] * group["weight_decay"] * ratio).add_(update, alpha=-group["lr"])
