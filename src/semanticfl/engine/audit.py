"""The message audit: what every client sent, record by record, written to ``messages.jsonl``.

With ``engine.audit = true`` the server wraps its Flower ``Grid`` so that every reply a client
sends is described -- message type, sender, and for each record its kind and contents (array
names, shapes, dtypes, bytes; metric and config keys) -- before the server reads it. Tests check
these lines against an algorithm's declared uploads; researchers can check their own runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord


def describe_record(record: Any) -> dict[str, Any]:
    """Kind and contents of one record, without its values (except a metric's numbers)."""
    if isinstance(record, ArrayRecord):
        arrays = {
            name: {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": len(array.data)}
            for name, array in record.items()
        }
        return {"kind": "arrays", "arrays": arrays}
    if isinstance(record, MetricRecord):
        lists = {key: len(value) for key, value in record.items() if isinstance(value, list)}
        return {"kind": "metrics", "keys": sorted(record.keys()), "list_lengths": lists}
    if isinstance(record, ConfigRecord):
        return {"kind": "config", "keys": sorted(record.keys())}
    return {"kind": type(record).__name__}


def describe_message(message: Message) -> dict[str, Any]:
    """One audit line for a client's reply."""
    line: dict[str, Any] = {
        "type": message.metadata.message_type,
        "src_node_id": message.metadata.src_node_id,
    }
    if message.has_error():
        line["error"] = message.error.reason
        return line
    line["records"] = {name: describe_record(record) for name, record in message.content.items()}
    return line


class AuditingGrid:
    """A ``Grid`` that appends a description of every reply to ``path`` (JSON lines)."""

    def __init__(self, grid: Any, path: Path) -> None:
        self.grid = grid
        self.path = path

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies, one poll at a time (every exchange polls through
        :func:`~semanticfl.engine.exchanges.send_and_match`)."""
        return self._logged(self.grid.pull_messages(message_ids))

    def _logged(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        with self.path.open("a") as log:
            for reply in replies:
                log.write(json.dumps(describe_message(reply)) + "\n")
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def array_bytes(line: dict[str, Any]) -> int:
    """Bytes of every array one audited reply carried (what the wire carries, less framing)."""
    return sum(
        array["bytes"]
        for record in line.get("records", {}).values()
        if record["kind"] == "arrays"
        for array in record["arrays"].values()
    )
