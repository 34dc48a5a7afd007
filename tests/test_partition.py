"""Tests for semanticfl.data.partition: schemes, long tail, validation, count tables."""

import csv
import hashlib
import logging
import math
import time
import warnings

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import PathologicalPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from semanticfl.data.partition import (
    CLASS_ASSIGNMENTS,
    SCHEMES,
    PartitionSpec,
    class_count_table,
    format_count_table,
    long_tail_indices,
    partition_indices,
    save_count_table_csv,
    save_partition_heatmap,
)
from semanticfl.errors import UserError

NUM_CLASSES = 10
# 10 classes x 100 samples, class-sorted: the fixture of the hard-coded tables below.
BALANCED_LABELS = np.repeat(np.arange(NUM_CLASSES), 100)
# 1003 samples with uneven class sizes, so that nothing divides evenly.
UNEVEN_LABELS = np.random.default_rng(7).integers(0, NUM_CLASSES, size=1003)


def spec_for(scheme: str, **overrides) -> PartitionSpec:
    """A spec that works on the fixtures above for every scheme."""
    return PartitionSpec(scheme=scheme, **{"num_clients": 5, **overrides})


def counts(labels, spec):
    """Class-count table of partitioning ``labels`` with ``spec``."""
    return class_count_table(labels, partition_indices(labels, spec, NUM_CLASSES), NUM_CLASSES)


# --- determinism and structure --------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_spec_same_partition_and_other_seed_differs(scheme):
    # 10 clients x 3 classes: each class is split over 3 clients, so the seed matters
    # for "pathological" too (with every class on one client, it could not).
    options = {"num_clients": 10, "classes_per_client": 3, "min_partition_size": 2}
    first = partition_indices(UNEVEN_LABELS, spec_for(scheme, **options), NUM_CLASSES)
    again = partition_indices(UNEVEN_LABELS, spec_for(scheme, **options), NUM_CLASSES)
    reseeded = partition_indices(UNEVEN_LABELS, spec_for(scheme, **options, seed=1), NUM_CLASSES)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first, reseeded, strict=True))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_are_sorted_int64_and_disjoint(scheme):
    parts = partition_indices(UNEVEN_LABELS, spec_for(scheme), NUM_CLASSES)
    assert len(parts) == 5
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no duplicates within a client
        assert len(part) > 0
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union)  # no sample on two clients
    assert union.min() >= 0 and union.max() < len(UNEVEN_LABELS)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "quantity"])
def test_scheme_uses_every_sample(scheme):
    parts = partition_indices(UNEVEN_LABELS, spec_for(scheme), NUM_CLASSES)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(UNEVEN_LABELS)))


def test_shards_use_all_but_the_remainder_of_equal_shards():
    spec = spec_for("shards", shards_per_client=2)
    parts = partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)
    shard_size = len(UNEVEN_LABELS) // (5 * 2)  # 100; 3 samples are left over
    assert [len(part) for part in parts] == [2 * shard_size] * 5


def test_iid_sizes_are_equal_and_every_client_sees_every_class():
    table = counts(UNEVEN_LABELS, spec_for("iid"))
    assert sorted(table.sum(axis=1).tolist()) == [200, 200, 201, 201, 201]
    assert (table > 0).all()


def test_labels_mapped_back_to_original_positions():
    # Labels equal to their position's class: a client's class counts must come from the
    # original array, so a wrong index mapping would change the table.
    labels = np.arange(1000) % NUM_CLASSES
    parts = partition_indices(labels, spec_for("pathological", classes_per_client=1, num_clients=10), 10)
    for client, part in enumerate(parts):
        assert set((part % NUM_CLASSES).tolist()) == {client}


# --- hard-coded tables ------------------------------------------------------------------


def test_dirichlet_alpha_05_seed_0_known_table():
    expected = [
        [20, 23, 0, 1, 6, 20, 8, 18, 0, 53],
        [0, 29, 25, 22, 2, 38, 4, 34, 31, 8],
        [47, 15, 20, 20, 0, 10, 43, 12, 0, 32],
        [18, 30, 27, 27, 34, 30, 19, 8, 68, 0],
        [15, 3, 28, 30, 58, 2, 26, 28, 1, 7],
    ]
    table = counts(BALANCED_LABELS, spec_for("dirichlet", alpha=0.5, seed=0))
    assert table.tolist() == expected


