"""SemanticFL's ``offload`` mode over Flower messages: the client runs only the VAE encoder, the
server runs the U-Net.

Before the first round of a run (and again when a run resumes), for every offload request of the
algorithm:

1. the server sends each client a ``query.offload`` message;
2. the client encodes its images with the teacher's VAE, noises the latents to the request's
   timestep (seeded per sample, one tensor per noise draw) and replies with them (float16);
3. the server runs the U-Net on those noised latents, reduces and fuses the layers with the PCA
   fitted on its public split, and sends the per-sample features back (``query.offloaded``);
4. the client keeps them in its node state and reads them as ``Batch.targets`` while training.

The clean latents and the images never leave the client; ``benchmarks/offload_privacy.py`` measures how
much of an image the noised latents reveal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from semanticfl.algorithms.base import Arrays, TargetReader
from semanticfl.data.datasets import images_to_tensor
from semanticfl.engine import records
from semanticfl.engine.teacher_targets import RequestExtractor
from semanticfl.errors import UserError

log = logging.getLogger("semanticfl")

SEND_LATENTS, RECEIVE_FEATURES = "query.offload", "query.offloaded"
NOISED = ".noised"
STATE = "offloaded-features"


# ------------------------------------------------------------------ client half


def noised_latents(experiment, partition_id: int) -> Arrays:
    """The client's upload: ``{request + ".noised": D×N×C×h×w float16}`` for its partition."""
    index = experiment.partitions[partition_id]
    images = images_to_tensor(experiment.dataset.train_images, index)
    ids = torch.from_numpy(index)
    teacher = experiment.teacher_targets.teacher
    return {
        request.name + NOISED: RequestExtractor(teacher, request)
        .teacher.noised_latents(images, ids)
        .half()
        .numpy()
        for request in experiment.algorithm.offload_requests()
    }


def offloaded_reader(features: Arrays | None) -> TargetReader:
    """Local rows → the server-computed features the client holds in its node state."""
    if not features:
        raise UserError(
            "this client holds no offloaded teacher features: the server's offload exchange did not reach "
            "it (see the server log); restart the run with --resume"
        )

    def read(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(value[rows])) for name, value in features.items()}

    return read


# ------------------------------------------------------------------ server half


@dataclass
class OffloadStats:
    """Bytes of the one-time exchange, per client."""

    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        if not self.bytes_up:
            return {}
        return {
            "offload_bytes_up_per_client": float(np.mean(list(self.bytes_up.values()))),
            "offload_bytes_down_per_client": float(np.mean(list(self.bytes_down.values()))),
        }


def exchange(
    grid: Grid, nodes: dict[int, int], content: Callable[[], RecordDict], experiment, timeout: float
) -> OffloadStats:
    """Steps 1-3 of the module docstring with every node in ``nodes`` (partition id → node id)."""
    requests = experiment.algorithm.offload_requests()
    extractors = {request.name: experiment.teacher_targets.extractor(request) for request in requests}
    by_node = {node: partition_id for partition_id, node in nodes.items()}
    asks = [Message(content(), dst_node_id=node, message_type=SEND_LATENTS) for node in nodes.values()]
    stats, answers = OffloadStats(), []
    for reply in grid.send_and_receive(asks, timeout=timeout):
        partition_id = by_node[reply.metadata.src_node_id]
        if reply.has_error():
            log.warning("offload: client %d sent no latents: %s", partition_id, reply.error.reason)
            continue
        noised = records.from_record(reply.content[records.EXTRA])
        features = {
            name: extractor.fused_of_noised(torch.from_numpy(noised[name + NOISED]).float())
            for name, extractor in extractors.items()
        }
        stats.bytes_up[partition_id], stats.bytes_down[partition_id] = (
            records.nbytes(noised),
            records.nbytes(features),
        )
        answer = content()
        answer[records.PAYLOAD] = records.to_record(features)
        answers.append(Message(answer, dst_node_id=reply.metadata.src_node_id, message_type=RECEIVE_FEATURES))
    for ack in grid.send_and_receive(answers, timeout=timeout):
        if ack.has_error():
            log.warning(
                "offload: client %d did not store its features: %s",
                by_node[ack.metadata.src_node_id],
                ack.error.reason,
            )
    return stats


def acknowledge(partition_id: int, message: Message) -> Message:
    return Message(
        RecordDict({records.METRICS: MetricRecord({"partition_id": partition_id})}), reply_to=message
    )
