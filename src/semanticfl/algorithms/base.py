"""The interface every algorithm implements, and the FedAvg skeleton they all share.

An algorithm has two halves that never import Flower:

* the **client half** -- :meth:`Algorithm.local_train` runs ``E`` local epochs of minibatch
  SGD (McMahan et al., 2017, Algorithm 1, *ClientUpdate*) and calls small hooks that an
  algorithm overrides to change the local objective (:meth:`Algorithm.local_loss`), to
  correct gradients (:meth:`Algorithm.before_step`) or to upload something besides the
  model (:meth:`Algorithm.end_local`);
* the **server half** -- :meth:`Algorithm.server_payload` (arrays sent with the model),
  :meth:`Algorithm.aggregate` (the new global model) and the server state kept in
  checkpoints.

A teacher-guided algorithm says what it needs of the frozen teacher in one
:meth:`Algorithm.teacher_requests`; one that builds its own server model and client data (FedAFD)
opts into :class:`OwnsModelsAndData`.

Everything crossing the network is a plain ``dict[str, numpy.ndarray]`` (:data:`Arrays`);
the engine turns it into Flower records, counts its bytes and persists client state.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semanticfl.algorithms.regularizers import cast_like, mean64
from semanticfl.config import Config, build_dataclass
from semanticfl.models import load_numpy_state, state_to_numpy
from semanticfl.teachers.base import GuidanceSet, TeacherRequests, TeacherShape
from semanticfl.verified import Arrays

if TYPE_CHECKING:
    from semanticfl.data.datasets import ImageDataset
    from semanticfl.data.partition import PartitionSpec


@dataclass(frozen=True)
class LocalSettings:
    """Local optimisation settings a client receives from the experiment config."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    device: str = "cpu"
    precision: str = "fp32"
    """"bf16" runs :meth:`Algorithm.local_loss` under ``torch.autocast`` (engine.precision)."""

    def autocast(self) -> torch.autocast:
        """The forward pass's precision: bfloat16 autocast for "bf16", a no-op context for "fp32"."""
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


@dataclass
class Batch:
    """One minibatch: transformed images, labels and the samples' rows of any per-sample targets."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    """The samples' positions in the client's :class:`LocalData` (stay on the CPU)."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        """``images, labels = batch`` for code that needs nothing else."""
        return iter((self.images, self.labels))

    def to(self, device: str) -> Batch:
        return Batch(
            self.images.to(device),
            self.labels.to(device),
            {name: value.to(device) for name, value in self.targets.items()},
            self.rows,
        )


TargetReader = Callable[[np.ndarray], dict[str, torch.Tensor]]
"""Local row positions → per-sample targets (e.g. cached teacher features) for those rows."""

ConditionedExtractor = Callable[[str, nn.Module], torch.Tensor]
"""(request name, client model) → the teacher features of every local sample (rows in
:class:`LocalData` order) with the model's encoding of that sample injected into the teacher's
conditioning (a :class:`~semanticfl.teachers.base.FeatureRequest` with ``conditioned = True``)."""


@dataclass
class LocalData:
    """A client's private training data, decoded once, transformed per batch."""

    images: torch.Tensor
    """uint8, N×C×H×W."""
    labels: torch.Tensor
    """int64, N."""
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    """uint8 batch → float batch (normalisation and, for training, augmentation)."""
    targets: TargetReader | None = None
    """Per-sample targets read for each batch (teacher-guided algorithms); ``None`` for the rest."""
    conditioned_targets: ConditionedExtractor | None = None
    """Model-dependent teacher features, extracted on demand (runs the teacher on this client)."""
    guidance: dict[str, GuidanceSet] = field(default_factory=dict)
    """Labelled sets the server sent once (the ``guidance`` of :meth:`Algorithm.teacher_requests`), by
    request name."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One shuffled pass over the data (the last batch may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            targets = self.targets(index.numpy()) if self.targets is not None else {}
            # index_select, not images[index]: the same rows, ~10x faster for a batch of 64 CIFAR-10 images.
            images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield Batch(self.transform(images, generator), labels, targets, index)

    def label_histogram(self, num_classes: int) -> np.ndarray:
        """Samples per class, as FedDisco/FedNH-style methods need."""
        return np.bincount(self.labels.numpy(), minlength=num_classes)


@dataclass
class ClientTask:
    """What a client is asked to do in one round, besides starting from the global model."""

    round: int
    payload: Arrays = field(default_factory=dict)
    """Algorithm-specific arrays from the server (e.g. SCAFFOLD's server control variate)."""
    state: Arrays = field(default_factory=dict)
    """The client's persistent state; the algorithm may replace entries in place."""


@dataclass
class ClientUpdate:
    """What a client sends back after local training."""

    arrays: Arrays
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    extra: Arrays = field(default_factory=dict)
    """Algorithm-specific uploads (e.g. SCAFFOLD's control-variate delta)."""
    client_id: int = -1
    """The client's partition id, set by the engine on the server side."""


@dataclass(frozen=True)
class AlgorithmSetup:
    """Facts about the experiment an algorithm may need at construction."""

    num_classes: int
    class_names: tuple[str, ...]
    num_clients: int
    seed: int
    teacher_shape: Callable[[], TeacherShape] | None = None
    """The configured teacher's widths, read on demand (``layer_dims``/``text_dim`` = ``"auto"``)."""


@dataclass
class NoParams:
    """Hyperparameters of an algorithm that has none."""


class ExperimentView(Protocol):
    """What :meth:`OwnsModelsAndData.bind` may read of the engine's experiment (built from the config)."""

    config: Config
    dataset: ImageDataset
    partitions: list[np.ndarray]
    """Per client, indices into the training split."""
    holdout_indices: np.ndarray
    """The server's public split: training indices no client holds."""
    partition_spec: PartitionSpec
    """The run's :class:`~semanticfl.data.partition.PartitionSpec` (``[partition]``, seeded)."""

    def train_transform(self) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]: ...

    def eval_transform(self) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]: ...


