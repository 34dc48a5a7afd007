"""The Deployment Engine for real: a SuperLink and two SuperNodes on 127.0.0.1, two rounds."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import SMALL_RUN, Processes, free_port, read_rounds, run_dirs, semanticfl, wait_for_port, without_timings

# SCAFFOLD: client state (c_i) must live in each SuperNode's Context across rounds.
DEPLOYED = [*SMALL_RUN, "partition.num_clients=2", "train.rounds=2", "algorithm.name=scaffold"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH")
def test_superlink_and_two_supernodes_match_the_simulation(tmp_path):
    link_port = free_port()
    procs = Processes(tmp_path)
    try:
        procs.start("superlink", "flower-superlink", "--insecure", "--port", str(link_port))
        wait_for_port(link_port)
        for i in range(2):
            procs.start(
                f"supernode{i}", "flower-supernode", "--insecure",
                "--superlink", f"127.0.0.1:{link_port}", "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions=2",
            )
        out = tmp_path / "runs"
        result = semanticfl(
            "run", *DEPLOYED, "engine.backend=deployment",
            f"experiment.output_dir={out}", "--superlink", f"127.0.0.1:{link_port}",
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
    finally:
        codes = {name: procs.stop(name) for name in ["supernode0", "supernode1", "superlink"] if name in procs.procs}
    assert all(code is not None for code in codes.values()), f"had to SIGKILL: {codes}"

    simulated = tmp_path / "simulated"
    result = semanticfl("run", *DEPLOYED, f"experiment.output_dir={simulated}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sim_dir,) = run_dirs(simulated)
    assert without_timings(read_rounds(sim_dir)) == without_timings(rounds)
