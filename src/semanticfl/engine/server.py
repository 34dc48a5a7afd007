"""The server loop, run inside a Flower ServerApp on either engine.

One round (McMahan et al., 2017, Alg. 1): sample clients from a seeded RNG, send them the
global model (plus the algorithm's payload), collect their updates through Flower's
:class:`~flwr.serverapp.Grid`, drop failed or non-finite ones, let the algorithm aggregate,
evaluate centrally, log, checkpoint. Everything random is a function of (seed, round,
client), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from semanticfl.algorithms.base import Arrays, ClientUpdate, OwnsModelsAndData, load_arrays
from semanticfl.config import clients_per_round
from semanticfl.engine import exchanges, records
from semanticfl.engine.audit import AuditingGrid
from semanticfl.engine.checkpoint import load_latest_checkpoint, save_checkpoint
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.outputs import RunDirectory, plot_accuracy, run_setting, summarize
from semanticfl.engine.progress import RoundReporter
from semanticfl.engine.simulation import parallel_clients
from semanticfl.errors import RunAborted, UserError
from semanticfl.models import state_to_numpy
from semanticfl.seeding import Stream, derive_seed

log = logging.getLogger("semanticfl")

DISCOVERY_TIMEOUT_S = 120.0
"""The least time nodes get to connect and answer the first query: a cold node starts its
workers and decodes its data first, which a short ``train.client_timeout_s`` must not cut off."""


@dataclass
class RoundOutcome:
    """What came back from the clients of one round."""

    updates: dict[int, ClientUpdate] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    fit_time: dict[int, float] = field(default_factory=dict)


def sample_clients(seed: int, round_number: int, num_clients: int, fraction: float) -> list[int]:
    """The round's participants: ``ceil(fraction · N)`` partition ids, seeded by the round."""
    count = clients_per_round(fraction, num_clients)
    rng = np.random.default_rng(derive_seed(seed, round_number, Stream.CLIENT_SAMPLING))
    return sorted(int(i) for i in rng.choice(num_clients, size=count, replace=False))


AUDIT_FILE = "messages.jsonl"


