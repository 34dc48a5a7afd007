"""Clients' persistent algorithm state (SCAFFOLD's c_i, MOON's previous model, FedDyn's g_k).

During a run the state lives in the node's Flower :class:`~flwr.app.Context`. So that a run
resumed after a crash continues exactly, every update is also written to local disk, one
verified file per (client, round): ``<state-dir>/client-XXXX/round-XXXX.safetensors``. A
client starting round ``r`` uses the newest state written *before* round ``r``: the
Context's if it is older than ``r``, else the newest such file on disk (after a resume the
Context is empty, or newer than the round being redone).

Where it is written: in simulation, ``<run dir>/client-state`` (sent by the server, same
machine); under the Deployment Engine, the SuperNode's ``--node-config state-dir=...``
(without it, state survives only as long as the SuperNode process).
"""

from __future__ import annotations

import logging
from pathlib import Path

from semanticfl.algorithms.base import Arrays
from semanticfl.verified import read_verified, write_verified

log = logging.getLogger(__name__)


class ClientStateStore:
    """Per-client, per-round state files in one folder."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def _client_folder(self, partition_id: int) -> Path:
        return self.folder / f"client-{partition_id:04d}"

    def save(self, partition_id: int, round_number: int, state: Arrays) -> None:
        folder = self._client_folder(partition_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_verified(folder / f"round-{round_number:04d}.safetensors", state, {"round": str(round_number)})
        for old in sorted(folder.glob("round-*.safetensors"))[: -self.keep]:
            old.unlink(missing_ok=True)

    def load_before(self, partition_id: int, round_number: int) -> Arrays:
        """The newest verified state written before ``round_number`` (empty if none)."""
        for path in sorted(self._client_folder(partition_id).glob("round-*.safetensors"), reverse=True):
            if int(path.stem.split("-")[1]) >= round_number:
                continue
            try:
                return read_verified(path)[0]
            except ValueError as exc:
                log.warning("client %d: skipping damaged state file: %s", partition_id, exc)
        return {}
