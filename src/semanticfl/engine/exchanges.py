"""Server ⇄ client exchanges over a Flower Grid: one helper that matches replies, and the one-time
exchanges that run before the first round (and again when a run resumes).

:func:`send_and_match` sends one message per client and matches every reply to its client by the id
of the message it answers: an error the SuperLink writes for a lost node (node unavailable, message
expired) carries the SuperLink's node id, not the client's, so matching by sender would fail.

One-time exchanges, each with every discovered node:

* **offload** (SemanticFL ``offload``): the client encodes its images with the teacher's VAE, noises
  the latents to the request's timestep and replies with them (``query.offload``); the server runs the
  U-Net on them and sends back per-sample features (``query.offloaded``), which the client keeps in its
  node state. The clean latents and the images never leave the client.
* **guidance** (SemanticFL ``guidance``, ``datashare``): the server sends its guidance set -- images,
  labels and teacher features it built itself -- once (``query.guidance``); clients keep it in their
  node state. Nothing but an acknowledgement comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from semanticfl.algorithms.base import Arrays
from semanticfl.engine import records

log = logging.getLogger("semanticfl")

SEND_LATENTS, RECEIVE_FEATURES, RECEIVE_GUIDANCE = "query.offload", "query.offloaded", "query.guidance"
OFFLOADED_STATE, GUIDANCE_STATE = "offloaded-features", "guidance-set"


@dataclass
class Replies:
    """The outcome of one :func:`send_and_match`: replies, error reasons and the silent, per client."""

    ok: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    silent: list[int] = field(default_factory=list)


WAVE_GAP_S = 0.15
"""Pause between two waves of pushed messages: longer than the Simulation Engine's 0.1 s poll of its
in-memory SuperLink, so each wave reaches the client workers' queue before the next one."""
PULL_INTERVAL_S = 0.1


def send_and_match(
    grid: Grid, messages: dict[int, Message], timeout: float, waves: Sequence[Sequence[int]] | None = None
) -> Replies:
    """Send ``messages`` (client id → message), wait up to ``timeout`` s, match replies by message id.

    ``waves`` (lists of client ids) pushes the messages a wave at a time, :data:`WAVE_GAP_S` apart, so
    that the Simulation Engine, which queues what one poll finds in node order, starts them in that order
    (see :func:`longest_first_waves`); ``None`` pushes them all at once."""
    waves = [list(messages)] if waves is None else waves
    replies = _push_and_pull(grid, [[messages[key] for key in wave] for wave in waves], timeout)
    by_message = {message.metadata.message_id: key for key, message in messages.items()}
    outcome = Replies()
    for reply in replies:
        key = by_message[reply.metadata.reply_to_message_id]
        if reply.has_error():
            outcome.errors[key] = str(reply.error.reason)
        else:
            outcome.ok[key] = reply
    outcome.silent = sorted(set(messages) - set(outcome.ok) - set(outcome.errors))
    return outcome


def _push_and_pull(grid: Grid, waves: list[list[Message]], timeout: float) -> list[Message]:
    """Push each wave, then pull replies (as ``Grid.send_and_receive`` does, but polling through
    ``grid.pull_messages``, which a guarded or audited grid wraps) until all came or ``timeout``."""
    deadline = time.monotonic() + timeout
    pending: set[str] = set()
    replies: list[Message] = []
    for number, wave in enumerate(waves):
        if number:
            time.sleep(WAVE_GAP_S)
        pending.update(grid.push_messages(wave))
    while pending:
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(PULL_INTERVAL_S)
    return replies


def longest_first_waves(sizes: dict[int, int], parallel: int, max_waves: int = 8) -> list[list[int]]:
    """Client ids in waves of ``parallel``, the largest clients first (longest-processing-time-first
    scheduling: on ``parallel`` workers the round ends when the last client does, and starting the long
    ones first leaves only short ones to even out the workers' finish). The waves past ``max_waves`` are
    pushed together with the last one, so pushing never takes longer than ``(max_waves - 1) ×``
    :data:`WAVE_GAP_S`."""
    order = sorted(sizes, key=lambda key: (-sizes[key], key))
    waves = [order[start : start + parallel] for start in range(0, len(order), max(parallel, 1))]
    if len(waves) <= max_waves:
        return waves
    return [*waves[: max_waves - 1], [client for wave in waves[max_waves - 1 :] for client in wave]]


def acknowledge(partition_id: int, message: Message) -> Message:
    return Message(
        RecordDict({records.METRICS: MetricRecord({"partition_id": partition_id})}), reply_to=message
    )


@dataclass
class OneTimeStats:
    """Bytes of the one-time exchanges, per client."""

    offload_up: dict[int, int] = field(default_factory=dict)
    offload_down: dict[int, int] = field(default_factory=dict)
    guidance_down: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        named = {
            "offload_bytes_up_per_client": self.offload_up,
            "offload_bytes_down_per_client": self.offload_down,
            "guidance_bytes_down_per_client": self.guidance_down,
        }
        return {name: float(np.mean(list(sizes.values()))) for name, sizes in named.items() if sizes}


def _warn_failures(what: str, replies: Replies) -> None:
    for partition_id, reason in sorted(replies.errors.items()):
        log.warning("%s: client %d failed: %s", what, partition_id, reason)
    for partition_id in replies.silent:
        log.warning("%s: client %d did not answer", what, partition_id)


def offload(
    grid: Grid,
    nodes: dict[int, int],
    content: Callable[[], RecordDict],
    features_of: Callable[[Arrays], Arrays],
    timeout: float,
    stats: OneTimeStats,
) -> None:
    """The offload exchange with every node in ``nodes`` (partition id → node id); ``features_of`` maps a
    client's noised latents to its per-sample features (the server's U-Net pass)."""
    asks = {p: Message(content(), dst_node_id=node, message_type=SEND_LATENTS) for p, node in nodes.items()}
    latents = send_and_match(grid, asks, timeout)
    _warn_failures("offload (noised latents)", latents)
    answers = {}
    for partition_id, reply in sorted(latents.ok.items()):
        noised = records.from_record(reply.content[records.EXTRA])
        features = features_of(noised)
        stats.offload_up[partition_id], stats.offload_down[partition_id] = (
            records.nbytes(noised),
            records.nbytes(features),
        )
        answer = content()
        answer[records.PAYLOAD] = records.to_record(features)
        answers[partition_id] = Message(answer, dst_node_id=nodes[partition_id], message_type=RECEIVE_FEATURES)
    _warn_failures("offload (features)", send_and_match(grid, answers, timeout))


def send_guidance(
    grid: Grid,
    nodes: dict[int, int],
    content: Callable[[], RecordDict],
    guidance: Arrays,
    timeout: float,
    stats: OneTimeStats,
) -> None:
    """Send the guidance set to every node in ``nodes`` once."""
    messages = {}
    for partition_id, node in nodes.items():
        body = content()
        body[records.PAYLOAD] = records.to_record(guidance)
        messages[partition_id] = Message(body, dst_node_id=node, message_type=RECEIVE_GUIDANCE)
    replies = send_and_match(grid, messages, timeout)
    _warn_failures("guidance set", replies)
    for partition_id in replies.ok:
        stats.guidance_down[partition_id] = records.nbytes(guidance)
