"""FedNova (Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem
in Heterogeneous Federated Optimization", NeurIPS 2020).

Clients run the shared skeleton's local SGD, so client ``i`` takes ``τ_i = E ⌈n_i / B⌉``
steps, which differs across clients. Its cumulative update is ``x − y_i = η G_i a_i`` with
``G_i`` the stacked stochastic gradients and ``a_i`` the per-step weights of the local
solver; FedNova averages the *normalised* updates (Sec. 4, generalised update rule, with the
FedNova choices of Sec. 5: ``w_i = p_i`` and ``τ_eff = Σ_i p_i ‖a_i‖₁``):

    d_i = (x − y_i) / ‖a_i‖₁,        x ← x − τ_eff Σ_{i∈S} p_i d_i,        p_i = n_i / Σ_{j∈S} n_j.

For SGD with heavy-ball momentum ρ (PyTorch's convention, ``buf ← ρ buf + g``, ``y ← y − η buf``)
the k-th gradient of τ steps is applied with weight ``(1 − ρ^{τ−k+1}) / (1 − ρ)``, so

    ‖a_i‖₁ = [τ_i − ρ (1 − ρ^{τ_i}) / (1 − ρ)] / (1 − ρ)        (= τ_i for ρ = 0),

the normaliser of the paper's momentum variant (Sec. 4, local-momentum example; Flower's
NIID-Bench baseline uses the same closed form). It lives in
:func:`semanticfl.algorithms.regularizers.momentum_normalizer`, shared with SCAFFOLD.
Each client computes ``‖a_i‖₁`` from its own optimiser settings and step count and uploads
it as a one-element float64 array (key ``"normalizer"``), so the server needs no client
settings. Equation numbers differ between
the arXiv and NeurIPS versions, hence the section references.

Only trainable parameters are normalised; buffers (BatchNorm running statistics,
``num_batches_tracked``) are averaged with weights ``p_i`` like FedAvg.
With equal ``τ_i`` the update equals FedAvg's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from semanticfl.algorithms.base import (
    Algorithm,
    Arrays,
    ClientTask,
    ClientUpdate,
    LocalData,
    LocalSettings,
    NoParams,
    weighted_average,
)
from semanticfl.algorithms.regularizers import (
    as64,
    cast_like,
    momentum_normalizer,
)

NORMALIZER = "normalizer"
__all__ = ["NORMALIZER", "FedNova", "momentum_normalizer"]


@dataclass
class FedNovaContext:
    momentum: float


class FedNova(Algorithm):
    """FedNova: average local updates normalised by each client's amount of local work."""

    name = "fednova"
    Params = NoParams
    uploads: ClassVar[tuple[str, ...]] = ("model", "normalizer")

    # ------------------------------------------------------------------ client half

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> FedNovaContext:
        """Remember the local solver's momentum ρ, which fixes ``a_i``."""
        return FedNovaContext(momentum=settings.momentum)

    def end_local(self, model: nn.Module, context: FedNovaContext, task: ClientTask, steps: int) -> Arrays:
        """Upload ``‖a_i‖₁`` for the ``τ_i = steps`` local steps just taken (Sec. 4)."""
        value = momentum_normalizer(steps, context.momentum)
        return {NORMALIZER: np.array([value], dtype=np.float64)}

    # ------------------------------------------------------------------ server half

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """Sec. 5: ``x ← x − τ_eff Σ p_i (x − y_i)/‖a_i‖₁`` with ``τ_eff = Σ p_i ‖a_i‖₁``.

        Buffers get FedAvg's ``Σ p_i y_i``. Arithmetic in float64, cast back per array.
        """
        names = self.trainable_parameter_names()
        norms = []
        for update in updates:
            if NORMALIZER not in update.extra:
                raise ValueError(f"client {update.client_id} sent no FedNova normalizer")
            norms.append(float(np.asarray(update.extra[NORMALIZER]).reshape(-1)[0]))
        total = float(sum(u.num_examples for u in updates))
        p = [u.num_examples / total for u in updates]
        tau_eff = sum(p_i * a_i for p_i, a_i in zip(p, norms))

        new_global = weighted_average([u.arrays for u in updates], p)
        x = as64(global_arrays, names)
        step = {name: np.zeros_like(x[name]) for name in names}  # Σ p_i d_i
        for update, p_i, a_i in zip(updates, p, norms):
            if a_i <= 0:  # no local step taken: d_i = 0
                continue
            y_i = as64(update.arrays, names)
            for name in names:
                step[name] += (p_i / a_i) * (x[name] - y_i[name])
        x_new = {name: x[name] - tau_eff * step[name] for name in names}
        new_global.update(cast_like(x_new, global_arrays))
        return new_global
