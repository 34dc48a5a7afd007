"""Partitions kept on disk, so that a run partitions its data once, not once per process.

A run's command partitions the data before it starts any client (bad settings stop there), and writes
each client's indices to ``<cache>/partitions/<key>.npz``. Every client process of the run -- each
simulation actor, each SuperNode on a machine sharing the cache -- then reads its indices from there and
never imports flwr-datasets, which with the ``datasets`` library and the plotting stack it pulls in is
half of a client process's start-up (``python benchmarks/run_timeline.py``).

The key is a SHA-256 over everything that decides the partition: the labels, every
:class:`PartitionSpec` field (the seed included), the number of classes, and the versions of
flwr-datasets, ``datasets`` and numpy. A missing, unreadable or inconsistent file is recomputed and
rewritten (atomically); a cache that cannot be written only costs the next process the recomputation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import one_line
from semanticfl.data.partition.spec import PartitionSpec
from semanticfl.files import atomic_write_bytes

log = logging.getLogger(__name__)

STORE_FORMAT = 1
LIBRARIES = ("flwr-datasets", "datasets", "numpy")


def partition_indices(
    labels: np.ndarray, spec: PartitionSpec, num_classes: int, cache: Path | None = None
) -> list[np.ndarray]:
    """Per client, sorted int64 indices into ``labels`` (:func:`schemes.partition_indices`), read from
    ``cache`` (a cache root, see :func:`semanticfl.data.cache.cache_root`) when it holds them and written
    there when it does not; ``cache=None`` always computes."""
    if cache is None:
        return _computed(labels, spec, num_classes)
    path = cache / "partitions" / f"{partition_key(labels, spec, num_classes)}.npz"
    parts = _read(path, spec.num_clients, len(labels))
    if parts is None:
        parts = _computed(labels, spec, num_classes)
        _write(path, parts)
    return parts


def partition_key(labels: np.ndarray, spec: PartitionSpec, num_classes: int) -> str:
    """SHA-256 (hex) over the store format, the library versions, the spec, the class count and the labels."""
    labels = np.ascontiguousarray(labels)
    header = {
        "format": STORE_FORMAT,
        "libraries": {name: version(name) for name in LIBRARIES},
        "spec": dataclasses.asdict(spec),
        "num_classes": num_classes,
        "labels": [str(labels.dtype), list(labels.shape)],
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(labels.tobytes())
    return digest.hexdigest()


def _computed(labels: np.ndarray, spec: PartitionSpec, num_classes: int) -> list[np.ndarray]:
    # Imported here, not at the top of the module: a process that finds its partition in the cache
    # never pays flwr-datasets' import (see the module docstring).
    from semanticfl.data.partition import schemes

    return schemes.partition_indices(labels, spec, num_classes)


def _read(path: Path, num_clients: int, num_samples: int) -> list[np.ndarray] | None:
    """The stored parts, or None if the file is absent or does not hold ``num_clients`` disjoint parts."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            indices, offsets = stored["indices"], stored["offsets"]
        if (
            indices.dtype != np.int64 or offsets.dtype != np.int64 or len(offsets) != num_clients + 1
            or offsets[0] != 0 or offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0)
            or (len(indices) and (indices.min() < 0 or indices.max() >= num_samples))
            or len(np.unique(indices)) != len(indices)
        ):
            raise ValueError("its parts do not match the partition settings")
        return [indices[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("recomputing the partition cached in %s: %s", path, one_line(error))
        return None


def _write(path: Path, parts: list[np.ndarray]) -> None:
    buffer = io.BytesIO()
    offsets = np.cumsum([0, *(len(part) for part in parts)], dtype=np.int64)
    indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    np.savez(buffer, indices=indices, offsets=offsets)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:
        log.warning("could not cache the partition in %s (%s); each process will partition again", path,
                    one_line(error))
