"""Checksummed array files (core): safetensors with a SHA-256 over every array, written atomically.

Checkpoints, clients' persistent state and fitted reducers are stored this way, so a truncated or
corrupted file is detected on load (``ValueError``) instead of being used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from semanticfl.files import atomic_write_bytes

Arrays = dict[str, np.ndarray]
"""Named arrays: a model state, a control variate, features... whatever crosses the wire."""
FORMAT = "semanticfl-checkpoint/1"


def contiguous(value: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return np.ascontiguousarray(value).reshape(np.shape(value))


def _digest(arrays: Arrays) -> str:
    sha = hashlib.sha256()
    for key in sorted(arrays):
        value = contiguous(arrays[key])
        sha.update(key.encode())
        sha.update(str(value.dtype).encode() + str(value.shape).encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def write_verified(path: Path, arrays: Arrays, metadata: dict[str, str]) -> None:
    """Atomically write ``arrays`` as safetensors with a SHA-256 over all of them."""
    tensors = {k: contiguous(v) for k, v in arrays.items()}
    header = {**metadata, "format": FORMAT, "sha256": _digest(tensors), "order": json.dumps(list(tensors))}
    atomic_write_bytes(path, save(tensors, metadata=header))


def read_verified(path: Path) -> tuple[Arrays, dict[str, str]]:
    """Arrays and metadata of a file :func:`write_verified` wrote; ``ValueError`` if damaged."""
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            order = json.loads(metadata.get("order", "[]"))
            tensors = {key: handle.get_tensor(key) for key in order}
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from None
    if metadata.get("format") != FORMAT or _digest(tensors) != metadata.get("sha256"):
        raise ValueError(f"{path} failed its checksum")
    return tensors, metadata
