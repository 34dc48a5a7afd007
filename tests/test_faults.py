"""Failing clients: injected with ``[faults]``, excluded from aggregation, logged with their id;
the run goes on while ``train.min_clients`` answer and stops cleanly (exit 1, one line) below."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import (
    Processes,
    read_rounds,
    run_dirs,
    semanticfl,
    start_insecure_federation,
    start_semanticfl,
    wait_for_file,
    wait_for_run_dir,
)

from semanticfl.algorithms.base import ClientTask
from semanticfl.config import load_config
from semanticfl.engine.checkpoint import checkpoint_path, load_checkpoint
from semanticfl.engine.client import injected_fault, local_update, poison
from semanticfl.engine.experiment import Experiment
from semanticfl.engine.server import error_summary
from semanticfl.errors import UserError
from semanticfl.models import state_to_numpy

TINY = [
    "partition.alpha=0.5",
    "data.train_fraction=0.05",
    "train.lr=0.05",
    "engine.parallel_clients=2",
]


# --------------------------------------------------------------------------- the [faults] section


def test_faults_are_off_by_default():
    faults = load_config("quickstart").faults
    assert (faults.raise_clients, faults.nan_clients, faults.hang_clients, faults.rounds) == ((), (), (), ())
    assert all(injected_fault(faults, client, 1) is None for client in range(10))


@pytest.mark.parametrize(
    "override, message",
    [
        ("faults.raise_clients=[10]", "faults.raise_clients: client 10 is not a partition id in [0, 10)"),
        ("faults.nan_clients=[-1]", "faults.nan_clients: client -1 is not a partition id"),
        ("faults.hang_clients=[1.5]", "faults.hang_clients[0] must be an integer"),
        ("faults.hang_s=0", "faults.hang_s must be > 0"),
        ("faults.rounds=[-1, 2]", "faults.rounds are round numbers >= 1 (0: the offload exchange), got [-1]"),
        ("faults.raise_clients=3", "faults.raise_clients must be a list"),
        ("faults.crash=true", "unknown setting 'faults.crash'"),
    ],
)
def test_bad_faults_are_rejected(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("quickstart", [override])


def test_bad_faults_exit_2_with_one_line(tmp_path):
    result = semanticfl("config", "quickstart", "faults.hang_clients=[99]", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "semanticfl: error: faults.hang_clients: client 99 is not a partition id in [0, 10)"
    ]


def test_injected_fault_picks_by_client_and_round():
    faults = load_config(
        "quickstart",
        ["faults.raise_clients=[1]", "faults.hang_clients=[2]", "faults.nan_clients=[3]", "faults.rounds=[2, 4]"],
    ).faults
    assert [injected_fault(faults, c, 2) for c in range(5)] == [None, "raise", "hang", "nan", None]
    assert [injected_fault(faults, c, 3) for c in range(5)] == [None] * 5


def test_poison_puts_nan_and_inf_into_the_first_float_array():
    arrays = {"steps": np.array(3, dtype=np.int64), "w": np.zeros((2, 2), np.float32)}
    original = arrays["w"]
    poison(arrays)
    assert np.isnan(arrays["w"][0, 0]) and np.isposinf(arrays["w"][1, 1])
    assert not original.any() and arrays["steps"] == 3  # the caller's array is not modified


def test_error_summary_keeps_the_exception_text_of_a_flower_error_report():
    report = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
        '  File "client.py", line 69, in train\nRuntimeError: boom in round 1\n\n'
        "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
        "Message: boom in round 1'>"
    )
    assert error_summary(report) == "boom in round 1"
    assert error_summary("Traceback ...\nValueError: x\n") == "ValueError: x"
    assert len(error_summary("x" * 500)) == 200


# --------------------------------------------------------------------------- simulation


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_available")
def test_failing_clients_are_excluded_logged_and_survived(tmp_path):
    """Round 1 of 5 clients: #1 raises, #2 returns NaN/Inf, #3 hangs past the timeout; the global
    model is FedAvg over #0 and #4 alone. Round 2 has no faults and aggregates all five."""
    faults = [
        "faults.raise_clients=[1]", "faults.nan_clients=[2]", "faults.hang_clients=[3]",
        "faults.hang_s=20", "faults.rounds=[1]", "train.client_timeout_s=15",
    ]
    out = tmp_path / "runs"
    result = semanticfl(
        "run", "quickstart", *TINY, "partition.num_clients=5", "train.rounds=2", *faults,
        f"experiment.output_dir={out}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    first, second = read_rounds(run_dir)
    assert first["failures"] == {
        "1": "raised: injected fault: client 1 raises in round 1",
        "2": "returned NaN/Inf values",
        "3": "no reply within train.client_timeout_s=15.0",
    }
    assert (first["clients"], first["failed_clients"]) == (2, 3)
    assert [c["id"] for c in first["client_metrics"]] == [0, 4]
    assert (second["clients"], second["failures"]) == (5, {})
    for line in [
        "round 1: client 1 excluded: raised: injected fault: client 1 raises in round 1",
        "round 1: client 2 excluded: returned NaN/Inf values",
        "round 1: client 3 excluded: no reply within train.client_timeout_s=15.0",
    ]:
        assert line in result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["failed_client_rounds"] == 3

    experiment = Experiment(load_config(str(run_dir / "config.toml")))
    initial = state_to_numpy(experiment.build_model())
    saved = load_checkpoint(checkpoint_path(run_dir / "checkpoints", 1)).global_arrays
    healthy = aggregate_of(experiment, initial, [0, 4])
    for name in initial:
        np.testing.assert_allclose(saved[name], healthy[name], rtol=1e-5, atol=1e-7, err_msg=name)
    with_hung = aggregate_of(experiment, initial, [0, 3, 4])
    assert not all(np.allclose(saved[name], with_hung[name]) for name in initial)


def aggregate_of(experiment: Experiment, initial: dict, clients: list[int]) -> dict:
    """Round 1's aggregate over ``clients``, trained here the way the ClientApp trains them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(experiment.config.engine.threads_per_client)
    try:
        updates = []
        for client in clients:
            update = local_update(experiment, client, initial, ClientTask(round=1))
            update.client_id = client
            updates.append(update)
    finally:
        torch.set_num_threads(threads)
    return experiment.algorithm.aggregate(initial, updates, 1)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_available")
def test_too_few_usable_clients_stop_the_run_with_one_line(tmp_path):
    out = tmp_path / "runs"
    result = semanticfl(
        "run", "quickstart", *TINY, "partition.num_clients=3", "train.rounds=3", "train.min_clients=2",
        "faults.nan_clients=[0, 2]", "faults.rounds=[2]", f"experiment.output_dir={out}", cwd=tmp_path,
    )
    (run_dir,) = run_dirs(out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "semanticfl: run stopped: round 2: only 1 of 3 clients returned a usable update "
        f"(train.min_clients=2); the run stopped, resume it with: semanticfl run --resume {run_dir}"
    )
    assert "Traceback" not in result.stderr
    assert [r["round"] for r in read_rounds(run_dir)] == [1]
    assert load_checkpoint(checkpoint_path(run_dir / "checkpoints", 1)).round == 1


# --------------------------------------------------------------------------- deployment


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist_available")
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH")
def test_killed_supernodes_are_survived_then_stop_the_run_cleanly(tmp_path):
    """Three SuperNodes, train.min_clients=2. SuperNode 2 is SIGKILLed once round 1 is
    checkpointed: round 2 aggregates the other two. SuperNode 1 is killed once round 2 is
    checkpointed: round 3 has one client, so the run stops with exit 1 and one line."""
    procs = Processes(tmp_path)
    log = tmp_path / "run.log"
    try:
        link_port = start_insecure_federation(procs, 3)
        out = tmp_path / "runs"
        run = start_semanticfl(
            "run", "quickstart", *TINY, "partition.num_clients=3", "train.rounds=3", "train.min_clients=2",
            "train.client_timeout_s=180", "engine.backend=deployment", f"experiment.output_dir={out}",
            "--superlink", f"127.0.0.1:{link_port}",
            cwd=tmp_path, log=log, env={"FLWR_HOME": str(tmp_path / "cli-home")},
        )
        run_dir = wait_for_run_dir(out, run)
        wait_for_file(checkpoint_path(run_dir / "checkpoints", 1), run)
        procs.kill("supernode2")
        wait_for_file(checkpoint_path(run_dir / "checkpoints", 2), run, timeout=400)
        procs.kill("supernode1")
        assert run.wait(timeout=400) == 1, log.read_text()[-3000:] + procs.log("superlink")
    finally:
        procs.stop_all()
    assert log.read_text().strip().splitlines()[-1] == (
        "semanticfl: run stopped: round 3: only 1 of 3 clients returned a usable update "
        f"(train.min_clients=2); the run stopped, resume it with: semanticfl run --resume {run_dir}"
    )
    first, second = read_rounds(run_dir)
    assert (first["clients"], first["failures"]) == (3, {})
    assert (second["clients"], list(second["failures"])) == (2, ["2"])
    assert [c["id"] for c in second["client_metrics"]] == [0, 1]
