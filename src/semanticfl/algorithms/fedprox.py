"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020).

Client k approximately minimises the proximal objective of Eq. (2),

    h_k(w; w^t) = F_k(w) + (μ/2) ‖w − w^t‖²,

with ``F_k`` the cross-entropy on its data and ``w^t`` the global model it received
(Algorithm 2, line 6); the sum runs over the model's trainable parameters (BatchNorm running
statistics are buffers, not parameters, and are not regularised). The server averages the
models as FedAvg does (Algorithm 2, line 8; example-weighted, as in the shared skeleton).
With μ = 0 FedProx is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from semanticfl.algorithms.base import Algorithm, Batch, ClientTask, LocalData, LocalSettings
from semanticfl.algorithms.regularizers import TensorDict, snapshot, squared_distance
from semanticfl.errors import UserError


@dataclass
class FedProxParams:
    """FedProx hyperparameters.

    ``mu``: weight μ of the proximal term in Eq. (2). The paper tunes μ over
    {0.001, 0.01, 0.1, 1} (Sec. 5); NIID-Bench and Flower's reproduction of it use 0.01.
    """

    mu: float = 0.01

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise UserError(f"algorithm.fedprox.mu must be >= 0, got {self.mu}")


class FedProx(Algorithm):
    """FedAvg with the proximal term (μ/2)‖w − w^t‖² added to every local loss (Eq. 2)."""

    name = "fedprox"
    Params = FedProxParams
    uploads: ClassVar[tuple[str, ...]] = ("model",)

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> TensorDict:
        """Freeze the received global parameters ``w^t`` (the centre of Eq. 2's prox term)."""
        return snapshot(model)

    def local_loss(self, model: nn.Module, batch: Batch, context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2): ``F_k(w) + (μ/2)‖w − w^t‖²``; its gradient is ``∇F_k(w) + μ(w − w^t)``."""
        images, labels = batch.images, batch.labels
        _, logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if self.params.mu:
            loss = loss + 0.5 * self.params.mu * squared_distance(model, context)
        return loss, logits
