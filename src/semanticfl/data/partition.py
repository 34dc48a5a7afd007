"""Split a labelled training set across federated clients.

The splitting itself is done by flwr-datasets partitioners (all schemes but
"pathological" with its default deterministic class assignment, see
``_pathological_parts``); this module adds what they lack for reproducible experiments:

* an optional long-tail step (exponential class profile, applied before partitioning);
* a seeded shuffle of the data before partitioning, so every scheme is seeded;
* bounded, deterministic retries where a partitioner may fail (Dirichlet);
* checks that turn impossible settings into one-line ``UserError`` messages;
* class-count tables (text, CSV, heatmap) to inspect a partition.

Every partition is returned as sorted ``int64`` indices into the original label array.
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    ShardPartitioner,
    SizePartitioner,
)

from semanticfl.config import PartitionConfig
from semanticfl.errors import UserError

log = logging.getLogger(__name__)

SCHEMES = ("iid", "dirichlet", "pathological", "shards", "quantity")

# How "pathological" (#C=k) picks each client's classes (flwr's class_assignment_mode).
CLASS_ASSIGNMENTS = ("deterministic", "random", "first-deterministic")

# Retry k (0-based) of a randomised step uses seed + k * RETRY_SEED_STRIDE.
RETRY_SEED_STRIDE = 1000

# Heatmaps get per-cell count annotations only up to this many cells, and a tick label
# per client / per class only up to this many rows / columns.
MAX_ANNOTATED_CELLS = 400
MAX_TICK_LABELS = 100


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


def partition_indices(labels: np.ndarray, spec: PartitionSpec, num_classes: int) -> list[np.ndarray]:
    """Split the training set into ``spec.num_clients`` disjoint parts.

    Applies the long-tail step, shuffles the kept samples with ``spec.seed``, splits
    them with the runner for ``spec.scheme`` and maps the result back to positions in
    ``labels``. Returns one sorted int64 index array per client; the same spec and
    labels always give the same output.
    """
    labels = _checked_labels(labels, num_classes)
    spec.validate(len(labels), num_classes)
    kept = long_tail_indices(labels, spec.imbalance_factor, spec.seed)
    spec.validate(len(kept), num_classes)  # the long tail may leave too few samples
    dataset = _shuffled_label_dataset(labels, kept, spec.seed)
    parts = _SCHEME_RUNNERS[spec.scheme](dataset, spec)
    return [np.sort(part).astype(np.int64) for part in parts]


def class_count_table(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Clients x classes int64 table: how many samples of each class each client holds."""
    labels = np.asarray(labels)
    table = np.zeros((len(parts), num_classes), dtype=np.int64)
    for client, part in enumerate(parts):
        table[client] = np.bincount(labels[part], minlength=num_classes)
    return table


def format_count_table(table: np.ndarray, class_names: Sequence[str]) -> str:
    """Render a count table as aligned text with a total column and a total row."""
    _check_table_matches_names(table, class_names)
    header = ["client", *map(str, class_names), "total"]
    rows = [[str(client), *map(str, counts), str(counts.sum())] for client, counts in enumerate(table)]
    rows.append(["total", *map(str, table.sum(axis=0)), str(table.sum())])
    lines = [header, *rows]
    widths = [max(len(line[col]) for line in lines) for col in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines
    )


