"""Several machines: the same apps under Flower's Deployment Engine.

``semanticfl run`` with ``engine.backend = "deployment"`` writes a minimal Flower App (a
``pyproject.toml`` naming :data:`semanticfl.engine.apps.server_app` and
:data:`semanticfl.engine.client.client_app`, with the resolved config in its run config)
into the run directory and submits it to a running SuperLink with ``flwr run --stream``.
Every SuperLink/SuperNode machine needs ``semanticfl`` installed; each SuperNode is
started with ``--node-config "partition-id=<i> num-partitions=<n>"``. The run directory
path is where the ServerApp (on the SuperLink's machine) writes metrics and checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import tomli_w

from semanticfl.engine.apps import STOPPED_FILE
from semanticfl.engine.outputs import RunDirectory
from semanticfl.errors import RunAborted, UserError

DEFAULT_SUPERLINK_ADDRESS = "127.0.0.1:8000"
"""flower-superlink's default ``--host``:``--port``: flwr 1.41 serves the Fleet API (SuperNodes),
the Control API (``flwr run``) and the Runtime API on this one HTTP port."""
CONNECTION = "semanticfl"


def write_flower_app(folder: Path, config_toml: str, run_dir: Path, resume: bool, until_round: int) -> Path:
    """A Flower App directory whose components are semanticfl's ServerApp and ClientApp."""
    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "semanticfl-run", "version": "1.0.0", "dependencies": []},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "semanticfl",
                    "components": {
                        "serverapp": "semanticfl.engine.apps:server_app",
                        "clientapp": "semanticfl.engine.client:client_app",
                    },
                    "config": {
                        "config": config_toml,
                        "run-dir": str(run_dir.resolve()),
                        "resume": resume,
                        "until-round": until_round,
                    },
                }
            },
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def write_connection(flwr_home: Path, address: str, root_certificates: str | None) -> None:
    """A Flower CLI config with one SuperLink connection named ``semanticfl``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    connection: dict[str, Any] = {"address": address}
    if root_certificates:
        if not Path(root_certificates).is_file():
            raise UserError(f"--root-certificates {root_certificates}: no such file")
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    else:
        connection["insecure"] = True
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(config))


def run_deployment_engine(
    config_toml: str,
    run_dir: RunDirectory,
    resume: bool,
    until_round: int,
    connection: dict[str, str | None],
) -> dict[str, Any]:
    """Submit the run to a SuperLink, stream its logs, return the summary it wrote."""
    flwr = shutil.which("flwr")
    if flwr is None:
        raise UserError("the 'flwr' command is not on PATH; install semanticfl's dependencies")
    app = write_flower_app(run_dir.file("flower-app"), config_toml, run_dir.path, resume, until_round)
    home = run_dir.file("flwr-home")
    write_connection(home, connection.get("address") or DEFAULT_SUPERLINK_ADDRESS, connection.get("root_certificates"))
    summary_file = run_dir.file("summary.json")
    summary_file.unlink(missing_ok=True)
    stopped = run_dir.file(STOPPED_FILE)
    stopped.unlink(missing_ok=True)
    env = {**os.environ, "FLWR_HOME": str(home)}
    completed = subprocess.run([flwr, "run", str(app), CONNECTION, "--stream"], env=env, check=False)
    if not summary_file.is_file() and stopped.is_file():
        raise RunAborted(stopped.read_text())
    if completed.returncode != 0 or not summary_file.is_file():
        raise UserError(
            f"the Deployment Engine run did not finish (flwr exit code {completed.returncode}); "
            f"check that the SuperLink is reachable and SuperNodes are connected, then "
            f"'semanticfl run --resume {run_dir.path}'"
        )
    return json.loads(summary_file.read_text())
