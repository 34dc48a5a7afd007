"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough and Saligrama, "Federated Learning Based on
Dynamic Regularization", ICLR 2021), Algorithm 1.

Client ``k`` keeps ``∇L_k(θ_k^{t−1})`` — written ``g_k`` here, zero before its first round —
in its persistent state. Given the server model ``θ^{t−1}`` it minimises (Alg. 1, client step)

    L_k(θ) − ⟨g_k, θ⟩ + (α/2) ‖θ − θ^{t−1}‖²,

with ``L_k`` the cross-entropy on its data, and afterwards sets

    g_k ← g_k − α (θ_k^t − θ^{t−1})

(the first-order optimality condition of that objective). The server keeps ``h`` (zero at
first) and, with ``P_t`` the clients of round ``t`` and ``m`` the total number of clients,

    h^t = h^{t−1} − α (1/m) Σ_{k∈P_t} (θ_k^t − θ^{t−1}),
    θ^t = (1/|P_t|) Σ_{k∈P_t} θ_k^t − h^t / α.

The regulariser, ``g_k`` and ``h`` cover trainable parameters only. The mean over ``P_t`` is
uniform, as in Alg. 1 (not FedAvg's example weighting); buffers (BatchNorm running
statistics) take the same uniform mean and no ``h`` correction. Clients upload only their
model. The reported ``train_loss`` is the local objective above, not the bare cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from semanticfl.algorithms.base import (
    Algorithm,
    AlgorithmSetup,
    Arrays,
    Batch,
    ClientTask,
    ClientUpdate,
    LocalData,
    LocalSettings,
    weighted_average,
)
from semanticfl.algorithms.regularizers import (
    TensorDict,
    as64,
    cast_like,
    copy_arrays,
    inner_product,
    mean64,
    parameter_tensors,
    snapshot,
    squared_distance,
    tensors_to_arrays,
    zeros_for,
)
from semanticfl.errors import UserError


@dataclass
class FedDynParams:
    """FedDyn hyperparameters.

    ``alpha``: the dynamic-regulariser weight α. The paper selects α from {0.1, 0.01, 0.001}
    per setting (Sec. 5); 0.01 is the value of the authors' CIFAR-10 example script and the
    usual choice of reproductions.
    """

    alpha: float = 0.01

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise UserError(f"algorithm.feddyn.alpha must be > 0, got {self.alpha}")


@dataclass
class FedDynContext:
    previous: TensorDict
    """The server model ``θ^{t−1}`` (parameters)."""
    gradient: TensorDict
    """``g_k = ∇L_k(θ_k^{t−1})`` as stored by this client."""


def gradient_state_update(
    gradient: Mapping[str, torch.Tensor],
    local: Mapping[str, torch.Tensor],
    previous: Mapping[str, torch.Tensor],
    alpha: float,
) -> TensorDict:
    """Alg. 1: ``∇L_k(θ_k^t) = ∇L_k(θ_k^{t−1}) − α(θ_k^t − θ^{t−1})``, in float64."""
    return {
        name: gradient[name].double() - alpha * (local[name].double() - previous[name].double())
        for name in gradient
    }


class FedDyn(Algorithm):
    """FedDyn, Alg. 1: a linear + quadratic dynamic regulariser and a corrected server model."""

    name = "feddyn"
    Params = FedDynParams
    uploads: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, params: FedDynParams, setup: AlgorithmSetup) -> None:
        super().__init__(params, setup)
        self._h: Arrays = {}

    # ------------------------------------------------------------------ client half

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> FedDynContext:
        """Freeze ``θ^{t−1}`` and read ``g_k`` from the client state (zero at first)."""
        return FedDynContext(previous=snapshot(model), gradient=parameter_tensors(task.state, model))

    def local_loss(self, model: nn.Module, batch: Batch, context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 1: ``L_k(θ) − ⟨g_k, θ⟩ + (α/2)‖θ − θ^{t−1}‖²``.

        Its gradient is ``∇L_k(θ) − g_k + α(θ − θ^{t−1})``.
        """
        images, labels = batch.images, batch.labels
        _, logits = model(images)
        alpha = self.params.alpha
        loss = (
            F.cross_entropy(logits, labels)
            - inner_product(model, context.gradient)
            + 0.5 * alpha * squared_distance(model, context.previous)
        )
        return loss, logits

    def end_local(self, model: nn.Module, context: FedDynContext, task: ClientTask, steps: int) -> Arrays:
        """Alg. 1: ``g_k ← g_k − α(θ_k^t − θ^{t−1})``, kept in the client state; no extra upload."""
        updated = gradient_state_update(
            context.gradient, snapshot(model), context.previous, self.params.alpha
        )
        task.state.update(tensors_to_arrays({n: v.to(context.gradient[n].dtype) for n, v in updated.items()}))
        return {}

    # ------------------------------------------------------------------ server half

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """Alg. 1: ``h ← h − (α/m) Σ_{P_t}(θ_k − θ^{t−1})``; ``θ^t = mean_{P_t} θ_k − h/α``.

        Arithmetic in float64, cast back to each array's dtype.
        """
        names = self.trainable_parameter_names()
        if not self._h:
            self._h = zeros_for(names, global_arrays)
        alpha, m = self.params.alpha, self.setup.num_clients
        states = [u.arrays for u in updates]
        uniform = [1.0] * len(updates)
        new_global = weighted_average(states, uniform)

        previous = as64(global_arrays, names)
        mean = mean64(states, uniform, names)
        h = as64(self._h, names)
        count = len(updates)
        # Σ_k (θ_k − θ^{t−1}) = |P_t| (mean − θ^{t−1})
        h_new = {name: h[name] - (alpha / m) * count * (mean[name] - previous[name]) for name in names}
        theta = {name: mean[name] - h_new[name] / alpha for name in names}
        self._h = cast_like(h_new, self._h)
        new_global.update(cast_like(theta, global_arrays))
        return new_global

    def server_state(self) -> Arrays:
        """The server's ``h`` (empty before the first round: ``h = 0``)."""
        return copy_arrays(self._h)

    def load_server_state(self, state: Arrays) -> None:
        self._h = copy_arrays(state)