def test_pathological_k2_known_table():
    table = counts(BALANCED_LABELS, spec_for("pathological", classes_per_client=2))
    expected = np.zeros((5, NUM_CLASSES), dtype=np.int64)
    for client in range(5):
        expected[client, 2 * client : 2 * client + 2] = 100
    assert table.tolist() == expected.tolist()


@pytest.mark.parametrize("num_clients, k", [(5, 2), (4, 3), (10, 2), (7, 3), (20, 1), (3, 10)])
def test_pathological_exactly_k_classes_and_every_class_used(num_clients, k):
    table = counts(UNEVEN_LABELS, spec_for("pathological", num_clients=num_clients, classes_per_client=k))
    assert ((table > 0).sum(axis=1) == k).all()
    assert (table.sum(axis=0) > 0).all()


@pytest.mark.parametrize("num_clients, k", [(10, 2), (12, 3), (20, 4)])
def test_pathological_classes_match_flwr_deterministic_mode(num_clients, k):
    """With at least as many clients as classes, each client's classes are flwr's."""
    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode="deterministic",
        seed=0,
    )
    partitioner.dataset = Dataset.from_dict({"label": UNEVEN_LABELS})
    expected = [set(np.asarray(partitioner.load_partition(p)["label"][:]).tolist()) for p in range(num_clients)]
    table = counts(UNEVEN_LABELS, spec_for("pathological", num_clients=num_clients, classes_per_client=k))
    assert [set(np.flatnonzero(row).tolist()) for row in table] == expected


def test_pathological_with_fewer_clients_than_classes_spreads_the_starts():
    # 4 clients, k = 3, 10 classes: starts floor(p * 10 / 4) = 0, 2, 5, 7.
    table = counts(BALANCED_LABELS, spec_for("pathological", num_clients=4, classes_per_client=3))
    classes = [np.flatnonzero(row).tolist() for row in table]
    assert classes == [[0, 1, 2], [2, 3, 4], [5, 6, 7], [7, 8, 9]]
    assert table[:, 2].tolist() == [50, 50, 0, 0] and table[:, 0].tolist() == [100, 0, 0, 0]


def test_default_class_assignment_is_the_deterministic_one_unchanged():
    """The default is "deterministic", and it gives the partitions it gave before the option existed."""
    assert PartitionSpec().class_assignment == "deterministic"
    default = partition_indices(
        UNEVEN_LABELS, spec_for("pathological", num_clients=10, classes_per_client=3), NUM_CLASSES
    )
    explicit = partition_indices(
        UNEVEN_LABELS,
        spec_for("pathological", num_clients=10, classes_per_client=3, class_assignment="deterministic"),
        NUM_CLASSES,
    )
    assert all(np.array_equal(a, b) for a, b in zip(default, explicit, strict=True))
    # Recorded from the code before class_assignment was added.
    assert [len(part) for part in default] == [96, 101, 98, 100, 94, 98, 104, 110, 103, 99]
    assert default[0][:3].tolist() == [8, 13, 23] and default[1][:3].tolist() == [10, 18, 43]
    assert hashlib.sha256(np.concatenate(default).tobytes()).hexdigest()[:16] == "110ac98fa543904a"


def flwr_pathological(labels, num_clients, k, mode, seed):
    """flwr's PathologicalPartitioner run directly on the seeded shuffle every scheme starts from."""
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode=mode,
        seed=seed,
    )
    partitioner.dataset = Dataset.from_dict({"label": labels[order], "idx": order})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes no partition drew
        return [np.sort(np.asarray(partitioner.load_partition(p)["idx"])) for p in range(num_clients)]


