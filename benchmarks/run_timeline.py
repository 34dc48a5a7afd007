"""Where one small end-to-end run's wall time goes: the fixed cost every end-to-end test pays (issue 16).

Runs ``semanticfl run`` in this process (1 round, 3 clients, 2 % of Fashion-MNIST by default) and prints a
timestamp (seconds since start) when the server enters and leaves each phase -- node discovery (the client
actors starting and importing semanticfl), the one-time exchanges, training, central evaluation, the summary
-- beside Flower's own milestones (actor pool built, backend terminated). Times count from when this script has
imported semanticfl's server (the CLI's own imports are then mostly done). Run it on a quiet machine:

    python benchmarks/run_timeline.py                       # in an empty folder; writes runs/
    python benchmarks/run_timeline.py train.rounds=3 ...    # other overrides replace the defaults' keys
"""

from __future__ import annotations

import functools
import logging
import runpy
import sys
import time

from semanticfl.engine.server import FederatedServer

START = time.monotonic()
DEFAULTS = ["experiment.name=timeline", "partition.num_clients=3", "data.train_fraction=0.02", "train.rounds=1",
            "engine.parallel_clients=2"]
PHASES = ["discover_nodes", "run_one_time_exchanges", "train_clients", "central_evaluation", "finish"]
FLOWER_MILESTONES = ("Registered", "Constructed ActorPool", "ServerApp finished", "Terminated")


def stamp(text: str) -> None:
    print(f"{time.monotonic() - START:7.2f} s  {text}", flush=True)


def timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        began = time.monotonic()
        stamp(f"> {method.__name__}")
        try:
            return method(*args, **kwargs)
        finally:
            stamp(f"< {method.__name__} ({time.monotonic() - began:.2f} s)")

    return wrapper


class FlowerMilestones(logging.Handler):
    """Flower's DEBUG lines that mark the Simulation Engine's own phases."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(FLOWER_MILESTONES):
            stamp(f"[flwr] {message[:100]}")


def keep_flower_at_debug() -> None:
    """The engine quiets the ``flwr`` logger to ERROR during a run; keep it at DEBUG for the milestones."""
    set_level = logging.Logger.setLevel

    def set_level_except_flower(self: logging.Logger, level: int | str) -> None:
        set_level(self, logging.DEBUG if self.name == "flwr" else level)

    logging.Logger.setLevel = set_level_except_flower  # type: ignore[method-assign]
    logging.getLogger("flwr").addHandler(FlowerMilestones(logging.DEBUG))


def overrides(extra: list[str]) -> list[str]:
    given = {item.split("=", 1)[0] for item in extra}
    return [item for item in DEFAULTS if item.split("=", 1)[0] not in given] + extra


def main() -> None:
    keep_flower_at_debug()
    for name in PHASES:
        setattr(FederatedServer, name, timed(getattr(FederatedServer, name)))
    sys.argv = ["semanticfl", "run", *overrides(sys.argv[1:])]
    try:
        runpy.run_module("semanticfl.cli.main", run_name="__main__")
    except SystemExit:
        pass
    stamp("end")


if __name__ == "__main__":
    main()
