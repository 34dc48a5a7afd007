"""What a partition is asked for: the seeded :class:`PartitionSpec`, its checks and the long-tail step.

The checks turn impossible settings (bad values, or sizes the dataset cannot meet) into one-line
``UserError`` messages before anything is split.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from semanticfl.config import PartitionConfig
from semanticfl.errors import UserError

SCHEMES = ("iid", "dirichlet", "pathological", "shards", "quantity")

# How "pathological" (#C=k) picks each client's classes (flwr's class_assignment_mode).
CLASS_ASSIGNMENTS = ("deterministic", "random", "first-deterministic")


@dataclass(frozen=True)
class PartitionSpec(PartitionConfig):
    """How to split a training set across clients: the ``[partition]`` settings (their fields and
    meanings are :class:`~semanticfl.config.PartitionConfig`'s) plus the seed."""

    seed: int = 0
    """Seed of every random step (the run's ``experiment.seed``)."""

    def validate(self, num_samples: int, num_classes: int) -> None:
        """Raise ``UserError`` for a bad value, or one this dataset size cannot meet.

        Value checks apply to every field whatever the scheme; dataset-size checks
        (clients vs samples, classes_per_client vs ``num_classes``, shards,
        min_partition_size) apply to the chosen scheme.
        """
        if self.scheme not in SCHEMES:
            raise UserError(f"unknown partition scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.class_assignment not in CLASS_ASSIGNMENTS:
            raise UserError(
                f"unknown partition class_assignment {self.class_assignment!r}; "
                f"choose one of {', '.join(CLASS_ASSIGNMENTS)}"
            )
        _require_int("num_clients", self.num_clients, minimum=1)
        _require_int("classes_per_client", self.classes_per_client, minimum=1)
        _require_int("shards_per_client", self.shards_per_client, minimum=1)
        _require_int("min_partition_size", self.min_partition_size, minimum=1)
        _require_int("max_retries", self.max_retries, minimum=1)
        _require_int("seed", self.seed, minimum=0)
        _require_positive_real("alpha", self.alpha)
        _require_positive_real("quantity_alpha", self.quantity_alpha)
        _require_real_at_least("imbalance_factor", self.imbalance_factor, minimum=1.0)
        _check_fits_dataset(self, num_samples, num_classes)


def long_tail_indices(labels: np.ndarray, imbalance_factor: float, seed: int) -> np.ndarray:
    """Subsample ``labels`` to an exponential long-tail class profile.

    Class c of C (in label order) keeps n_c = floor(n_max * IF ** (-c / (C - 1)))
    samples, where n_max is the largest class size and C = max(label) + 1; a class with
    fewer samples than n_c keeps all of them. Which samples are kept is drawn with a
    seeded RNG. Returns the sorted kept indices (all indices when IF = 1).
    """
    _require_real_at_least("imbalance_factor", imbalance_factor, minimum=1.0)
    labels = np.asarray(labels)
    if imbalance_factor == 1 or labels.size == 0:
        return np.arange(labels.size, dtype=np.int64)
    class_sizes = np.bincount(labels)
    targets = _long_tail_class_sizes(int(class_sizes.max()), len(class_sizes), imbalance_factor)
    if targets[-1] < 1:
        raise UserError(
            f"imbalance_factor {imbalance_factor} leaves the last class with no samples "
            f"(largest class has {class_sizes.max()}); use an imbalance_factor of at most "
            f"{class_sizes.max()}"
        )
    rng = np.random.default_rng(seed)
    kept = [
        rng.choice(np.flatnonzero(labels == c), size=min(target, size), replace=False)
        for c, (target, size) in enumerate(zip(targets, class_sizes, strict=True))
    ]
    return np.sort(np.concatenate(kept)).astype(np.int64)


# --- validation helpers -------------------------------------------------------------


def _require_int(name: str, value: object, minimum: int) -> None:
    """Raise UserError unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {value!r}; set it to a whole number")
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}; raise it")


def _require_real(name: str, value: object) -> None:
    """Raise UserError unless ``value`` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}; set it to a number")


def _require_positive_real(name: str, value: object) -> None:
    """Raise UserError unless ``value`` is a finite number > 0."""
    _require_real(name, value)
    if value <= 0:
        raise UserError(f"{name} must be greater than 0, got {value}; use a positive value")


def _require_real_at_least(name: str, value: object, minimum: float) -> None:
    """Raise UserError unless ``value`` is a finite number >= ``minimum``."""
    _require_real(name, value)
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}; raise it")


def _check_fits_dataset(spec: PartitionSpec, num_samples: int, num_classes: int) -> None:
    """Raise UserError if the spec's sizes cannot be met by the dataset."""
    n = spec.num_clients
    if num_samples < n:
        raise UserError(
            f"cannot split {num_samples} samples across {n} clients; use at most {num_samples} clients"
        )
    if spec.scheme in ("dirichlet", "quantity") and n * spec.min_partition_size > num_samples:
        raise UserError(
            f"{n} clients with min_partition_size {spec.min_partition_size} need "
            f"{n * spec.min_partition_size} samples but only {num_samples} are available; "
            f"lower num_clients or min_partition_size"
        )
    if spec.scheme == "pathological":
        _check_pathological_fits(spec, num_classes)
    if spec.scheme == "shards" and n * spec.shards_per_client > num_samples:
        raise UserError(
            f"{n} clients x {spec.shards_per_client} shards need at least "
            f"{n * spec.shards_per_client} samples but only {num_samples} are available; "
            f"lower num_clients or shards_per_client"
        )


def _check_pathological_fits(spec: PartitionSpec, num_classes: int) -> None:
    """Raise UserError unless #C=k can give every client k classes and use every class."""
    k = spec.classes_per_client
    if k > num_classes:
        raise UserError(
            f"classes_per_client {k} exceeds the {num_classes} classes; use a value "
            f"between 1 and {num_classes}"
        )
    if spec.num_clients * k < num_classes:
        raise UserError(
            f"{spec.num_clients} clients x {k} classes_per_client cannot cover all "
            f"{num_classes} classes; raise num_clients or classes_per_client so that "
            f"their product is at least {num_classes}"
        )


def checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return ``labels`` as a 1-D integer array, or raise UserError if it is not one."""
    _require_int("num_classes", num_classes, minimum=1)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"labels must be a 1-D integer array, got shape {labels.shape} of {labels.dtype}; "
            f"check the dataset's label column"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"labels must lie in [0, {num_classes}), found values from {labels.min()} to "
            f"{labels.max()}; check num_classes and the dataset's label column"
        )
    return labels


# --- long tail ----------------------------------------------------------------------


def _long_tail_class_sizes(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Target size of each class: floor(n_max * IF ** (-c / (C - 1))) for c = 0..C-1."""
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * imbalance_factor ** (-c / (num_classes - 1))) for c in range(num_classes)]