@pytest.mark.parametrize("mode", ["random", "first-deterministic"])
@pytest.mark.parametrize("num_clients, k, seed", [(5, 2, 0), (10, 3, 4), (12, 4, 9)])
def test_drawn_class_assignment_is_flwrs_pathological_partitioner(mode, num_clients, k, seed):
    spec = spec_for(
        "pathological", num_clients=num_clients, classes_per_client=k, class_assignment=mode, seed=seed
    )
    parts = partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)
    expected = flwr_pathological(UNEVEN_LABELS, num_clients, k, mode, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected, strict=True))
    table = class_count_table(UNEVEN_LABELS, parts, NUM_CLASSES)
    assert ((table > 0).sum(axis=1) == k).all()  # exactly k classes on every client


def test_random_class_assignment_is_seeded_and_not_the_deterministic_one():
    def classes_per_client(seed):
        options = {"num_clients": 10, "classes_per_client": 3, "class_assignment": "random"}
        spec = spec_for("pathological", **options, seed=seed)
        return [np.flatnonzero(row).tolist() for row in counts(UNEVEN_LABELS, spec)]

    consecutive = [sorted((client + i) % NUM_CLASSES for i in range(3)) for client in range(10)]
    assert classes_per_client(0) == classes_per_client(0)
    assert classes_per_client(0) != classes_per_client(1)
    assert consecutive not in (classes_per_client(0), classes_per_client(1))


def test_unknown_class_assignment_names_the_valid_ones():
    with pytest.raises(UserError) as raised:
        partition_indices(UNEVEN_LABELS, spec_for("pathological", class_assignment="shuffled"), NUM_CLASSES)
    assert str(raised.value) == (
        "unknown partition class_assignment 'shuffled'; "
        "choose one of deterministic, random, first-deterministic"
    )


def test_classes_no_client_drew_are_left_out_with_a_warning(caplog):
    # Seed 0, 5 clients x 2 random classes: classes 1, 5 and 8 are drawn by no client.
    spec = spec_for("pathological", classes_per_client=2, class_assignment="random", seed=0)
    with caplog.at_level(logging.WARNING, logger="semanticfl.data.partition"):
        parts = partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)
    left_out = np.setdiff1d(np.arange(len(UNEVEN_LABELS)), np.concatenate(parts))
    assert np.unique(UNEVEN_LABELS[left_out]).tolist() == [1, 5, 8] and len(left_out) == 325
    assert np.array_equal(left_out, np.flatnonzero(np.isin(UNEVEN_LABELS, [1, 5, 8])))
    assert "no client drew class(es) 1, 5, 8, so their 325 samples are left out" in caplog.text


def test_a_class_drawn_by_more_clients_than_its_samples_is_a_user_error():
    labels = np.concatenate([[0], np.repeat(np.arange(1, NUM_CLASSES), 50)])  # class 0: one sample
    # first-deterministic gives class 0 to clients 0 and 10 at least.
    options = {"num_clients": 20, "classes_per_client": 1, "class_assignment": "first-deterministic"}
    spec = spec_for("pathological", **options)
    with pytest.raises(UserError, match="drew a class for more clients than it has samples") as raised:
        partition_indices(labels, spec, NUM_CLASSES)
    assert "\n" not in str(raised.value)


def test_quantity_sizes_are_skewed_above_minimum_with_iid_labels():
    table = counts(UNEVEN_LABELS, spec_for("quantity", quantity_alpha=0.5, min_partition_size=20))
    sizes = table.sum(axis=1)
    assert sizes.min() >= 20
    assert sizes.max() > 2 * sizes.min()
    # IID labels: each client's class shares stay near the global shares.
    shares = table / sizes[:, None]
    global_shares = np.bincount(UNEVEN_LABELS) / len(UNEVEN_LABELS)
    assert np.abs(shares[sizes >= 100] - global_shares).max() < 0.15


# --- bounded retries ----------------------------------------------------------------------


def test_tiny_alpha_with_many_clients_fails_fast_with_user_error():
    labels = np.repeat(np.arange(NUM_CLASSES), 100)
    spec = PartitionSpec(scheme="dirichlet", num_clients=100, alpha=0.01, min_partition_size=10)
    start = time.perf_counter()
    with pytest.raises(UserError, match="alpha") as raised:
        partition_indices(labels, spec, NUM_CLASSES)
    assert time.perf_counter() - start < 5
    assert "\n" not in str(raised.value)


