"""Single machine: Flower's Simulation Engine (Ray actors as virtual SuperNodes)."""

from __future__ import annotations

import logging
import os
from typing import Any

from semanticfl.engine.experiment import Experiment

FLOWER_LEVEL = logging.ERROR
"""Flower's log level during a simulation, in this process and in the Ray actors (which read
``FLWR_LOG_LEVEL`` when they start): its INFO/WARNING lines are plumbing, e.g. each actor's
"Manually terminating ClientAppActor" at shutdown. A client's error still comes back to the
server as a failed reply and is reported there. Export ``FLWR_LOG_LEVEL=INFO`` to see them."""


def available_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def backend_config(experiment: Experiment) -> dict[str, Any]:
    """One actor per parallel client, each pinned to ``threads_per_client`` torch threads.

    ``engine.parallel_clients`` (0 = one per core) actors share the machine, so with the
    default of one thread per client the cores are used without being oversubscribed.
    """
    engine = experiment.config.engine
    parallel = engine.parallel_clients or max(1, available_cores() // engine.threads_per_client)
    resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0.0}
    if engine.device.startswith("cuda"):
        resources["num_gpus"] = 1.0 / parallel
    return {
        "client_resources": resources,
        "init_args": {
            "num_cpus": parallel,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": True,
        },
    }


def run_simulation_engine(
    experiment: Experiment, config_toml: str, run_dir: str, resume: bool, until_round: int
) -> dict[str, Any]:
    """Run the experiment with ``partition.num_clients`` virtual SuperNodes; returns the summary."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("FLWR_LOG_LEVEL", logging.getLevelName(FLOWER_LEVEL))
    from flwr.simulation import run_simulation

    from semanticfl.engine.apps import build_server_app
    from semanticfl.engine.client import client_app

    result: dict[str, Any] = {}
    server_app = build_server_app(experiment, config_toml, run_dir, resume, until_round, result)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(FLOWER_LEVEL)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=experiment.config.partition.num_clients,
            backend_config=backend_config(experiment),
        )
    finally:
        flwr_logger.setLevel(level)
    return result
