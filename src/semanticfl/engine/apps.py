"""Flower ServerApps: the same server loop under the Simulation and the Deployment Engine."""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from semanticfl.config import config_from_dict
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.outputs import RunDirectory
from semanticfl.engine.server import FederatedServer
from semanticfl.errors import RunAborted
from semanticfl.files import atomic_write_text

log = logging.getLogger("semanticfl")


def serve(
    grid: Grid, experiment: Experiment, config_toml: str, run_dir: str, resume: bool, until_round: int
) -> dict[str, Any]:
    """Run (or resume) the rounds of ``experiment`` over ``grid`` (0 = all); returns the summary."""
    server = FederatedServer(experiment, RunDirectory(run_dir), config_toml)
    if resume:
        server.restore()
    return server.run(grid, until_round or None)


class EngineStopped(RunAborted):
    """The Simulation Engine ended while the ServerApp still waited for its clients."""


@dataclass
class EngineSignals:
    """Between the Simulation Engine's caller and its ServerApp thread."""

    stopped: threading.Event = field(default_factory=threading.Event)
    """Set by the caller when the engine has ended: the ServerApp stops polling (:class:`GuardedGrid`)."""
    server_done: threading.Event = field(default_factory=threading.Event)
    """Set by the ServerApp thread when it returns or raises."""


class GuardedGrid:
    """The Simulation Engine's grid as the ServerApp polls it: once ``stopped`` is set (the engine
    crashed, e.g. Ray could not start), the next poll raises :class:`EngineStopped`, so the ServerApp's
    thread ends at once instead of waiting out ``train.client_timeout_s`` for replies no client will
    send -- a thread that would keep the process alive after the error was reported."""

    def __init__(self, grid: Grid, stopped: threading.Event) -> None:
        self.grid = grid
        self.stopped = stopped

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def _check(self) -> None:
        if self.stopped.is_set():
            raise EngineStopped("the Simulation Engine stopped")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def build_server_app(
    experiment: Experiment,
    config_toml: str,
    run_dir: str,
    resume: bool,
    until_round: int,
    result: dict[str, Any],
    signals: EngineSignals,
) -> ServerApp:
    """A ServerApp bound to an already-built experiment (simulation: same process as the CLI); it stops
    polling its clients once ``signals.stopped`` is set."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        guarded: Any = GuardedGrid(grid, signals.stopped)
        try:
            result.update(serve(guarded, experiment, config_toml, run_dir, resume, until_round))
        finally:
            signals.server_done.set()

    return app


server_app = ServerApp()
"""Deployment entry point; its run config carries ``config`` (TOML text), ``run-dir``,
``resume`` and ``until-round`` (0 = all rounds)."""


STOPPED_FILE = "stopped.txt"
"""Where a deployed ServerApp leaves the one-line reason it stopped early (too few clients),
for ``semanticfl run`` to report as it would a simulation's."""


@server_app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    config_toml = str(context.run_config["config"])
    experiment = Experiment(config_from_dict(tomllib.loads(config_toml)))
    run = context.run_config
    run_dir = Path(str(run["run-dir"]))
    try:
        serve(grid, experiment, config_toml, str(run_dir), bool(run["resume"]), int(run["until-round"]))
    except RunAborted as exc:
        log.error("run stopped: %s", exc)
        atomic_write_text(run_dir / STOPPED_FILE, str(exc))
