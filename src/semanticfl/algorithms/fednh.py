"""FedNH (Dai, Chen, Wang, Wang, Guo and Li, "Tackling Data Heterogeneity in Federated Learning
with Class Prototypes", AAAI 2023).

The classifier is a set of class prototypes ``μ_c`` on the unit hypersphere, shared by all clients:

* **Initialisation** -- the prototypes start spread uniformly on the sphere (the paper's
  "uniformity" property), so that minority classes are not squeezed together.
* **Client** -- logits are ``s · cos(f(x), μ_c)`` with the prototypes *fixed* during local training
  (only the feature extractor and the scale ``s`` learn), cross-entropy as usual. After training the
  client estimates its own prototypes ``m_{k,c} = Σ_{i: y_i=c} f̂(x_i) / ‖Σ_{i: y_i=c} f̂(x_i)‖``
  (``f̂ = f/‖f‖``; the normalised mean of the normalised features) and uploads them with its class
  counts ``n_{k,c}``.
* **Server** -- FedAvg on the model, and the smoothed prototype update ("semantics" infusion)
  ``μ_c ← normalise( ρ μ_c + (1 − ρ) normalise( Σ_k n_{k,c} m_{k,c} / Σ_k n_{k,c} ) )`` for every
  class some participant holds; classes no participant holds keep their prototype.

Equation numbers are not cited because the formulas above were checked against the method
description, not against a copy of the paper's numbered equations.

Engineering in this framework:

* :meth:`FedNH.extend_model` replaces the model's linear classifier by :class:`CosineClassifier`
  (``weight`` = the prototypes, plus a ``scale`` parameter). The prototypes therefore live in the
  global arrays under ``"classifier.weight"``: :meth:`FedNH.aggregate` writes the updated prototypes
  there, so any evaluation of the global model (central, federated) uses them.
* The prototypes are also the server state and the payload of every round;
  :meth:`FedNH.begin_local` loads the payload into the head and freezes it.

Prototype initialisation (the paper's "uniformly distributed" prototypes; seeded by the experiment
seed): when ``C ≤ d + 1`` a simplex equiangular tight frame, randomly rotated, which attains the
optimum ``max_{i≠j} cos(μ_i, μ_j) = −1/(C−1)``; when ``C > d + 1`` (e.g. CIFAR-100 on the 84-d CNN)
no simplex fits and a seeded projected gradient ascent on a smooth minimum of the pairwise distances
spreads them. (The authors' public code initialises orthogonal prototypes instead, which for
``C ≤ d`` gives pairwise cosine 0.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import (
    Algorithm,
    AlgorithmSetup,
    Arrays,
    ClientTask,
    ClientUpdate,
    LocalData,
    LocalSettings,
    weighted_average,
)
from semanticfl.errors import UserError

HEAD_KEY = "classifier.weight"
"""Where the prototypes sit in the model state (and so in the global arrays)."""

_SPREAD_STEPS = 1000
_SPREAD_TEMPERATURES = (0.05, 0.005)  # annealed geometrically: soft-min → min of the distances
_SPREAD_LR = 0.02


# --------------------------------------------------------------------------- prototypes


def uniform_prototypes(num_classes: int, dim: int, seed: int) -> np.ndarray:
    """``num_classes`` unit vectors in ``R^dim`` spread uniformly on the sphere (float32, C×d).

    ``C ≤ d + 1``: a simplex ETF (pairwise cosine exactly ``−1/(C−1)``) rotated by a seeded random
    orthonormal map. ``C > d + 1``: seeded random directions moved apart by projected gradient
    ascent on the smooth minimum of each prototype's distances to the others.
    """
    if num_classes < 2 or dim < 1:
        raise ValueError(f"need at least 2 classes and 1 dimension, got {num_classes}, {dim}")
    rng = np.random.default_rng(seed)
    c = num_classes
    if c - 1 <= dim:
        centred = np.eye(c) - 1.0 / c  # rows: the simplex vertices, in the hyperplane ⊥ 1
        basis, _ = np.linalg.qr(centred[:, : c - 1])  # orthonormal basis of that hyperplane
        coords = centred @ basis  # C×(C−1)
        coords /= np.linalg.norm(coords, axis=1, keepdims=True)
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, c - 1)))  # d×(C−1), orthonormal columns
        protos = coords @ rotation.T
    else:
        protos = _spread_on_sphere(rng.standard_normal((c, dim)))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    return protos.astype(np.float32)


def _spread_on_sphere(w: np.ndarray) -> np.ndarray:
    """Projected gradient ascent on ``Σ_i softmin_j ‖w_i − w_j‖`` over unit vectors.

    The soft-min temperature is annealed so the objective tends to the minimum pairwise distance
    (maximising it minimises the largest pairwise cosine).
    """
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = w.shape[0]
    diagonal = np.eye(c, dtype=bool)
    first, last = _SPREAD_TEMPERATURES
    for step in range(_SPREAD_STEPS):
        temperature = first * (last / first) ** (step / (_SPREAD_STEPS - 1))
        dist = np.sqrt(np.maximum(2.0 - 2.0 * (w @ w.T), 1e-12))
        z = np.where(diagonal, -np.inf, -dist / temperature)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)  # each row: soft weights on the nearest neighbours
        q = (p + p.T) / dist
        np.fill_diagonal(q, 0.0)
        ascent = q.sum(axis=1, keepdims=True) * w - q @ w  # ∂/∂w_i of Σ soft-min distances
        ascent -= (ascent * w).sum(axis=1, keepdims=True) * w  # tangent to the sphere
        w = w + _SPREAD_LR * ascent
        w /= np.linalg.norm(w, axis=1, keepdims=True)
    return w


def smoothed_prototypes(
    prototypes: np.ndarray,
    client_means: Sequence[np.ndarray],
    client_counts: Sequence[np.ndarray],
    smoothing: float,
) -> np.ndarray:
    """The server's prototype update (float32, C×d).

    ``a_c = normalise(Σ_k n_{k,c} m_{k,c} / Σ_k n_{k,c})`` and
    ``μ_c ← normalise(ρ μ_c + (1 − ρ) a_c)`` for classes with ``Σ_k n_{k,c} > 0``; other classes
    keep ``μ_c``.
    """
    mu = prototypes.astype(np.float64)
    total = np.zeros(mu.shape[0])
    weighted = np.zeros_like(mu)
    for means, counts in zip(client_means, client_counts):
        n = np.asarray(counts, dtype=np.float64)
        total += n
        weighted += n[:, None] * np.asarray(means, dtype=np.float64)
    held = total > 0
    average = weighted[held] / total[held, None]
    average = _normalise_rows(average)
    updated = mu.copy()
    updated[held] = _normalise_rows(smoothing * mu[held] + (1.0 - smoothing) * average)
    return updated.astype(np.float32)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CosineClassifier(nn.Linear):
    """``logits = s · cos(features, weight_c)``: FedNH's prototype head (no bias).

    A subclass of :class:`torch.nn.Linear` so that ``model.classifier.weight`` is the C×d
    prototype matrix, as for every other model; ``scale`` is the scalar ``s``.
    """

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__(in_features, out_features, bias=False)
        self.scale = nn.Parameter(torch.tensor([float(scale)]))

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


# --------------------------------------------------------------------------- the algorithm


@dataclass
class FedNHParams:
    """FedNH's hyperparameters.

    ``smoothing`` is ρ of the server's prototype update (paper and authors' code: 0.9).
    ``scale`` is the initial value of ``s`` in ``s · cos`` and ``learnable_scale`` whether local
    training updates it (the authors' code: a learnable scalar starting at 1.0, averaged by the
    server like every parameter; its ``fix_scaling`` option pins it to 30 instead).
    """

    smoothing: float = 0.9
    scale: float = 1.0
    learnable_scale: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing <= 1.0:
            raise UserError(f"algorithm.fednh.smoothing must be in [0, 1], got {self.smoothing}")
        if self.scale <= 0:
            raise UserError(f"algorithm.fednh.scale must be > 0, got {self.scale}")


@dataclass
class _Context:
    data: LocalData
    settings: LocalSettings


class FedNH(Algorithm):
    """FedNH: fixed uniform-then-smoothed class prototypes as a cosine classifier."""

    name = "fednh"
    Params = FedNHParams
    uploads = ("model", "class prototypes", "class counts")

    def __init__(self, params: FedNHParams, setup: AlgorithmSetup) -> None:
        super().__init__(params, setup)
        self._initial: dict[int, np.ndarray] = {}  # feature dim → initial prototypes (a cache)
        self._prototypes: np.ndarray | None = None  # server state; None: read the global arrays

    def initial_prototypes(self, dim: int) -> np.ndarray:
        """The seeded uniform prototypes for ``dim``-d features (computed once per dimension)."""
        if dim not in self._initial:
            self._initial[dim] = uniform_prototypes(self.setup.num_classes, dim, self.setup.seed)
        return self._initial[dim]

    def extend_model(self, model: nn.Module) -> nn.Module:
        """Replace the linear classifier by the cosine head holding the initial prototypes."""
        dim = model.feature_dim
        head = CosineClassifier(dim, self.setup.num_classes, self.params.scale)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(self.initial_prototypes(dim)))
        model.classifier = head
        return super().extend_model(model)

    # ------------------------------------------------------------------ client half

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> _Context:
        """Load the round's prototypes into the head and freeze them (they are not trained locally)."""
        head = model.classifier
        if "prototypes" in task.payload:
            with torch.no_grad():
                head.weight.copy_(torch.as_tensor(task.payload["prototypes"], dtype=head.weight.dtype))
        head.weight.requires_grad_(False)
        head.scale.requires_grad_(self.params.learnable_scale)
        return _Context(data, settings)

    def end_local(self, model: nn.Module, context: _Context, task: ClientTask, steps: int) -> Arrays:
        """Upload ``m_{k,c}`` and ``n_{k,c}``: per class, the normalised mean of the normalised features
        (zero for a class the client does not hold) and the number of samples.

        One pass over the local data with the trained model in eval mode, through the training
        transform (as the authors' code does), its augmentation drawn from a generator seeded from
        the client's round RNG.
        """
        num_classes = self.setup.num_classes
        settings = context.settings
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        sums = torch.zeros(num_classes, model.feature_dim, dtype=torch.float64, device=settings.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for images, labels in context.data.batches(settings.batch_size, generator):
                images, labels = images.to(settings.device), labels.to(settings.device)
                sums.index_add_(0, labels, F.normalize(model.features(images), dim=1).double())
        model.train(was_training)
        means = F.normalize(sums, dim=1).float().cpu().numpy()
        counts = context.data.label_histogram(num_classes).astype(np.int64)
        return {"prototypes": means, "class_counts": counts}

    # ------------------------------------------------------------------ server half

    def current_prototypes(self, global_arrays: Arrays) -> np.ndarray:
        return self._prototypes if self._prototypes is not None else global_arrays[HEAD_KEY]

    def server_payload(self, global_arrays: Arrays, round_number: int) -> Arrays:
        """The current prototypes ``μ``."""
        return {"prototypes": np.array(self.current_prototypes(global_arrays), dtype=np.float32)}

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """FedAvg on the model, then the smoothed prototype update written into the head."""
        new = weighted_average([u.arrays for u in updates], [u.num_examples for u in updates])
        self._prototypes = smoothed_prototypes(
            self.current_prototypes(global_arrays),
            [u.extra["prototypes"] for u in updates],
            [u.extra["class_counts"] for u in updates],
            self.params.smoothing,
        )
        new[HEAD_KEY] = self._prototypes.astype(new[HEAD_KEY].dtype)
        return new

    def server_state(self) -> Arrays:
        return {} if self._prototypes is None else {"prototypes": self._prototypes.copy()}

    def load_server_state(self, state: Arrays) -> None:
        self._prototypes = np.array(state["prototypes"], dtype=np.float32) if "prototypes" in state else None
