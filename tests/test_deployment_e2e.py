"""The Deployment Engine for real, with the README's own commands: a SuperLink and two SuperNodes on
127.0.0.1, two rounds, the same records as the Simulation Engine."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    SMALL_RUN,
    Processes,
    free_port,
    read_rounds,
    run_dirs,
    semanticfl,
    wait_for_port,
    without_timings,
)

README = Path(__file__).resolve().parents[1] / "README.md"
README_PORT = "8000"

# SCAFFOLD: client state (c_i) must live in each SuperNode's Context across rounds. The README's
# command sets partition.num_clients=$N itself.
SMALL = [o for o in SMALL_RUN if not o.startswith(("partition.num_clients", "train.rounds"))]
DEPLOYED = [*SMALL, "train.rounds=2", "algorithm.name=scaffold"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]


def readme_deployment_commands() -> dict[str, str]:
    """The commands of the README's Deployment Engine block, by program (continuation lines joined)."""
    section = README.read_text().split("## Several machines", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    return {line.split()[0]: line for line in lines}


def as_run_here(command: str, port: int, **variables: str) -> list[str]:
    """A README command for this machine: SERVER is 127.0.0.1, the port a free one, $i/$N and the
    state folder as given in ``variables``."""
    command = command.replace("SERVER", "127.0.0.1").replace(README_PORT, str(port))
    command = command.replace("/var/lib/semanticfl", variables.pop("state_dir"))
    for name, value in variables.items():
        command = command.replace(f"${name}", value)
    return shlex.split(command)


def test_readme_names_three_commands_and_one_port_for_all():
    commands = readme_deployment_commands()
    assert sorted(commands) == ["flower-superlink", "flower-supernode", "semanticfl"]
    assert all(f"SERVER:{README_PORT}" in commands[p] for p in ("flower-supernode", "semanticfl"))
    assert f"--port {README_PORT}" in commands["flower-superlink"]


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH")
def test_readme_commands_run_a_deployment_that_matches_the_simulation(tmp_path):
    commands = readme_deployment_commands()
    port, state_dir = free_port(), str(tmp_path / "state")
    procs = Processes(tmp_path)
    try:
        procs.start("superlink", *as_run_here(commands["flower-superlink"], port, state_dir=state_dir))
        wait_for_port(port)
        for i in range(2):  # two SuperNodes on one machine: each needs its own Runtime API port
            node = as_run_here(commands["flower-supernode"], port, state_dir=state_dir, i=str(i), N="2")
            procs.start(f"supernode{i}", *node, "--port", str(free_port()))
        time.sleep(2)  # a SuperNode that cannot parse its command line exits at once
        assert all(proc.poll() is None for proc in procs.procs.values()), procs.log("supernode0")
        out = tmp_path / "runs"
        run = as_run_here(commands["semanticfl"], port, state_dir=state_dir, N="2")
        result = semanticfl(
            *run[1:], *DEPLOYED, f"experiment.output_dir={out}",
            cwd=tmp_path, timeout=500, env={"FLWR_HOME": str(tmp_path / "cli-home")},
        )
        assert result.returncode == 0, result.stderr[-3000:] + procs.log("superlink")
        (run_dir,) = run_dirs(out)
        rounds = read_rounds(run_dir)
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["clients"] == 2 and r["failed_clients"] == 0 for r in rounds)
        assert {c["id"] for c in rounds[-1]["client_metrics"]} == {0, 1}
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["complete"] is True and summary["final_accuracy"] > 10.0
        assert sorted(p.name for p in Path(state_dir).iterdir()) == ["client-0000", "client-0001"]
    finally:
        codes = {name: procs.stop(name) for name in ["supernode0", "supernode1", "superlink"] if name in procs.procs}
    assert all(code is not None for code in codes.values()), f"had to SIGKILL: {codes}"

    simulated = tmp_path / "simulated"
    result = semanticfl(
        "run", "quickstart", "partition.num_clients=2", *DEPLOYED, f"experiment.output_dir={simulated}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sim_dir,) = run_dirs(simulated)
    assert without_timings(read_rounds(sim_dir)) == without_timings(rounds)


def test_superlink_default_is_the_readmes_port_on_this_machine():
    from semanticfl.engine.deployment import DEFAULT_SUPERLINK_ADDRESS

    help_text = semanticfl("run", "--help", cwd=README.parent).stdout
    assert DEFAULT_SUPERLINK_ADDRESS == f"127.0.0.1:{README_PORT}"
    assert f"default {DEFAULT_SUPERLINK_ADDRESS}" in " ".join(help_text.split())
