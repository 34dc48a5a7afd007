"""Per-round checkpoints: global model + algorithm server state, checksummed, atomic.

The verified format (:mod:`semanticfl.verified`) also stores clients' persistent algorithm state
(see :mod:`semanticfl.engine.client_state`).

A checkpoint is one safetensors file ``checkpoints/round-XXXX.safetensors``. Its metadata
holds the round and a SHA-256 over every array, so a truncated or corrupted file is
detected on load and :func:`load_latest_checkpoint` falls back to the previous one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from semanticfl.algorithms.base import Arrays
from semanticfl.verified import read_verified, write_verified

log = logging.getLogger(__name__)

_GLOBAL, _SERVER = "global/", "server/"


@dataclass
class Checkpoint:
    round: int
    global_arrays: Arrays
    server_state: Arrays
    path: Path


def checkpoint_path(folder: Path, round_number: int) -> Path:
    return folder / f"round-{round_number:04d}.safetensors"


def save_checkpoint(
    folder: Path, round_number: int, global_arrays: Arrays, server_state: Arrays, keep: int
) -> Path:
    """Atomically write round ``round_number``'s checkpoint; keep the newest ``keep`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {_GLOBAL + k: v for k, v in global_arrays.items()}
    tensors.update({_SERVER + k: v for k, v in server_state.items()})
    path = checkpoint_path(folder, round_number)
    write_verified(path, tensors, {"round": str(round_number)})
    for old in sorted(folder.glob("round-*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint; raises ``ValueError`` if it is damaged."""
    tensors, metadata = read_verified(path)
    return Checkpoint(
        round=int(metadata["round"]),
        global_arrays={k[len(_GLOBAL) :]: v for k, v in tensors.items() if k.startswith(_GLOBAL)},
        server_state={k[len(_SERVER) :]: v for k, v in tensors.items() if k.startswith(_SERVER)},
        path=path,
    )


def load_latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    for path in sorted(folder.glob("round-*.safetensors"), reverse=True):
        try:
            return load_checkpoint(path)
        except ValueError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
    return None
