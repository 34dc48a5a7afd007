"""Flower ServerApps: the same server loop under the Simulation and the Deployment Engine."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from flwr.app import Context
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


def build_server_app(
    experiment: Experiment,
    config_toml: str,
    run_dir: str,
    resume: bool,
    until_round: int,
    result: dict[str, Any],
) -> ServerApp:
    """A ServerApp bound to an already-built experiment (simulation: same process as the CLI)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result.update(serve(grid, experiment, config_toml, run_dir, resume, until_round))

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
