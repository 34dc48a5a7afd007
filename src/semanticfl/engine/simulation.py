"""Single machine: Flower's Simulation Engine (Ray actors as virtual SuperNodes)."""

from __future__ import annotations

import logging
import os
from typing import Any

from semanticfl.config import EngineConfig
from semanticfl.engine.experiment import Experiment
from semanticfl.errors import RunAborted

SERVER_STOP_S = 10.0
"""How long a crashed engine's caller waits for the ServerApp thread to notice (it polls every 0.1-0.5 s)."""


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

    from semanticfl.engine.apps import EngineSignals, build_server_app
    from semanticfl.engine.client import client_app

    result: dict[str, Any] = {}
    signals = EngineSignals()
    server_app = build_server_app(experiment, config_toml, run_dir, resume, until_round, result, signals)
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
    except RunAborted:  # the ServerApp's own stop (too few clients, ...), re-raised by Flower
        raise
    except RuntimeError as crash:  # Flower's "An error was encountered. Ending simulation."
        signals.stopped.set()
        signals.server_done.wait(SERVER_STOP_S)
        raise RunAborted(
            f"Flower's Simulation Engine stopped: {root_cause(crash)} (the last checkpoint, if any, "
            f"continues with: semanticfl run --resume {run_dir})"
        ) from crash
    finally:
        flwr_logger.setLevel(level)
    return result


def root_cause(error: BaseException) -> str:
    """The innermost exception of ``error``'s ``raise ... from`` chain, as ``Type: message``."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"