def test_dirichlet_retries_with_a_derived_seed():
    # For this fixture, flwr gives up with seed 0 but succeeds with seed 1000.
    spec = spec_for("dirichlet", num_clients=35, alpha=0.3, min_partition_size=10, max_retries=1)
    with pytest.raises(UserError):
        partition_indices(BALANCED_LABELS, spec, NUM_CLASSES)
    parts = partition_indices(
        BALANCED_LABELS,
        spec_for("dirichlet", num_clients=35, alpha=0.3, min_partition_size=10, max_retries=2),
        NUM_CLASSES,
    )
    assert min(len(part) for part in parts) >= 10


def test_no_flwr_warnings_leak_from_retries():
    spec = spec_for("dirichlet", num_clients=35, alpha=0.3, min_partition_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        partition_indices(BALANCED_LABELS, spec, NUM_CLASSES)


def test_quantity_impossible_sizes_give_user_error():
    spec = spec_for("quantity", num_clients=50, quantity_alpha=0.01, min_partition_size=20)
    with pytest.raises(UserError, match="quantity_alpha"):
        partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)


# --- long tail ----------------------------------------------------------------------------


def test_long_tail_profile_if_10():
    labels = np.repeat(np.arange(NUM_CLASSES), 500)
    kept = long_tail_indices(labels, 10.0, seed=0)
    kept_counts = np.bincount(labels[kept], minlength=NUM_CLASSES).tolist()
    assert kept_counts == [math.floor(500 * 10 ** (-c / 9)) for c in range(NUM_CLASSES)]
    assert kept_counts[0] == 500 and kept_counts[-1] == 50
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)


def test_long_tail_is_seeded_and_if_1_keeps_everything():
    labels = np.repeat(np.arange(NUM_CLASSES), 500)
    assert np.array_equal(long_tail_indices(labels, 10.0, 3), long_tail_indices(labels, 10.0, 3))
    assert not np.array_equal(long_tail_indices(labels, 10.0, 3), long_tail_indices(labels, 10.0, 4))
    assert np.array_equal(long_tail_indices(labels, 1.0, 0), np.arange(len(labels)))


def test_partition_applies_long_tail_before_splitting():
    labels = np.repeat(np.arange(NUM_CLASSES), 500)
    table = counts(labels, spec_for("iid", imbalance_factor=10.0))
    assert table.sum(axis=0).tolist() == [math.floor(500 * 10 ** (-c / 9)) for c in range(10)]


def test_long_tail_too_steep_for_smallest_class_is_user_error():
    with pytest.raises(UserError, match="imbalance_factor"):
        long_tail_indices(np.repeat(np.arange(NUM_CLASSES), 5), 100.0, seed=0)


# --- impossible values -----------------------------------------------------------------------

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_POSITIVE = st.floats(max_value=0.0, allow_nan=False) | NON_FINITE
BAD_VALUES = st.one_of(
    st.tuples(st.just("alpha"), NOT_POSITIVE),
    st.tuples(st.just("quantity_alpha"), NOT_POSITIVE),
    st.tuples(st.just("imbalance_factor"), st.floats(max_value=0.999999, allow_nan=False) | NON_FINITE),
    st.tuples(st.just("num_clients"), st.integers(max_value=0) | st.integers(min_value=1004)),
    st.tuples(st.just("num_clients"), st.floats(allow_nan=True)),
    st.tuples(st.just("classes_per_client"), st.integers(max_value=0) | st.integers(min_value=11)),
    st.tuples(st.just("shards_per_client"), st.integers(max_value=0)),
    st.tuples(st.just("min_partition_size"), st.integers(max_value=0)),
    st.tuples(st.just("max_retries"), st.integers(max_value=0)),
    st.tuples(st.just("seed"), st.integers(max_value=-1)),
    st.tuples(st.just("scheme"), st.text().filter(lambda name: name not in SCHEMES)),
    st.tuples(st.just("class_assignment"), st.text().filter(lambda name: name not in CLASS_ASSIGNMENTS)),
)


