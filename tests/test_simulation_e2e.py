"""End to end through Flower's Simulation Engine: outputs and comparisons. Exact resume (killed runs,
``--until-round``, client state, damaged checkpoints) is tested in test_crash_resume.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import SMALL_RUN, read_rounds, run_dirs, semanticfl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-round run from start to end."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = semanticfl("run", *SMALL_RUN, f"experiment.output_dir={out}", cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    return run_dir, result


def test_run_writes_every_output(uninterrupted):
    run_dir, result = uninterrupted
    for name in ["config.toml", "metrics.jsonl", "metrics.csv", "summary.json", "accuracy.png",
                 "partition.png", "partition.csv"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0002.safetensors", "round-0003.safetensors"]
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("round,test_accuracy") and len(csv_lines) == 4
    for record in rounds:
        assert record["clients"] == 3 and record["failed_clients"] == 0
        assert record["bytes_down_per_client"] == record["bytes_up_per_client"] > 40_000  # a 44k-parameter CNN
        assert sum(c["num_examples"] for c in record["client_metrics"]) == 5000  # 10 % of the 50,000 left after the 10,000-sample server split
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["complete"] is True
    assert summary["final_accuracy"] == rounds[-1]["test_accuracy"]
    assert summary["final_accuracy"] > 40.0  # 10 classes: chance is 10 %
    assert "final test accuracy" in result.stdout and "round 3/3" in result.stderr


def test_compare_runs_each_algorithm_on_the_same_partition(tmp_path):
    overrides = [o for o in SMALL_RUN if not o.startswith("train.rounds")]
    result = semanticfl(
        "compare", *overrides, "train.rounds=1", "eval.target_accuracy=5", "eval.federated=true",
        "--algorithms", "fedavg,fedprox",
        f"experiment.output_dir={tmp_path}", cwd=tmp_path,
        # A cluster named by the environment (or by Ray's /tmp/ray/ray_current_cluster, e.g. left by
        # someone's `ray start`) is not joined: every run starts Ray of its own.
        env={"RAY_ADDRESS": "127.0.0.1:9"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = run_dirs(tmp_path)
    rows = json.loads((folder / "comparison.json").read_text())
    assert [r["algorithm"] for r in rows] == ["fedavg", "fedprox"]
    assert all(r["rounds_to_target"] == 1 for r in rows)  # 5 % is below any trained model
    (record,) = read_rounds(Path(rows[0]["run_dir"]))
    assert 10.0 < record["federated_accuracy"] <= 100.0  # the global model on the clients' own data
    assert (folder / "accuracy.png").stat().st_size > 0
    assert (folder / "comparison.csv").read_text().splitlines()[0].startswith("algorithm,final_accuracy")
    partitions = [(Path(r["run_dir"]) / "partition.csv").read_text() for r in rows]
    assert partitions[0] == partitions[1]
    assert "fedprox" in result.stdout and "comparison" in result.stdout


def test_a_crashed_simulation_engine_stops_the_run_in_one_line_without_waiting_for_its_clients(tmp_path):
    # Ray cannot start when its socket path passes the 107-byte AF_UNIX limit: Flower's Simulation
    # Engine crashes before any client exists, and the ServerApp must not sit out client_timeout_s.
    ray_tmp = tmp_path / ("r" * 110)
    ray_tmp.mkdir()
    started = time.monotonic()
    result = semanticfl("run", *SMALL_RUN, "train.client_timeout_s=600", f"experiment.output_dir={tmp_path}",
                        cwd=tmp_path, timeout=300, env={"RAY_TMPDIR": str(ray_tmp)})
    assert time.monotonic() - started < 120
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("semanticfl: run stopped: Flower's Simulation Engine stopped: OSError:"), last
    assert "AF_UNIX path length" in last and "semanticfl run --resume" in last
