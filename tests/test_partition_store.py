"""The partition store (data/partition/store.py): a run partitions once; its other processes read the result."""

import dataclasses
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from semanticfl.data.partition import PartitionSpec, schemes
from semanticfl.data.partition.store import partition_indices, partition_key

LABELS = np.repeat(np.arange(10), 60)
SPEC = PartitionSpec(scheme="dirichlet", num_clients=6, alpha=0.5, seed=3)


def stored_file(cache):
    (path,) = (cache / "partitions").glob("*.npz")
    return path


def refuse_to_partition(monkeypatch):
    def refuse(*args):
        raise AssertionError("partitioned again instead of reading the cache")

    monkeypatch.setattr(schemes, "partition_indices", refuse)


def test_a_cached_partition_is_the_computed_one_and_is_read_back_without_partitioning(tmp_path, monkeypatch):
    computed = schemes.partition_indices(LABELS, SPEC, 10)
    first = partition_indices(LABELS, SPEC, 10, tmp_path)
    refuse_to_partition(monkeypatch)
    again = partition_indices(LABELS, SPEC, 10, tmp_path)
    for parts in (first, again):
        assert len(parts) == 6
        for part, expected in zip(parts, computed, strict=True):
            assert part.dtype == np.int64
            np.testing.assert_array_equal(part, expected)


@pytest.mark.parametrize("change", [
    {"seed": 4}, {"alpha": 0.3}, {"num_clients": 5}, {"scheme": "iid"}, {"min_partition_size": 1},
])
def test_every_setting_that_decides_the_partition_changes_the_key(change):
    assert partition_key(LABELS, dataclasses.replace(SPEC, **change), 10) != partition_key(LABELS, SPEC, 10)


def test_the_labels_and_the_class_count_change_the_key():
    swapped = LABELS.copy()
    swapped[[0, -1]] = swapped[[-1, 0]]
    assert partition_key(swapped, SPEC, 10) != partition_key(LABELS, SPEC, 10)
    assert partition_key(LABELS, SPEC, 11) != partition_key(LABELS, SPEC, 10)
    assert partition_key(LABELS.astype(np.int32), SPEC, 10) != partition_key(LABELS, SPEC, 10)


@pytest.mark.parametrize("damage", ["truncated", "overlapping parts", "index out of range"])
def test_a_damaged_cache_file_is_recomputed_and_rewritten(tmp_path, caplog, monkeypatch, damage):
    expected = partition_indices(LABELS, SPEC, 10, tmp_path)
    path = stored_file(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        indices = np.concatenate(expected)
        indices[1] = indices[0] if damage == "overlapping parts" else len(LABELS)
        np.savez(path, indices=indices, offsets=np.cumsum([0, *map(len, expected)]))
    with caplog.at_level(logging.WARNING):
        parts = partition_indices(LABELS, SPEC, 10, tmp_path)
    assert "recomputing the partition cached in" in caplog.text
    for part, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(part, want)
    refuse_to_partition(monkeypatch)  # the rewritten file is read back
    assert [len(p) for p in partition_indices(LABELS, SPEC, 10, tmp_path)] == [len(p) for p in expected]


def test_an_unwritable_cache_only_costs_the_recomputation(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        parts = partition_indices(LABELS, SPEC, 10, blocked)
    assert "could not cache the partition" in caplog.text
    assert sum(len(p) for p in parts) == len(LABELS)


def test_a_process_that_reads_its_partition_from_the_cache_never_imports_flwr_datasets(tmp_path):
    partition_indices(LABELS, SPEC, 10, tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import numpy as np
        import semanticfl.engine.client
        from semanticfl.data.partition import PartitionSpec, partition_indices
        parts = partition_indices(np.repeat(np.arange(10), 60), PartitionSpec(scheme="dirichlet", num_clients=6,
                                  alpha=0.5, seed=3), 10, Path({str(tmp_path)!r}))
        print(len(parts), sorted(m for m in ("flwr_datasets", "datasets") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "6 []"