class Algorithm:
    """The shared FedAvg skeleton: local SGD on cross-entropy, example-weighted averaging.

    Every default below is FedAvg's behaviour; an algorithm subclasses this and overrides
    only the hooks its paper changes, so each algorithm file reads like its paper.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uploads: ClassVar[tuple[str, ...]] = ("model",)
    """What leaves a client, for the message audit and the docs."""

    def __init__(self, params: Any, setup: AlgorithmSetup) -> None:
        self.params = params
        self.setup = setup
        self.parameter_names: tuple[str, ...] | None = None

    # ------------------------------------------------------------------ model

    def extend_model(self, model: nn.Module) -> nn.Module:
        """Attach algorithm-owned modules (e.g. a projection head) to a fresh client model.

        An override builds its model and returns ``super().extend_model(new_model)``: the base
        records which state keys are trainable parameters (what control variates and
        regularisers cover), since the server otherwise only ever sees named arrays.
        """
        self.parameter_names = tuple(name for name, p in model.named_parameters() if p.requires_grad)
        return model

    def teacher_requests(self) -> TeacherRequests:
        """What this algorithm asks of the teacher: per-sample features (extracted from client data
        or offloaded to the server), class anchors and guidance sets (nothing here)."""
        return TeacherRequests()

    def receive_anchors(self, anchors: Arrays) -> None:
        """The engine hands over what :meth:`teacher_requests` asked for as ``anchors``, before round 1."""

    def trainable_parameter_names(self) -> tuple[str, ...]:
        """The names :meth:`extend_model` recorded, or a clear error if it was never called."""
        if self.parameter_names is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the model's parameter names on the server; call "
                "extend_model(model) on this instance first (the engine does when it builds the model)"
            )
        return self.parameter_names

    # ------------------------------------------------------------------ client half

    def local_train(
        self,
        model: nn.Module,
        data: LocalData,
        task: ClientTask,
        settings: LocalSettings,
        generator: torch.Generator,
    ) -> ClientUpdate:
        """Run ``settings.epochs`` epochs of minibatch SGD from the global model in ``model``."""
        context = self.begin_local(model, data, task, settings)
        optimizer = self.make_optimizer(model, settings)
        model.train()
        totals = _RunningTotals()
        for _ in range(settings.epochs):
            for batch in data.batches(settings.batch_size, generator):
                batch = batch.to(settings.device)
                optimizer.zero_grad(set_to_none=True)
                with settings.autocast():
                    loss, logits = self.local_loss(model, batch, context)
                loss.backward()
                self.before_step(model, context)
                optimizer.step()
                totals.add(loss.detach(), logits.detach(), batch.labels)
        extra = self.end_local(model, context, task, totals.steps)
        return ClientUpdate(
            arrays=state_to_numpy(model),
            num_examples=len(data),
            metrics=totals.metrics(),
            extra=extra,
        )

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> Any:
        """Prepare per-round local context (e.g. a frozen copy of the global model)."""
        return None

    def make_optimizer(self, model: nn.Module, settings: LocalSettings) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )

    def local_loss(self, model: nn.Module, batch: Batch, context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The local objective; FedAvg minimises cross-entropy. Returns (loss, logits)."""
        _, logits = model(batch.images)
        return F.cross_entropy(logits, batch.labels), logits

    def before_step(self, model: nn.Module, context: Any) -> None:
        """Edit gradients after backward, before the optimizer step (SCAFFOLD's correction)."""

    def end_local(self, model: nn.Module, context: Any, task: ClientTask, steps: int) -> Arrays:
        """Arrays to upload besides the model; may update ``task.state``."""
        return {}

    # ------------------------------------------------------------------ records

    def round_metrics(self, updates: Sequence[ClientUpdate]) -> dict[str, Any]:
        """Extra fields of the round record computed from the clients' replies."""
        return {}

    def summary(self, rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Extra fields of ``summary.json`` computed from all round records."""
        return {}

    # ------------------------------------------------------------------ server half

    def server_payload(self, global_arrays: Arrays, round_number: int) -> Arrays:
        """Arrays sent to every selected client with the global model."""
        return {}

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """FedAvg, Alg. 1: the example-weighted mean of the clients' models."""
        return weighted_average([u.arrays for u in updates], [u.num_examples for u in updates])

    def server_state(self) -> Arrays:
        """Server-side state that a checkpoint must hold to resume exactly."""
        return {}

    def load_server_state(self, state: Arrays) -> None:
        """Restore what :meth:`server_state` returned."""

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        device: str = "cpu",
    ) -> dict[str, float]:
        """Top-1 accuracy (%) and mean cross-entropy of ``model`` on uint8 ``images``."""
        model.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(labels), batch_size):
            x = transform(images[start : start + batch_size]).to(device)
            y = labels[start : start + batch_size].to(device)
            _, logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum())
        n = max(len(labels), 1)
        return {"accuracy": 100.0 * correct / n, "loss": loss_sum / n}


