"""Running the partition schemes: :func:`partition_indices` and the flwr-datasets partitioners behind it.

All schemes but "pathological" with its default deterministic class assignment (written out here with
numpy, see ``_pathological_parts``) are run by flwr-datasets partitioners on a seeded-shuffled
``Dataset`` of the kept labels, with bounded, deterministic retries where a partitioner may fail.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

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

from semanticfl.data.partition.spec import PartitionSpec, checked_labels, long_tail_indices
from semanticfl.errors import UserError

log = logging.getLogger(__name__)

# Retry k (0-based) of a randomised step uses seed + k * RETRY_SEED_STRIDE.
RETRY_SEED_STRIDE = 1000


def partition_indices(labels: np.ndarray, spec: PartitionSpec, num_classes: int) -> list[np.ndarray]:
    """Split the training set into ``spec.num_clients`` disjoint parts.

    Applies the long-tail step, shuffles the kept samples with ``spec.seed``, splits
    them with the runner for ``spec.scheme`` and maps the result back to positions in
    ``labels``. Returns one sorted int64 index array per client; the same spec and
    labels always give the same output.
    """
    labels = checked_labels(labels, num_classes)
    spec.validate(len(labels), num_classes)
    kept = long_tail_indices(labels, spec.imbalance_factor, spec.seed)
    spec.validate(len(kept), num_classes)  # the long tail may leave too few samples
    dataset = _shuffled_label_dataset(labels, kept, spec.seed)
    parts = _SCHEME_RUNNERS[spec.scheme](dataset, spec)
    return [np.sort(part).astype(np.int64) for part in parts]


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
