"""The headline table's queue (benchmarks/headline.py): seeds merged across sessions, FedDifRC's variant
chosen on val, the pictures written."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import headline  # noqa: E402


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(headline, "RESULTS", tmp_path / "headline.json")
    monkeypatch.setattr(headline, "OUT", tmp_path / "out")
    return tmp_path


def finish_run(out: Path, name: str, final: float, val: float) -> None:
    folder = out / f"{name}-20261202-000000"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "experiment": name, "complete": True, "final_accuracy": final, "best_accuracy": final + 1,
        "final_val_accuracy": val, "rounds": 30, "mean_round_time_s": 20.0,
        "bytes_down_per_client_per_round": 248024.0, "bytes_up_per_client_per_round": 248024.0}))
    rounds = [{"round": 2, "test_accuracy": final - 10}, {"round": 3}, {"round": 30, "test_accuracy": final}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))


def commit_results(bench: Path) -> None:
    """What a session commits: the table written after its rows finished; its run folders are then lost."""
    headline.write_report(headline.results())
    for folder in (bench / "out").iterdir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_a_seed_run_in_another_session_joins_the_committed_seeds(bench):
    finish_run(bench / "out", "dir0.1-fedavg-s0", 30.0, 31.0)
    commit_results(bench)
    assert headline.recorded("dir0.1-fedavg-s0") and not headline.recorded("dir0.1-fedavg-s1")
    finish_run(bench / "out", "dir0.1-fedavg-s1", 34.0, 33.0)
    row = headline.results()["dir0.1"]["fedavg"]
    assert (row["mean"], row["std"], row["seeds"], row["finals"], row["val_mean"]) == (32.0, 2.83, [0, 1],
                                                                                     [30.0, 34.0], 32.0)
    assert row["mb_per_client_round"] == 0.496
    assert row["per_seed"]["1"]["curve"] == [[2, 24.0], [30, 34.0]]
    assert headline.tail_mean(row) == 27.0  # both evaluations of both seeds: (20 + 30 + 24 + 34) / 4
    assert headline.results()["dir0.1"]["protocol"] == {"rounds": 30, "local_epochs": 5, "clients_per_round": 5}


def test_feddifrcs_other_settings_wait_for_all_its_validation_rows_and_take_the_best_val(bench):
    assert not any(row.startswith("dir0.5-feddifrc") for row in headline.default_rows())
    for variant, val in [("feddifrc", 20.0), ("feddifrc_ndcr0.1", 26.0), ("feddifrc_ndcr0.01", 25.0)]:
        finish_run(bench / "out", f"dir0.1-{variant}-s0", 40.0 - val, val)  # test accuracy plays no part
    assert headline.val_choice(headline.results(), headline.FEDDIFRC) is None  # feddifrc_gap has not run
    finish_run(bench / "out", "dir0.1-feddifrc_gap-s0", 30.0, 21.0)
    assert headline.val_choice(headline.results(), headline.FEDDIFRC) == "feddifrc_ndcr0.1"
    rows = headline.default_rows()
    assert "dir0.5-feddifrc_ndcr0.1-s0" in rows and "dir0.1-feddifrc_ndcr0.1-s2" in rows
    assert "dir0.5-feddifrc-s0" not in rows
    assert "(val-chosen)" in headline.markdown(headline.results())


def test_semanticfls_line_is_its_best_private_candidate_on_val_drawn_once(bench):
    finish_run(bench / "out", "dir0.1-semanticfl_guidance-s0", 40.0, 36.0)
    assert headline.chosen_line(headline.results(), "semanticfl_val") == "semanticfl_guidance"  # until both ran
    finish_run(bench / "out", "dir0.1-semanticfl_guidance_gce0.1-s0", 38.0, 46.0)
    assert headline.chosen_line(headline.results(), "semanticfl_val") == "semanticfl_guidance_gce0.1"
    assert headline.chosen_line(headline.results(), "fedavg") == "fedavg"
    control = headline.overrides("dir0.1-generated_ce0.1_control-s0")
    assert {"algorithm.semanticfl.lambda_guidance_ce=0.1", "algorithm.semanticfl.lambda_kd=0",
            "algorithm.semanticfl.lambda_con=0", f"teacher.path={headline.TEACHER}"} <= set(control)


def test_rows_run_with_the_protocol_and_the_teacher_only_where_used():
    fedavg, guidance = headline.overrides("c2-fedavg-s2"), headline.overrides("dir0.1-semanticfl_guidance-s0")
    assert {"train.rounds=30", "train.local_epochs=5", "train.fraction_fit=0.5", "data.server_holdout=10000",
            "partition.classes_per_client=2", "experiment.seed=2"} <= set(fedavg)
    assert not any(o.startswith("teacher.path") for o in fedavg)
    assert "algorithm.semanticfl.guidance_source=generated" in guidance
    assert f"teacher.path={headline.TEACHER}" in guidance
    with pytest.raises(SystemExit, match="unknown row"):
        headline.parse_row("dir0.1-fedavgg-s0")


def test_the_pictures_are_written(bench):
    for method in ("fedavg", "semanticfl_guidance", "semanticfl_guidance_no_kd"):  # the chart needs the mode
        finish_run(bench / "out", f"dir0.1-{method}-s0", 40.0, 40.0)
    headline.write_report(headline.results())
    for name in ("headline_curves.png", "headline_ablations.png"):
        assert (bench / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
