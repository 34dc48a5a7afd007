"""The Flower ClientApp: one process serves one or many (virtual) clients.

Each message carries the experiment's config text; the client rebuilds the same
:class:`~semanticfl.engine.experiment.Experiment` (cached per process), so its partition,
model and algorithm match the server's without anything else being shipped. The node's
``partition-id`` comes from its node config (the Simulation Engine sets it; a SuperNode
gets it from ``--node-config``). Algorithm state that must outlive a round (SCAFFOLD's
control variate, MOON's previous model...) is kept in the node's :class:`Context`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from semanticfl.algorithms.base import Arrays, ClientTask, ClientUpdate, load_arrays
from semanticfl.config import OFFLOAD_ROUND, FaultsConfig
from semanticfl.engine import exchanges, records
from semanticfl.engine.client_state import ClientStateStore
from semanticfl.engine.experiment import Experiment, experiment_for
from semanticfl.errors import UserError
from semanticfl.seeding import Stream, derive_seed

log = logging.getLogger("semanticfl")
client_app = ClientApp()


def partition_id_of(context: Context) -> int:
    """The client's partition index from its node config."""
    value = context.node_config.get("partition-id")
    if value is None:
        raise UserError(
            "this SuperNode has no partition-id; start it with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        )
    return int(value)


def _experiment(message: Message) -> Experiment:
    experiment = experiment_for(str(message.content[records.CONFIG]["experiment"]))
    torch.set_num_threads(experiment.config.engine.threads_per_client)
    return experiment


@client_app.query()
def identify(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds and how many samples it has."""
    experiment = _experiment(message)
    partition_id = partition_id_of(context)
    experiment.check_partition_id(partition_id)
    metrics = MetricRecord(
        {"partition_id": partition_id, "num_examples": len(experiment.partitions[partition_id])}
    )
    return Message(RecordDict({records.METRICS: metrics}), reply_to=message)


@client_app.query("offload")
def send_noised_latents(message: Message, context: Context) -> Message:
    """SemanticFL ``offload``: this client's VAE latents noised to ``t`` (see engine/exchanges.py)."""
    experiment = _experiment(message)
    partition_id = partition_id_of(context)
    faults = experiment.config.faults
    if OFFLOAD_ROUND in faults.rounds:
        raise_or_hang(injected_fault(faults, partition_id, OFFLOAD_ROUND), faults, partition_id, "in the offload")
    index = experiment.partitions[partition_id]
    requests = experiment.algorithm.teacher_requests().offload
    noised = experiment.teacher_targets.noised_latents(requests, index)
    return Message(RecordDict({records.EXTRA: records.to_record(noised)}), reply_to=message)


@client_app.query("offloaded")
def keep_offloaded_features(message: Message, context: Context) -> Message:
    """Keep the features the server computed from this client's noised latents in the node state."""
    context.state[exchanges.OFFLOADED_STATE] = message.content[records.PAYLOAD]
    return exchanges.acknowledge(partition_id_of(context), message)


@client_app.query("guidance")
def keep_guidance_set(message: Message, context: Context) -> Message:
    """Keep the server's guidance set in the node state (sent once per run)."""
    context.state[exchanges.GUIDANCE_STATE] = message.content[records.PAYLOAD]
    return exchanges.acknowledge(partition_id_of(context), message)


def held_arrays(context: Context, key: str) -> Arrays | None:
    return records.from_record(context.state[key]) if key in context.state else None


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Local training from the global model; replies with the update and its metrics."""
    started = time.perf_counter()
    experiment = _experiment(message)
    partition_id = partition_id_of(context)
    round_number = int(message.content[records.CONFIG]["round"])
    fault = injected_fault(experiment.config.faults, partition_id, round_number)
    raise_or_hang(fault, experiment.config.faults, partition_id, f"in round {round_number}")

    store = state_store(message, context, experiment)
    task = ClientTask(
        round=round_number,
        payload=records.from_record(message.content[records.PAYLOAD]),
        state=load_state(context, store, partition_id, round_number),
    )
    global_arrays = records.from_record(message.content[records.MODEL])
    held = held_arrays(context, exchanges.OFFLOADED_STATE), held_arrays(context, exchanges.GUIDANCE_STATE)
    update = local_update(experiment, partition_id, global_arrays, task, *held)
    save_state(context, store, partition_id, round_number, task.state)
    if fault == "nan":
        poison(update.arrays)

    metrics = {
        **update.metrics,
        "num_examples": update.num_examples,
        "partition_id": partition_id,
        "fit_time_s": time.perf_counter() - started,
    }
    content = RecordDict(
        {
            records.MODEL: records.to_record(update.arrays),
            records.EXTRA: records.to_record(update.extra),
            records.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content, reply_to=message)


def local_update(
    experiment: Experiment,
    partition_id: int,
    global_arrays: Arrays,
    task: ClientTask,
    offloaded: Arrays | None = None,
    guidance: Arrays | None = None,
) -> ClientUpdate:
    """One client's local training from ``global_arrays`` (with the teacher features the server
    computed for it in ``offload`` mode and the guidance set it sent); every random draw is seeded by (seed, round, client), so
    the same inputs give the same update in any process."""
    model = experiment.build_model()
    load_arrays(model, global_arrays)
    torch.manual_seed(derive_seed(experiment.config.experiment.seed, task.round, partition_id, Stream.CLIENT_TORCH))
    return experiment.algorithm.local_train(
        model,
        experiment.client_data(partition_id, offloaded, guidance),
        task,
        experiment.local_settings(),
        experiment.client_generator(task.round, partition_id),
    )


def injected_fault(faults: FaultsConfig, partition_id: int, round_number: int) -> str | None:
    """What ``[faults]`` makes this client do this round: ``raise``, ``hang``, ``nan`` or nothing."""
    if faults.rounds and round_number not in faults.rounds:
        return None
    for fault, clients in (
        ("raise", faults.raise_clients),
        ("hang", faults.hang_clients),
        ("nan", faults.nan_clients),
    ):
        if partition_id in clients:
            return fault
    return None


def raise_or_hang(fault: str | None, faults: FaultsConfig, partition_id: int, when: str) -> None:
    """Carry out an injected ``raise`` (a client error) or ``hang`` (sleep ``faults.hang_s``) fault."""
    if fault == "raise":
        raise RuntimeError(f"injected fault: client {partition_id} raises {when}")
    if fault == "hang":
        log.warning("injected fault: client %d hangs %s for %.0f s", partition_id, when, faults.hang_s)
        time.sleep(faults.hang_s)


def poison(arrays: Arrays) -> None:
    """Overwrite the first floating-point array with NaN and +Inf (an injected divergence)."""
    name = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    poisoned = np.array(arrays[name], copy=True)
    poisoned.flat[0] = np.nan
    poisoned.flat[-1] = np.inf
    arrays[name] = poisoned


def state_store(message: Message, context: Context, experiment: Experiment) -> ClientStateStore | None:
    """Where this client mirrors its state on disk: the node's ``state-dir``, else the
    folder the server named (simulation), else nowhere."""
    folder = context.node_config.get("state-dir") or message.content[records.CONFIG]["state-dir"]
    if not folder:
        return None
    return ClientStateStore(Path(str(folder)), keep=experiment.config.engine.keep_checkpoints + 1)


def load_state(
    context: Context, store: ClientStateStore | None, partition_id: int, round_number: int
) -> Arrays:
    """The newest state from before ``round_number``: the Context's, else the disk's."""
    if records.STATE in context.state:
        saved_round = int(context.state[records.STATE_ROUND]["round"])
        if saved_round < round_number:
            return records.from_record(context.state[records.STATE])
    return store.load_before(partition_id, round_number) if store else {}


def save_state(
    context: Context, store: ClientStateStore | None, partition_id: int, round_number: int, state: Arrays
) -> None:
    if not state:
        return
    context.state[records.STATE] = records.to_record(state)
    context.state[records.STATE_ROUND] = ConfigRecord({"round": round_number})
    if store:
        store.save(partition_id, round_number, state)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Federated evaluation: the global model on this client's local data."""
    experiment = _experiment(message)
    partition_id = partition_id_of(context)
    model = experiment.build_model()
    load_arrays(model, records.from_record(message.content[records.MODEL]))
    data = experiment.client_data(partition_id)
    transform = experiment.eval_transform()
    result = experiment.algorithm.evaluate(
        model,
        data.images,
        data.labels,
        lambda x: transform(x, None),
        experiment.config.eval.batch_size,
        experiment.config.engine.device,
    )
    metrics = {**result, "num_examples": len(data), "partition_id": partition_id}
    return Message(RecordDict({records.METRICS: MetricRecord(metrics)}), reply_to=message)