class OwnsModelsAndData(Algorithm, ABC):
    """An algorithm that builds its own server model and client data (model-heterogeneous FL).

    The engine's default is one architecture (``model.name``) for server and clients, each client
    training on the :class:`LocalData` of its partition and the server reporting top-1 on the test
    set. An algorithm whose clients hold different models and modalities around one server model
    (FedAFD: image, text and image-text clients, an image-text server) subclasses this instead; the
    engine detects it with ``isinstance`` and asks it for all three (docs/ARCHITECTURE.md).
    """

    @abstractmethod
    def bind(self, experiment: ExperimentView) -> None:
        """Called once by the engine, on server and clients, with the experiment's data and config."""

    @abstractmethod
    def global_model(self) -> nn.Module:
        """The server's model: the global state the engine sends, aggregates and checkpoints."""

    @abstractmethod
    def client_data(self, partition_id: int) -> Any:
        """Client ``partition_id``'s data in the algorithm's own form (handed to :meth:`local_train`)."""

    @abstractmethod
    def central_evaluation(self, model: nn.Module) -> dict[str, Any]:
        """The round's central metrics of the global ``model``."""


def weighted_average(states: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """``Σ_k w_k x_k / Σ_k w_k`` per array, accumulated in float64 (:func:`~semanticfl.algorithms.
    regularizers.mean64`), cast back to each dtype.

    Integer arrays (BatchNorm's ``num_batches_tracked``) are rounded.
    """
    if not states:
        raise ValueError("cannot average zero client states")
    return cast_like(mean64(states, weights, states[0]), states[0])


def load_arrays(model: nn.Module, arrays: Arrays) -> None:
    """Copy named arrays into ``model`` (strict)."""
    load_numpy_state(model, arrays)


def params_from_dict(params_cls: type, values: dict[str, Any], algorithm: str) -> Any:
    """Build an algorithm's ``Params`` dataclass from its ``[algorithm.<name>]`` table."""
    if not dataclasses.is_dataclass(params_cls):
        raise TypeError(f"{params_cls!r} must be a dataclass")
    return build_dataclass(params_cls, values, f"algorithm.{algorithm}")


class _RunningTotals:
    """Loss/accuracy accumulated over local steps without a sync per step."""

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0
        self.loss_sum: torch.Tensor | float = 0.0
        self.correct: torch.Tensor | int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps += 1
        self.samples += int(labels.shape[0])
        self.loss_sum = self.loss_sum + loss * labels.shape[0]
        self.correct = self.correct + (logits.argmax(dim=1) == labels).sum()

    def metrics(self) -> dict[str, float]:
        n = max(self.samples, 1)
        return {
            "train_loss": float(self.loss_sum) / n,
            "train_accuracy": 100.0 * float(self.correct) / n,
            "local_steps": float(self.steps),
        }