class FederatedServer:
    """Runs the rounds of one experiment over a Flower Grid."""

    def __init__(self, experiment: Experiment, run_dir: RunDirectory, config_toml: str) -> None:
        self.experiment = experiment
        self.config = experiment.config
        self.run_dir = run_dir
        self.config_toml = config_toml
        self.algorithm = experiment.algorithm
        anchors = self.algorithm.teacher_requests().anchors
        if anchors:
            self.algorithm.receive_anchors(experiment.teacher_targets.anchors(anchors))
        self.eval_model = experiment.build_model()
        self.global_arrays: Arrays = state_to_numpy(self.eval_model)
        self.rounds: list[dict[str, Any]] = []
        self.start_round = 1
        self.one_time = exchanges.OneTimeStats()
        simulated = self.config.engine.backend == "simulation"
        self.client_state_dir = str(run_dir.path.resolve() / "client-state") if simulated else ""

    # ------------------------------------------------------------------ resume

    def restore(self) -> None:
        """Continue from the newest valid checkpoint, cutting metrics back to it."""
        checkpoint = load_latest_checkpoint(self.run_dir.checkpoints)
        history = self.run_dir.read_rounds()
        if checkpoint is None:
            log.warning("no usable checkpoint in %s: starting from round 1", self.run_dir.path)
            self.rounds = []
        else:
            self.global_arrays = checkpoint.global_arrays
            self.algorithm.load_server_state(checkpoint.server_state)
            self.rounds = [r for r in history if r["round"] <= checkpoint.round]
            self.start_round = checkpoint.round + 1
        self.run_dir.rewrite_rounds(self.rounds)

    # ------------------------------------------------------------------ the loop

    def run(self, grid: Grid, until_round: int | None = None) -> dict[str, Any]:
        """Rounds from the start (or checkpoint) to ``train.rounds``, or to ``until_round``."""
        total = self.config.train.rounds
        last = min(total, until_round or total)
        if self.start_round > last:
            return self.finish()
        if self.config.engine.audit:
            grid = AuditingGrid(grid, self.run_dir.path / AUDIT_FILE)
        nodes = self.discover_nodes(grid)
        self.run_one_time_exchanges(grid, nodes)
        with RoundReporter(total, self.start_round, self.config.experiment.name) as reporter:
            for round_number in range(self.start_round, last + 1):
                record = self.run_round(grid, nodes, round_number)
                self.rounds.append(record)
                self.run_dir.append_round(record, self.rounds)
                save_checkpoint(
                    self.run_dir.checkpoints,
                    round_number,
                    self.global_arrays,
                    self.algorithm.server_state(),
                    self.config.engine.keep_checkpoints,
                )
                reporter.round_done(record)
        return self.finish()

    def run_one_time_exchanges(self, grid: Grid, nodes: dict[int, int]) -> None:
        """Before the first round (of this process): SemanticFL's offload and the guidance sets."""
        timeout, content = self.config.train.client_timeout_s, lambda: self._content(0)
        requests = self.algorithm.teacher_requests()
        if requests.offload:
            targets = self.experiment.teacher_targets

            def features_of(noised: Arrays) -> Arrays:
                return targets.features_of_noised(requests.offload, noised)

            exchanges.offload(grid, nodes, content, features_of, timeout, self.one_time)
        if requests.guidance:
            guidance = self.experiment.guidance_arrays
            exchanges.send_guidance(grid, nodes, content, guidance, timeout, self.one_time)

    def run_round(self, grid: Grid, nodes: dict[int, int], round_number: int) -> dict[str, Any]:
        started = time.perf_counter()
        t = self.config.train
        selected = sample_clients(
            self.config.experiment.seed, round_number, self.config.partition.num_clients, t.fraction_fit
        )
        outcome = self.train_clients(grid, nodes, selected, round_number)
        for partition_id, reason in sorted(outcome.failures.items()):
            log.warning("round %d: client %d excluded: %s", round_number, partition_id, reason)
        if len(outcome.updates) < t.min_clients:
            raise RunAborted(
                f"round {round_number}: only {len(outcome.updates)} of {len(selected)} clients "
                f"returned a usable update (train.min_clients={t.min_clients}); the run stopped, "
                f"resume it with: semanticfl run --resume {self.run_dir.path}"
            )
        ordered = [outcome.updates[p] for p in sorted(outcome.updates)]
        self.global_arrays = self.algorithm.aggregate(self.global_arrays, ordered, round_number)
        record = self.round_record(round_number, selected, outcome)
        record.update(self.algorithm.round_metrics(ordered))
        record.update(self.central_evaluation(round_number))
        if self.config.eval.federated:
            record.update(self.federated_evaluation(grid, nodes, round_number))
        record["round_time_s"] = time.perf_counter() - started
        previous = self.rounds[-1]["elapsed_s"] if self.rounds else 0.0
        record["elapsed_s"] = previous + record["round_time_s"]
        return record

    # ------------------------------------------------------------------ communication

    def discover_nodes(self, grid: Grid) -> dict[int, int]:
        """Ask every connected node for its partition id; returns partition id → node id."""
        wanted = self.config.partition.num_clients
        timeout = max(self.config.train.client_timeout_s, DISCOVERY_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < wanted and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        messages = {
            node: Message(self._content(round_number=0), dst_node_id=node, message_type="query")
            for node in node_ids
        }
        replies = exchanges.send_and_match(grid, messages, timeout)
        for node, reason in sorted(replies.errors.items()):
            log.warning("node %s failed to identify: %s", node, reason)
        nodes: dict[int, int] = {}
        for node, reply in replies.ok.items():
            partition_id = int(reply.content[records.METRICS]["partition_id"])
            if partition_id in nodes:
                raise UserError(f"two nodes claim partition-id {partition_id}; give each SuperNode its own")
            nodes[partition_id] = node
        if len(nodes) < self.config.train.min_clients:
            raise RunAborted(
                f"only {len(nodes)} client nodes answered (train.min_clients="
                f"{self.config.train.min_clients}); start more SuperNodes"
            )
        missing = sorted(set(range(wanted)) - set(nodes))
        if missing:
            log.warning("no node holds partitions %s; they will count as failed clients", missing)
        return nodes

    def _content(
        self, round_number: int, model: ArrayRecord | None = None, payload: ArrayRecord | None = None
    ) -> RecordDict:
        """A message body: the config (always), the global model and payload (if given)."""
        config = {"round": round_number, "experiment": self.config_toml, "state-dir": self.client_state_dir}
        content = RecordDict({records.CONFIG: ConfigRecord(config)})
        if model is not None:
            content[records.MODEL] = model
            content[records.PAYLOAD] = payload if payload is not None else ArrayRecord()
        return content

    def train_clients(
        self, grid: Grid, nodes: dict[int, int], selected: list[int], round_number: int
    ) -> RoundOutcome:
        outcome = RoundOutcome()
        payload = self.algorithm.server_payload(self.global_arrays, round_number)
        down = records.nbytes(self.global_arrays) + records.nbytes(payload)
        model_record, payload_record = records.to_record(self.global_arrays), records.to_record(payload)
        messages = {}
        for partition_id in selected:
            if partition_id not in nodes:
                outcome.failures[partition_id] = "no node holds this partition"
                continue
            content = self._content(round_number, model_record, payload_record)
            messages[partition_id] = Message(content, dst_node_id=nodes[partition_id], message_type="train")
            outcome.bytes_down[partition_id] = down
        timeout = self.config.train.client_timeout_s
        replies = exchanges.send_and_match(grid, messages, timeout, self.dispatch_waves(list(messages)))
        for partition_id, reply in replies.ok.items():
            self._accept_reply(reply, partition_id, outcome)
        for partition_id, reason in replies.errors.items():
            outcome.failures[partition_id] = f"raised: {error_summary(reason)}"
        for partition_id in replies.silent:
            outcome.failures[partition_id] = f"no reply within train.client_timeout_s={timeout}"
        return outcome

    def dispatch_waves(self, partition_ids: list[int]) -> list[list[int]] | None:
        """Simulation with ``engine.longest_first``: the round's clients largest first, in waves of the
        parallel workers; otherwise (deployment: a machine per node; an algorithm with its own data) ``None``."""
        engine = self.config.engine
        own_data = isinstance(self.algorithm, OwnsModelsAndData)
        if engine.backend != "simulation" or not engine.longest_first or own_data:
            return None
        sizes = {p: len(self.experiment.partitions[p]) for p in partition_ids}
        return exchanges.longest_first_waves(sizes, parallel_clients(engine))

    @staticmethod
    def _accept_reply(reply: Message, partition_id: int, outcome: RoundOutcome) -> None:
        arrays = records.from_record(reply.content[records.MODEL])
        extra = records.from_record(reply.content[records.EXTRA])
        if not (records.all_finite(arrays) and records.all_finite(extra)):
            outcome.failures[partition_id] = "returned NaN/Inf values"
            return
        metrics = dict(reply.content[records.METRICS])
        outcome.updates[partition_id] = ClientUpdate(
            arrays=arrays,
            num_examples=int(metrics.pop("num_examples")),
            metrics={k: float(v) for k, v in metrics.items()},
            extra=extra,
            client_id=partition_id,
        )
        outcome.bytes_up[partition_id] = records.nbytes(arrays) + records.nbytes(extra)
        outcome.fit_time[partition_id] = float(metrics.get("fit_time_s", 0.0))

    # ------------------------------------------------------------------ evaluation and records

    def central_evaluation(self, round_number: int) -> dict[str, Any]:
        e = self.config.eval
        if not e.central or (round_number % e.every and round_number != self.config.train.rounds):
            return {"test_accuracy": None, "test_loss": None}
        load_arrays(self.eval_model, self.global_arrays)
        if isinstance(self.algorithm, OwnsModelsAndData):
            with server_threads():
                own = self.algorithm.central_evaluation(self.eval_model)
            return {"test_accuracy": None, "test_loss": None, **own}
        transform = self.experiment.eval_transform()
        device = self.config.engine.device
        with server_threads():
            images, labels = self.experiment.test_tensors
            test = self.algorithm.evaluate(
                self.eval_model, images, labels, lambda x: transform(x, None), e.batch_size, device
            )
            result = {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}
            if len(self.experiment.holdout_indices):
                images, labels = self.experiment.validation_tensors
                val = self.algorithm.evaluate(
                    self.eval_model, images, labels, lambda x: transform(x, None), e.batch_size, device
                )
                result.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
        return result

    def federated_evaluation(self, grid: Grid, nodes: dict[int, int], round_number: int) -> dict[str, Any]:
        """Mean accuracy of the global model on sampled clients' local data."""
        selected = sample_clients(
            self.config.experiment.seed + 1,
            round_number,
            self.config.partition.num_clients,
            self.config.eval.fraction_evaluate,
        )
        model_record = records.to_record(self.global_arrays)
        messages = {
            p: Message(self._content(round_number, model_record), dst_node_id=nodes[p], message_type="evaluate")
            for p in selected
            if p in nodes
        }
        replies = exchanges.send_and_match(grid, messages, self.config.train.client_timeout_s)
        results = [dict(reply.content[records.METRICS]) for reply in replies.ok.values()]
        total = sum(r["num_examples"] for r in results)
        if not total:
            return {"federated_accuracy": None}
        return {"federated_accuracy": sum(r["accuracy"] * r["num_examples"] for r in results) / total}

    def round_record(self, round_number: int, selected: list[int], outcome: RoundOutcome) -> dict[str, Any]:
        updates = outcome.updates
        n = sum(u.num_examples for u in updates.values())
        clients = [
            {
                "id": pid,
                "num_examples": u.num_examples,
                "train_loss": u.metrics.get("train_loss"),
                "train_accuracy": u.metrics.get("train_accuracy"),
                "local_steps": u.metrics.get("local_steps"),
                "fit_time_s": outcome.fit_time[pid],
                "bytes_down": outcome.bytes_down[pid],
                "bytes_up": outcome.bytes_up[pid],
            }
            for pid, u in sorted(updates.items())
        ]
        return {
            "round": round_number,
            "selected": selected,
            "clients": len(updates),
            "failed_clients": len(outcome.failures),
            "failures": {str(k): v for k, v in sorted(outcome.failures.items())},
            "train_loss": sum(u.metrics["train_loss"] * u.num_examples for u in updates.values()) / n,
            "train_accuracy": sum(u.metrics["train_accuracy"] * u.num_examples for u in updates.values()) / n,
            "bytes_down_per_client": float(np.mean([c["bytes_down"] for c in clients])),
            "bytes_up_per_client": float(np.mean([c["bytes_up"] for c in clients])),
            "client_metrics": clients,
        }

    def finish(self) -> dict[str, Any]:
        summary = {
            "experiment": self.config.experiment.name,
            "algorithm": self.config.algorithm.name,
            "dataset": self.config.data.dataset,
            "run_dir": str(self.run_dir.path),
            "complete": len(self.rounds) == self.config.train.rounds,
            **summarize(self.rounds, self.config.eval.target_accuracy),
            **self.one_time.summary(),
            **self.algorithm.summary(self.rounds),
        }
        self.run_dir.write_summary(summary)
        plot_accuracy(
            {self.config.algorithm.name: self.rounds},
            self.run_dir.file("accuracy.png"),
            f"{self.config.experiment.name}: {self.config.data.dataset}",
            run_setting(self.config),
        )
        return summary


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_summary(reason: str, limit: int = 200) -> str:
    """One line of a client's error report: Flower's "Message: ..." part (the exception's own
    text) or the last line of the traceback, without terminal colours, at most ``limit`` chars."""
    text = _ANSI.sub("", reason)
    lines = [line.strip(" '>") for line in text.splitlines() if line.strip(" '>")]
    messages = [line.split("Message:", 1)[1].strip() for line in lines if "Message:" in line]
    summary = (messages or lines or ["unknown error"])[-1]
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"


@contextlib.contextmanager
def server_threads() -> Iterator[None]:
    """Give server-side evaluation every core while clients are idle between rounds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
