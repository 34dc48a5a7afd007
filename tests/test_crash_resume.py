"""Crash and resume: a real ``semanticfl run`` is SIGKILLed as soon as a (seeded) random round is
checkpointed, continued with ``--resume``, and must give exactly the per-round records and final
model of an uninterrupted run with the same seed -- for one with client state (SCAFFOLD, 2 of 3
clients a round) and both teacher-guided ones (the shipped offline teacher), whose stateless FedAvg
server is every FedAvg-skeleton algorithm's.
A run stopped by ``--until-round`` whose newest checkpoint is then damaged resumes the same way."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal

import numpy as np
import pytest
from helpers import (
    read_rounds,
    run_dirs,
    semanticfl,
    start_semanticfl,
    wait_for_file,
    wait_for_run_dir,
    without_timings,
)

from semanticfl.config import load_config
from semanticfl.engine.checkpoint import checkpoint_path, load_latest_checkpoint
from semanticfl.engine.experiment import Experiment
from semanticfl.models import state_to_numpy

# Three runs per test (uninterrupted, killed, resumed): several minutes each on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available"), pytest.mark.timeout(1200)]

ROUNDS = 4
SMALL = [
    "partition.num_clients=3",
    "partition.alpha=0.5",
    "data.train_fraction=0.02",
    f"train.rounds={ROUNDS}",
    "train.lr=0.05",
    "engine.parallel_clients=2",
    "teacher.fit_samples=128",
]
ALGORITHMS = {
    "scaffold": ["algorithm.name=scaffold", "train.fraction_fit=0.67"],
    "feddifrc": ["algorithm.name=feddifrc", "algorithm.feddifrc.layer_dims=[128,128,64]"],
    "semanticfl": ["algorithm.name=semanticfl"],
}


def kill_round(name: str) -> int:
    """The round after whose checkpoint the run of ``name`` is killed: random, but seeded."""
    return random.Random(f"crash-{name}").randint(1, ROUNDS - 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One dataset and feature cache for the module: a resumed run reuses its features."""
    return {"SEMANTICFL_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """Run directory of each algorithm's run from start to end (made on first use)."""
    done: dict = {}

    def run(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(f"whole-{name}")
            result = semanticfl("run", "quickstart", *SMALL, *ALGORITHMS[name],
                                f"experiment.output_dir={out}", cwd=out, env=cache)
            assert result.returncode == 0, result.stderr[-3000:]
            (done[name],) = run_dirs(out)
        return done[name]

    return run


def crash_after_round(folder, overrides, round_number, env):
    """Start a run and SIGKILL it (with its Ray workers) once ``round_number`` is checkpointed."""
    out = folder / "runs"
    run = start_semanticfl("run", "quickstart", *SMALL, *overrides, f"experiment.output_dir={out}",
                           cwd=folder, log=folder / "run.log", env=env)
    try:
        run_dir = wait_for_run_dir(out, run)
        wait_for_file(checkpoint_path(run_dir / "checkpoints", round_number), run)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert not (run_dir / "summary.json").exists()  # it really died mid-run
    assert not checkpoint_path(run_dir / "checkpoints", ROUNDS).exists()
    return run_dir


def assert_same_run(resumed, whole):
    assert without_timings(read_rounds(resumed)) == without_timings(read_rounds(whole))
    final, expected = load_latest_checkpoint(resumed / "checkpoints"), load_latest_checkpoint(whole / "checkpoints")
    assert final.round == expected.round == ROUNDS
    for name, value in expected.global_arrays.items():
        np.testing.assert_array_equal(final.global_arrays[name], value, err_msg=name)
    assert final.server_state.keys() == expected.server_state.keys()
    for name, value in expected.server_state.items():
        np.testing.assert_array_equal(final.server_state[name], value, err_msg=name)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_killed_run_resumes_to_the_uninterrupted_result(name, uninterrupted, tmp_path, cache):
    whole = uninterrupted(name)
    run_dir = crash_after_round(tmp_path, ALGORITHMS[name], kill_round(name), cache)
    resumed = semanticfl("run", "--resume", str(run_dir), cwd=tmp_path, env=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, whole)
    if name == "scaffold":
        assert sorted(p.name for p in (whole / "client-state").iterdir()) == [f"client-000{i}" for i in range(3)]
        # SCAFFOLD sends the model plus a control variate both ways (the CNN has no buffers).
        model = Experiment(load_config(str(whole / "config.toml"))).build_model()
        model_bytes = sum(value.nbytes for value in state_to_numpy(model).values())
        assert all(r["bytes_up_per_client"] == r["bytes_down_per_client"] == 2 * model_bytes
                   for r in read_rounds(whole))


def test_a_run_stopped_by_until_round_with_a_truncated_checkpoint_resumes_from_the_one_before(
    uninterrupted, tmp_path, cache
):
    """SCAFFOLD stopped cleanly by ``--until-round 3``; round 3's checkpoint is then cut short. Resume
    must skip it (with a warning), redo round 3 from round 2 -- client state included -- and match."""
    whole = uninterrupted("scaffold")
    out = tmp_path / "runs"
    stopped = semanticfl("run", "quickstart", *SMALL, *ALGORITHMS["scaffold"], f"experiment.output_dir={out}",
                         "--until-round", "3", cwd=tmp_path, env=cache)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    assert [r["round"] for r in read_rounds(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["complete"] is False
    newest = checkpoint_path(run_dir / "checkpoints", 3)
    newest.write_bytes(newest.read_bytes()[:-100])
    resumed = semanticfl("run", "--resume", str(run_dir), cwd=tmp_path, env=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping damaged checkpoint: {newest}" in resumed.stderr
    assert "round 3/4" in resumed.stderr  # round 3 was run again
    assert_same_run(run_dir, whole)
