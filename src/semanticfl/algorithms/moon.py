"""MOON (Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021).

Each client adds a model-contrastive term to cross-entropy (Sec. 3.3): the representation ``z``
of an input under the local model being trained is pulled towards ``z_glob``, the same input's
representation under the global model of this round, and pushed away from ``z_prev``, its
representation under the client's own local model from the last round it took part in:

* Eq. (3): ``ℓ_con = −log( exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) )``
* Eq. (4): ``ℓ = ℓ_sup + μ ℓ_con`` (``ℓ_sup`` the cross-entropy), minimised by local SGD.

The server half is FedAvg (Alg. 1).

Network (Sec. 3.2 and 4.1): MOON's network is a base encoder, a *projection head* (a 2-layer MLP
with output dimension 256) and an *output layer* that predicts the classes **from the projected
representation**; ``sim`` compares projected representations. :meth:`MOON.extend_model` builds
exactly this from any client model: the model's own feature extractor is the base encoder, the
head is ``Linear(d, d) → ReLU → Linear(d, projection_dim)``, and the model's linear classifier is
replaced by a new ``Linear(projection_dim, num_classes)`` on the projection. Head and classifier are
part of the global state and averaged like every other parameter; evaluation uses the same path.

Choices the paper leaves open, made here and documented:

* ``z_glob`` and ``z_prev`` come from frozen copies run in eval mode under ``no_grad`` (so BatchNorm
  uses the models' running statistics and nothing flows back into them).
* A client's first round has no previous local model; then ``z_prev = z_glob`` (as public
  reproductions do), which makes ``ℓ_con`` the constant ``log 2`` with zero gradient: a client's first
  round is plain FedAvg (the constant is added without running the frozen model).
* One previous model per client is kept (the paper's model buffer size 1), in the client state
  under the prefix ``"moon.prev/"``; it is replaced after every round the client trains.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import (
    Algorithm,
    Arrays,
    Batch,
    ClientTask,
    LocalData,
    LocalSettings,
    load_arrays,
)
from semanticfl.algorithms.contrastive import info_nce
from semanticfl.errors import UserError
from semanticfl.models import ClientModel, state_to_numpy

PREV_PREFIX = "moon.prev/"
"""Key prefix of the previous local model's arrays in the client state."""


class MoonNet(ClientModel):
    """Base encoder → projection head → output layer (MOON, Sec. 3.2).

    ``features(x)`` is the projected representation ``z`` (what ``ℓ_con`` compares), and
    ``classifier`` is the output layer on ``z``, so ``forward`` keeps the
    ``logits == classifier(features)`` contract of :class:`ClientModel`.
    """

    def __init__(self, base: ClientModel, projection_dim: int):
        super().__init__()
        width = base.feature_dim
        base.classifier = nn.Identity()  # the output layer moves onto the projection
        self.base = base
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, projection_dim))
        self.feature_dim = projection_dim
        self.num_classes = base.num_classes
        self.classifier = nn.Linear(projection_dim, base.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The projected representation ``z`` of a batch."""
        return self.projection(self.base.features(x))


@dataclass
class MoonParams:
    """MOON's hyperparameters (Li et al., 2021, Sec. 4.1).

    ``mu`` is μ of Eq. (4): the paper uses 5 for CIFAR-10 and 1 for CIFAR-100 and Tiny-ImageNet;
    the default is the CIFAR-10 value. ``temperature`` is τ of Eq. (3) (paper: 0.5).
    ``projection_dim`` is the projection head's output dimension (paper: 256).
    """

    mu: float = 5.0
    temperature: float = 0.5
    projection_dim: int = 256

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise UserError(f"algorithm.moon.mu must be >= 0, got {self.mu}")
        if self.temperature <= 0:
            raise UserError(f"algorithm.moon.temperature must be > 0, got {self.temperature}")
        if self.projection_dim < 1:
            raise UserError(f"algorithm.moon.projection_dim must be >= 1, got {self.projection_dim}")


@dataclass
class _Context:
    global_model: nn.Module
    previous_model: nn.Module | None
    """None in the client's first round: then z_prev = z_glob."""


def model_contrastive_loss(z: Tensor, z_glob: Tensor, z_prev: Tensor, temperature: float) -> Tensor:
    """MOON's ``ℓ_con`` (Eq. 3), averaged over the batch; ``z_glob``, ``z_prev`` are not differentiated."""
    return info_nce(z, z_glob.detach(), z_prev.detach()[:, None, :], temperature).mean()


def _frozen_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


class MOON(Algorithm):
    """MOON: cross-entropy plus μ times the model-contrastive loss; FedAvg on the server."""

    name = "moon"
    Params = MoonParams
    uploads = ("model",)

    def extend_model(self, model: nn.Module) -> nn.Module:
        """Attach the projection head and move the output layer onto it (Sec. 3.2)."""
        return super().extend_model(MoonNet(model, self.params.projection_dim))

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> _Context:
        """Freeze a copy of the global model ``w^t`` and rebuild the previous local model ``w_i^{t-1}``."""
        global_model = _frozen_copy(model)
        previous = {k[len(PREV_PREFIX) :]: v for k, v in task.state.items() if k.startswith(PREV_PREFIX)}
        previous_model = None
        if previous:
            previous_model = _frozen_copy(model)
            load_arrays(previous_model, previous)
        return _Context(global_model, previous_model)

    def local_loss(self, model: nn.Module, batch: Batch, context: _Context) -> tuple[Tensor, Tensor]:
        """Eq. (4): ``ℓ = CE(logits, y) + μ ℓ_con(z, z_glob, z_prev)``."""
        images, labels = batch.images, batch.labels
        z, logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if self.params.mu == 0:
            return loss, logits
        if context.previous_model is None:  # z_prev = z_glob: ℓ_con ≡ log 2, zero gradient
            return loss + self.params.mu * math.log(2.0), logits
        with torch.no_grad():
            z_glob = context.global_model.features(images)
            z_prev = context.previous_model.features(images)
        l_con = model_contrastive_loss(z, z_glob, z_prev, self.params.temperature)
        return loss + self.params.mu * l_con, logits

    def end_local(self, model: nn.Module, context: _Context, task: ClientTask, steps: int) -> Arrays:
        """Keep this round's trained local model as next round's ``w_i^{t-1}`` (client state only)."""
        for key in [k for k in task.state if k.startswith(PREV_PREFIX)]:
            del task.state[key]
        task.state.update({PREV_PREFIX + k: v for k, v in state_to_numpy(model).items()})
        return {}
