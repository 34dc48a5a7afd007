"""A new user's first hour (issue 19): what a stopped, resumed or finished run says, the comparison
table at 80 columns, the plots' rounds and titles, no Ray shutdown noise."""

from __future__ import annotations

import io
import json

import pytest
from helpers import SMALL_RUN, run_dirs, semanticfl
from rich.console import Console

from semanticfl.cli.compare import comparison_line, comparison_table
from semanticfl.config import load_config
from semanticfl.engine.outputs import accuracy_figure, run_setting

TWO_ROUNDS = [o for o in SMALL_RUN if not o.startswith("train.rounds")] + ["train.rounds=2"]


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("semanticfl: error:") and "Traceback" not in result.stdout
    return line


@pytest.mark.slow
def test_stop_resume_and_resume_again_each_say_what_happened(tmp_path, fashion_mnist_available):
    out = tmp_path / "runs"
    stopped = semanticfl("run", *TWO_ROUNDS, f"experiment.output_dir={out}", "--until-round", "1", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    assert "Manually terminating" not in stopped.stderr and "\x1b[" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"unfinished: stopped after round 1; continue with: semanticfl run --resume {run_dir}"
    )

    resumed = semanticfl("run", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.strip().splitlines()[-1] == f"results: {run_dir}"
    assert "Manually terminating" not in resumed.stderr

    again = semanticfl("run", "--resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""
    (line,) = again.stdout.strip().splitlines()
    final = json.loads((run_dir / "summary.json").read_text())["final_accuracy"]
    assert line.startswith(f"{run_dir} is already finished (2 rounds, final test accuracy {final:.2f} %)")


def test_until_round_past_the_last_round_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "runs"
    result = semanticfl("run", *TWO_ROUNDS, f"experiment.output_dir={out}", "--until-round", "50", cwd=tmp_path)
    assert one_line_error(result).endswith(
        "--until-round 50 is not a round of this run (train.rounds = 2); pass a round from 1 to 2, or 0 for all"
    )
    assert not out.exists()


def test_until_round_must_be_a_round_number_and_not_the_two_run_quickstart(tmp_path):
    assert "got '-1'" in one_line_error(semanticfl("run", "quickstart", "--until-round", "-1", cwd=tmp_path))
    assert "quickstart runs two" in one_line_error(semanticfl("run", "--until-round", "2", cwd=tmp_path))


def test_resume_of_a_comparison_folder_names_its_runs(tmp_path):
    folder = tmp_path / "quickstart-compare-20261122-101500"
    for name, complete in [("fedavg-20261122-101500", True), ("semanticfl-20261122-101900", False)]:
        (folder / name).mkdir(parents=True)
        (folder / name / "config.toml").write_text(load_config().to_toml())
        (folder / name / "summary.json").write_text(json.dumps({"complete": complete}))
    line = one_line_error(semanticfl("run", "--resume", str(folder), cwd=tmp_path))
    assert line.endswith(
        f"--resume {folder} is a comparison folder, not a run; its runs: "
        f"{folder / 'fedavg-20261122-101500'} (finished), {folder / 'semanticfl-20261122-101900'} (unfinished)"
    )


ROWS = [
    {
        "algorithm": name,
        "final_accuracy": 74.92,
        "best_accuracy": 75.31,
        "rounds_to_target": reached,
        "total_time_s": 1234.5,
        "mean_round_time_s": 61.7,
        "bytes_per_client_per_round": 352_000.0,
    }
    for name, reached in [("fedavg", 12), ("semanticfl", None), ("scaffold", 9)]
]


def render(table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=80).print(table)
    return buffer.getvalue()


@pytest.mark.parametrize("target", [0.0, 70.0])
def test_comparison_table_fits_80_columns_without_cutting_a_word(target):
    text = render(comparison_table(ROWS, target))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for word in ("fedavg", "semanticfl", "scaffold", "final", "client", "round"):
        assert word in text


def test_rounds_to_target_column_only_when_there_is_a_target():
    assert "rounds to" not in render(comparison_table(ROWS, 0.0))
    with_target = render(comparison_table(ROWS, 70.0))
    assert "rounds to" in with_target and "70 % ┃" in with_target
    assert "—: 70 % not reached" in with_target  # semanticfl's row


def test_comparison_line_names_the_side_by_side_plot(tmp_path):
    assert comparison_line(tmp_path).endswith(f"side-by-side plot {tmp_path / 'accuracy.png'})")


def test_accuracy_plot_has_integer_rounds_and_the_setting_in_its_title():
    config = load_config("cifar10_cnn", ["partition.alpha=0.1", "partition.num_clients=7"])
    setting = run_setting(config)
    assert setting == "cifar10, dirichlet α=0.1, 7 clients, 2 local epochs"
    rounds = [{"round": r, "test_accuracy": 10.0 + r} for r in range(1, 21)]
    ax = accuracy_figure({"fedavg": rounds}, "cifar10_cnn: test accuracy per round", setting).axes[0]
    assert ax.get_title() == f"cifar10_cnn: test accuracy per round\n{setting}"
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 20]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_setting_names_the_scheme_parameter_that_matters():
    assert run_setting(load_config(None, ["partition.scheme=iid"])).startswith("fashion_mnist, iid, 10 clients")
    pathological = load_config(None, ["partition.scheme=pathological", "partition.classes_per_client=3"])
    assert "pathological #C=3" in run_setting(pathological)
