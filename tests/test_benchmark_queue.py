"""The benchmark queue (benchmarks/runqueue.py): committed rows are kept and skipped in a fresh clone."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import niid_bench  # noqa: E402
import runqueue  # noqa: E402


@pytest.fixture
def bench(tmp_path, monkeypatch):
    results = tmp_path / "niid_bench.json"
    results.write_text(json.dumps({"dir0.5": {"fedavg": {"acc": 63.44, "best": 64.44, "rounds": 50, "local_epochs": 10,
                                                         "seconds": 2916.0, "seed": 0}}}))
    monkeypatch.setattr(niid_bench, "RESULTS", results)
    monkeypatch.setattr(niid_bench, "OUT", tmp_path / "out")
    return tmp_path


def finish_run(out: Path, name: str, acc: float) -> None:
    folder = out / f"{name}-20261202-000000"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"experiment": name, "complete": True, "final_accuracy": acc,
                                                     "best_accuracy": acc + 1, "rounds": 50, "total_time_s": 60.0}))


def test_a_row_in_the_committed_results_is_skipped_and_the_others_run(bench):
    ran = []
    runqueue.run_queue(["dir0.5-fedavg-s0", "dir0.5-fedprox-s0", "dir0.5-fedavg-s1"], niid_bench.parse_row,
                       ran.append, lambda: None, niid_bench.recorded)
    assert ran == ["dir0.5-fedprox-s0", "dir0.5-fedavg-s1"]  # another seed is another row


def test_results_keep_the_committed_rows_beside_the_runs_that_finished_here(bench):
    finish_run(bench / "out", "c2-scaffold-s0", 48.0)
    table = niid_bench.results()
    assert table["dir0.5"]["fedavg"]["acc"] == 63.44
    assert table["c2"]["scaffold"] == {"acc": 48.0, "best": 49.0, "rounds": 50, "local_epochs": 10,
                                       "seconds": 60.0, "seed": 0}