def save_count_table_csv(table: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Write the count table as CSV: a header ``client,<class names>`` and one row per client."""
    _check_table_matches_names(table, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["client", *class_names])
        for client, counts in enumerate(table):
            writer.writerow([client, *counts.tolist()])


def save_partition_heatmap(
    table: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Save a PNG heatmap of the count table: clients on y, classes on x.

    Cells are annotated with their counts when the table has at most
    ``MAX_ANNOTATED_CELLS`` cells; larger axes get automatic numeric ticks instead of
    one label per client / class. Uses the Agg canvas directly (no pyplot state).
    """
    # Imported here so that partitioning does not pay for loading matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_table_matches_names(table, class_names)
    num_clients, num_classes = table.shape
    figure = Figure(figsize=(min(2 + 0.6 * num_classes, 30), min(1.5 + 0.4 * num_clients, 30)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(table, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="samples")
    axes.set_xlabel("class")
    axes.set_ylabel("client")
    if num_classes <= MAX_TICK_LABELS:
        axes.set_xticks(range(num_classes), [str(name) for name in class_names], rotation=90)
    if num_clients <= MAX_TICK_LABELS:
        axes.set_yticks(range(num_clients))
    if title:
        axes.set_title(title)
    if table.size <= MAX_ANNOTATED_CELLS:
        _annotate_cells(axes, table)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)


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


def _checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
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


def _check_table_matches_names(table: np.ndarray, class_names: Sequence[str]) -> None:
    """Raise ValueError unless the table is 2-D with one column per class name."""
    if table.ndim != 2 or table.shape[1] != len(class_names):
        raise ValueError(f"count table of shape {table.shape} does not match {len(class_names)} class names")


# --- long tail ----------------------------------------------------------------------


def _long_tail_class_sizes(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Target size of each class: floor(n_max * IF ** (-c / (C - 1))) for c = 0..C-1."""
    if num_classes == 1:
        return [n_max]
    return [math.floor(n_max * imbalance_factor ** (-c / (num_classes - 1))) for c in range(num_classes)]


# --- running the flwr-datasets partitioners -----------------------------------------


def _shuffled_label_dataset(labels: np.ndarray, kept: np.ndarray, seed: int) -> Dataset:
    """An arrow-formatted Dataset of the kept samples in seeded random order.

    Column "label" is what partitioners split by; column "idx" is the position in the
    original label array, used to map partition rows back. The arrow format matters for
    speed: in datasets 4.x, ``dataset[column]`` under the default or numpy format is a
    lazy Column that flwr's ``np.array(dataset[column])`` reads row by row (seconds for
    50k rows), while under the arrow format it is a pyarrow array read at once.
    """
    order = np.random.default_rng(seed).permutation(kept)
    return Dataset.from_dict({"label": labels[order], "idx": order}).with_format("arrow")


def _original_indices_per_partition(partitioner: Partitioner, dataset: Dataset) -> list[np.ndarray]:
    """Assign ``dataset`` to ``partitioner`` and return every partition's "idx" column."""
    partitioner.dataset = dataset
    return [
        np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64)
        for pid in range(partitioner.num_partitions)
    ]


def _iid_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """IID: contiguous equal slices of the seeded-shuffled data."""
    return _original_indices_per_partition(IidPartitioner(num_partitions=spec.num_clients), dataset)


def _dirichlet_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """Label skew: each class split over clients by Dirichlet(alpha) proportions.

    flwr's partitioner resamples a few times itself and then raises ValueError; this
    retries with derived seeds up to ``spec.max_retries`` times before giving up.
    """

    def attempt(seed: int) -> list[np.ndarray]:
        partitioner = DirichletPartitioner(
            num_partitions=spec.num_clients,
            partition_by="label",
            alpha=float(spec.alpha),
            min_partition_size=spec.min_partition_size,
            self_balancing=True,
            shuffle=True,
            seed=seed,
        )
        with warnings.catch_warnings():
            # flwr warns on every internal resample; the outcome is reported below.
            warnings.simplefilter("ignore", UserWarning)
            return _original_indices_per_partition(partitioner, dataset)

    parts = _first_success(attempt, spec)
    if parts is None:
        raise UserError(
            f"dirichlet partitioning gave some client fewer than {spec.min_partition_size} "
            f"samples in all {spec.max_retries} retries (alpha={spec.alpha}, "
            f"num_clients={spec.num_clients}); raise alpha, lower num_clients or "
            f"min_partition_size, or raise max_retries"
        )
    return parts


def _pathological_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """#C=k: every client holds exactly k classes.

    ``class_assignment="random"`` and ``"first-deterministic"`` are drawn by flwr (see
    ``_drawn_pathological_parts``). ``"deterministic"``, written out here, uses every class:
    client p holds the k consecutive classes starting at ``p mod C`` when there are at least
    as many clients as classes — exactly flwr's ``PathologicalPartitioner`` in
    ``class_assignment_mode="deterministic"`` (the tests check the class sets) — and at
    ``floor(p C / n)`` otherwise, where flwr's rule would never reach the last classes.
    Consecutive starts differ by at most ``ceil(C / n) <= k``, so no class is dropped.
    Each class's (seeded-shuffled) samples are split evenly among the clients holding it.
    Written out with numpy because flwr's partitioner hands ``Dataset.select`` lists of
    numpy integers, which datasets fingerprints one by one (about 2 s for 50k samples).
    """
    if spec.class_assignment != "deterministic":
        return _drawn_pathological_parts(dataset, spec)
    k = spec.classes_per_client
    labels = np.asarray(dataset["label"])
    original_indices = np.asarray(dataset["idx"], dtype=np.int64)
    present_classes = np.unique(labels)
    holders = _class_holders(spec.num_clients, len(present_classes), k)
    _check_class_sizes(labels, present_classes, holders)
    parts: list[list[np.ndarray]] = [[] for _ in range(spec.num_clients)]
    for j, label in enumerate(present_classes):
        chunks = np.array_split(original_indices[labels == label], len(holders[j]))
        for client, chunk in zip(holders[j], chunks):
            parts[client].append(chunk)
    return [np.concatenate(chunks) for chunks in parts]


def _drawn_pathological_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """#C=k with each client's k classes drawn by flwr's ``PathologicalPartitioner``.

    ``class_assignment`` is passed on as its ``class_assignment_mode`` and ``spec.seed`` as
    its seed. Each class's samples are split evenly among the clients that drew it; a class
    no client drew is held by nobody, which is logged as a warning naming it. Slower than the
    deterministic split (about 2 s for 50k samples: the ``Dataset.select`` noted there).
    """
    labels = np.asarray(dataset["label"])
    _check_classes_present(spec.classes_per_client, len(np.unique(labels)))
    partitioner = PathologicalPartitioner(
        num_partitions=spec.num_clients,
        partition_by="label",
        num_classes_per_partition=spec.classes_per_client,
        class_assignment_mode=spec.class_assignment,
        shuffle=False,  # the order within a client is discarded: parts are sorted
        seed=spec.seed,
    )
    try:
        with warnings.catch_warnings():
            # flwr's warning about undrawn classes names an option it no longer has; see below.
            warnings.simplefilter("ignore", UserWarning)
            parts = _original_indices_per_partition(partitioner, dataset)
    except ValueError as error:
        raise UserError(
            f"class_assignment {spec.class_assignment!r} drew a class for more clients than it has "
            f"samples ({' '.join(str(error).split())}); lower num_clients or classes_per_client, or use "
            f"class_assignment \"deterministic\""
        ) from None
    held = np.isin(np.asarray(dataset["idx"]), np.concatenate(parts))
    undrawn = np.unique(labels[~held])
    if undrawn.size:
        log.warning(
            "#C=%d with class_assignment %r: no client drew class(es) %s, so their %d samples are "
            "left out; \"first-deterministic\" with num_clients >= classes uses every class",
            spec.classes_per_client,
            spec.class_assignment,
            ", ".join(map(str, undrawn.tolist())),
            int(np.count_nonzero(~held)),
        )
    return parts


def _check_classes_present(k: int, num_classes: int) -> None:
    """UserError if k exceeds the classes present in the data (after the long tail)."""
    if k > num_classes:
        raise UserError(
            f"classes_per_client {k} exceeds the {num_classes} classes present in "
            f"the data; lower classes_per_client"
        )


def _class_holders(num_clients: int, num_classes: int, k: int) -> list[list[int]]:
    """For each class (by position), the clients holding it, in client order."""
    _check_classes_present(k, num_classes)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client in range(num_clients):
        first = client % num_classes if num_clients >= num_classes else client * num_classes // num_clients
        for offset in range(k):
            holders[(first + offset) % num_classes].append(client)
    return holders


def _check_class_sizes(labels: np.ndarray, present_classes: np.ndarray, holders: list[list[int]]) -> None:
    """UserError if a class has fewer samples than clients that must share it."""
    for j, label in enumerate(present_classes):
        size = int(np.count_nonzero(labels == label))
        if size < len(holders[j]):
            raise UserError(
                f"class {label} has {size} samples but must be split across {len(holders[j])} "
                f"clients; lower num_clients, classes_per_client or imbalance_factor"
            )


def _shard_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """McMahan shards: data sorted by label, cut into equal shards, dealt at random.

    Shard size is floor(N / (num_clients * shards_per_client)), so the remaining
    N mod (num_clients * shards_per_client) samples (at most) are left unused.
    """
    partitioner = ShardPartitioner(
        num_partitions=spec.num_clients,
        partition_by="label",
        num_shards_per_partition=spec.shards_per_client,
        shuffle=True,
        seed=spec.seed,
    )
    with warnings.catch_warnings():
        # datasets' sort passes a sort option that recent pyarrow deprecates.
        warnings.simplefilter("ignore", FutureWarning)
        return _original_indices_per_partition(partitioner, dataset)


def _quantity_parts(dataset: Dataset, spec: PartitionSpec) -> list[np.ndarray]:
    """Quantity skew (NIID-Bench): IID labels, client sizes ~ Dirichlet(quantity_alpha)."""
    sizes = _first_success(lambda seed: _dirichlet_sizes(len(dataset), spec, seed), spec)
    if sizes is None:
        raise UserError(
            f"quantity partitioning gave some client fewer than {spec.min_partition_size} "
            f"samples in all {spec.max_retries} retries (quantity_alpha="
            f"{spec.quantity_alpha}, num_clients={spec.num_clients}); raise quantity_alpha, "
            f"lower num_clients or min_partition_size, or raise max_retries"
        )
    return _original_indices_per_partition(SizePartitioner(sizes), dataset)


def _dirichlet_sizes(num_samples: int, spec: PartitionSpec, seed: int) -> list[int] | None:
    """Client sizes summing to ``num_samples`` with Dirichlet proportions, or None if too small."""
    proportions = np.random.default_rng(seed).dirichlet(np.full(spec.num_clients, float(spec.quantity_alpha)))
    cuts = (np.cumsum(proportions)[:-1] * num_samples).astype(np.int64)
    sizes = np.diff(np.concatenate(([0], cuts, [num_samples])))
    if sizes.min() < spec.min_partition_size:
        return None
    return [int(size) for size in sizes]


def _first_success(attempt: Callable[[int], object], spec: PartitionSpec):
    """Run ``attempt(seed)`` for seeds seed, seed+1000, ... until it returns non-None.

    An attempt fails by returning None or raising ValueError (flwr's way of giving up).
    Returns None when all ``spec.max_retries`` attempts fail.
    """
    for retry in range(spec.max_retries):
        try:
            result = attempt(spec.seed + retry * RETRY_SEED_STRIDE)
        except ValueError:
            continue
        if result is not None:
            return result
    return None


_SCHEME_RUNNERS: dict[str, Callable[[Dataset, PartitionSpec], list[np.ndarray]]] = {
    "iid": _iid_parts,
    "dirichlet": _dirichlet_parts,
    "pathological": _pathological_parts,
    "shards": _shard_parts,
    "quantity": _quantity_parts,
}


def _annotate_cells(axes, table: np.ndarray) -> None:
    """Write each cell's count on the heatmap, light text on dark cells."""
    threshold = table.max() / 2 if table.size else 0
    for (row, col), count in np.ndenumerate(table):
        color = "black" if count > threshold else "white"
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