@given(bad=BAD_VALUES, scheme=st.sampled_from(SCHEMES))
@settings(max_examples=300, deadline=None)
def test_every_bad_value_is_a_one_line_user_error(bad, scheme):
    field, value = bad
    if field == "classes_per_client":
        scheme = "pathological"  # only that scheme needs classes_per_client <= C
    spec = PartitionSpec(**{"scheme": scheme, field: value})
    with pytest.raises(UserError) as raised:
        partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)
    message = str(raised.value)
    assert message and "\n" not in message


@pytest.mark.parametrize(
    "spec",
    [
        PartitionSpec(scheme="pathological", num_clients=4, classes_per_client=2),  # 8 < 10 classes
        PartitionSpec(scheme="dirichlet", num_clients=200, min_partition_size=10),  # 2000 > 1003
        PartitionSpec(scheme="shards", num_clients=400, shards_per_client=3),  # 1200 > 1003
        PartitionSpec(scheme="iid", num_clients=1004),
        PartitionSpec(scheme="iid", num_clients=1000, imbalance_factor=10.0),  # too few after tail
    ],
)
def test_infeasible_combinations_are_user_errors(spec):
    with pytest.raises(UserError):
        partition_indices(UNEVEN_LABELS, spec, NUM_CLASSES)


@pytest.mark.parametrize(
    "labels", [np.array([0, 1, 10]), np.array([-1, 0, 1]), np.zeros((2, 2), int), np.array([0.5])]
)
def test_bad_labels_are_user_errors(labels):
    with pytest.raises(UserError):
        partition_indices(labels, PartitionSpec(scheme="iid", num_clients=1), NUM_CLASSES)


# --- count tables ------------------------------------------------------------------------------

CLASS_NAMES = [f"class{c}" for c in range(NUM_CLASSES)]


def test_class_count_table_counts_per_client():
    parts = [np.array([0, 1, 100]), np.array([999])]
    table = class_count_table(BALANCED_LABELS, parts, NUM_CLASSES)
    assert table.dtype == np.int64 and table.shape == (2, NUM_CLASSES)
    assert table[0].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert table[1].tolist() == [0] * 9 + [1]


def test_format_count_table_has_row_and_column_totals():
    table = np.array([[3, 0], [1, 6]])
    lines = format_count_table(table, ["cat", "dog"]).splitlines()
    assert lines[0].split() == ["client", "cat", "dog", "total"]
    assert lines[1].split() == ["0", "3", "0", "3"]
    assert lines[2].split() == ["1", "1", "6", "7"]
    assert lines[3].split() == ["total", "4", "6", "10"]


def test_csv_has_class_header_and_one_row_per_client(tmp_path):
    table = counts(BALANCED_LABELS, spec_for("dirichlet"))
    path = tmp_path / "out" / "counts.csv"
    save_count_table_csv(table, CLASS_NAMES, path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["client", *CLASS_NAMES]
    assert len(rows) == 1 + 5
    assert [[int(cell) for cell in row] for row in rows[1:]] == [[i, *table[i]] for i in range(5)]


@pytest.mark.parametrize("num_clients", [5, 150])  # annotated; too big to annotate or label
def test_heatmap_png_is_written(tmp_path, num_clients):
    table = counts(UNEVEN_LABELS, spec_for("iid", num_clients=num_clients))
    path = tmp_path / "heatmap.png"
    save_partition_heatmap(table, CLASS_NAMES, path, title="iid")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_table_and_names_must_match():
    with pytest.raises(ValueError):
        format_count_table(np.zeros((2, 3), dtype=np.int64), ["a", "b"])


# --- speed -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_50k_labels_10_clients_under_2_seconds(scheme):
    labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=50_000)
    start = time.perf_counter()
    parts = partition_indices(labels, PartitionSpec(scheme=scheme, num_clients=10), NUM_CLASSES)
    assert time.perf_counter() - start < 2
    assert len(parts) == 10
