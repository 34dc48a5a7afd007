"""What leaves a client, per algorithm, measured from audited runs: a Markdown table.

Usage: ``python scripts/audit_table.py RUNS_OR_COMPARISON_FOLDER...`` -- every run directory under
the folders given that has a ``messages.jsonl`` (runs made with ``engine.audit=true``, e.g. by
``semanticfl compare ... engine.audit=true``) gives one row: the records and arrays of its clients'
train replies, and the bytes per client per round (payload from metrics.jsonl, serialised arrays
from the audit).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from semanticfl.config import config_from_dict
from semanticfl.engine.audit import array_bytes, read_audit
from semanticfl.engine.experiment import Experiment

HEADER = (
    "| algorithm | declared uploads | model arrays | extra arrays (shape) | metrics beyond the common ones "
    "| up: payload (B/client/round) | up: serialised | down: payload |\n"
    "|---|---|---:|---|---|---:|---:|---:|"
)
COMMON_METRICS = {"fit_time_s", "local_steps", "num_examples", "partition_id", "train_accuracy", "train_loss"}


def audit_row(run_dir: Path) -> str:
    """One table row for an audited run directory (extras and metric keys over all its clients; the
    declared uploads of the algorithm as configured, e.g. SemanticFL's depend on its mode)."""
    experiment = Experiment(config_from_dict(tomllib.loads((run_dir / "config.toml").read_text())))
    algorithm = experiment.config.algorithm.name
    train = [m for m in read_audit(run_dir / "messages.jsonl") if m["type"] == "train" and "records" in m]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = train[0]["records"]
    extras = {k: a for m in train for k, a in m["records"].get("extra", {}).get("arrays", {}).items()}
    extra_text = describe_extras(extras, records.get("model", {}).get("arrays", {}))
    metrics = sorted({k for m in train for k in m["records"].get("metrics", {}).get("keys", [])} - COMMON_METRICS)
    up = sum(r["bytes_up_per_client"] for r in rounds) / len(rounds)
    down = sum(r["bytes_down_per_client"] for r in rounds) / len(rounds)
    wire = sum(array_bytes(m) for m in train) / len(train)
    return (
        f"| `{algorithm}` | {', '.join(experiment.algorithm.uploads)} "
        f"| {len(records.get('model', {}).get('arrays', {}))} | {extra_text} | {', '.join(metrics) or '—'} "
        f"| {up:,.0f} | {wire:,.0f} | {down:,.0f} |"
    )


def describe_extras(extras: dict, model: dict) -> str:
    """Extra arrays with their shapes; those that mirror model arrays (names and shapes) in one phrase."""
    mirrored = [k for k, a in extras.items() if k in model and model[k]["shape"] == a["shape"]]
    own = [f"`{k}` {tuple(a['shape'])}" for k, a in extras.items() if k not in mirrored]
    if mirrored:
        own.insert(0, f"{len(mirrored)} arrays named and shaped like model arrays")
    return ", ".join(own) or "—"


def main(folders: list[str]) -> None:
    print(HEADER)
    for folder in folders:
        for audit in sorted(Path(folder).rglob("messages.jsonl")):
            print(audit_row(audit.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
