"""Single machine: Flower's Simulation Engine (Ray actors as virtual SuperNodes)."""

from __future__ import annotations

import logging
import os
from typing import Any

from semanticfl.config import EngineConfig
from semanticfl.engine.experiment import Experiment


def available_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def parallel_clients(engine: EngineConfig) -> int:
    """Clients the Simulation Engine trains at once: ``engine.parallel_clients``, or one per
    ``threads_per_client`` cores."""
    return engine.parallel_clients or max(1, available_cores() // engine.threads_per_client)


def backend_config(experiment: Experiment) -> dict[str, Any]:
    """One actor per parallel client, each pinned to ``threads_per_client`` torch threads.

    ``engine.parallel_clients`` (0 = one per core) actors share the machine, so with the
    default of one thread per client the cores are used without being oversubscribed.

    Ray always starts a local instance of its own (``address="local"``): a plain ``ray.init()`` would
    join whatever cluster ``RAY_ADDRESS`` or Ray's ``/tmp/ray/ray_current_cluster`` names -- another
    user's ``ray start`` or a stale file -- where ``num_cpus`` is refused and the run crashes.

    The Ray workers' own output (each actor's "Manually terminating ClientAppActor" and Ray's
    C++ messages when it shuts down) reaches this terminal only in verbose mode (``semanticfl -v``,
    i.e. the ``semanticfl`` logger at INFO); otherwise it stays in Ray's session logs. A client's
    exception comes back through Ray either way, and the server reports the failed client.
    """
    engine = experiment.config.engine
    verbose = logging.getLogger("semanticfl").isEnabledFor(logging.INFO)
    parallel = parallel_clients(engine)
    resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0.0}
    if engine.device.startswith("cuda"):
        resources["num_gpus"] = 1.0 / parallel
    return {
        "client_resources": resources,
        "init_args": {
            "address": "local",
            "num_cpus": parallel,
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }


def run_simulation_engine(
    experiment: Experiment, config_toml: str, run_dir: str, resume: bool, until_round: int
) -> dict[str, Any]:
    """Run the experiment with ``partition.num_clients`` virtual SuperNodes; returns the summary."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from semanticfl.engine.apps import build_server_app
    from semanticfl.engine.client import client_app

    result: dict[str, Any] = {}
    server_app = build_server_app(experiment, config_toml, run_dir, resume, until_round, result)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
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
