"""The message audit, for every registered algorithm: two tiny rounds with ``engine.audit=true``,
then every client → server message is checked against what the algorithm declares it uploads
(docs/ALGORITHMS.md, docs/RELIABILITY.md): the model's own arrays (names, shapes, dtypes), the
declared extras with their exact shapes, and scalar metrics -- nothing else, and no array shaped
like an image or a batch of the client's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_dirs, semanticfl

from semanticfl.algorithms import ALGORITHMS
from semanticfl.algorithms.feddisco import HISTOGRAM_KEY
from semanticfl.algorithms.fednova import NORMALIZER
from semanticfl.config import load_config
from semanticfl.engine.audit import array_bytes, read_audit
from semanticfl.engine.experiment import Experiment
from semanticfl.models import state_to_numpy

# The first test makes every algorithm's run (about a minute each on 2 busy cores).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available"), pytest.mark.timeout(2400)]

TINY = [
    "partition.num_clients=3",
    "partition.alpha=0.5",
    "data.train_fraction=0.01",
    "train.rounds=2",
    "engine.parallel_clients=2",
    "engine.audit=true",
    "teacher.fit_samples=128",
    "algorithm.feddifrc.layer_dims=[128,128,64]",
]
# Every algorithm the audit covers, with the extras (name → shape) its clients upload besides
# the model; a newly registered algorithm fails test_every_registered_algorithm_is_audited
# until it has a row here.
EXTRAS = {
    "fedavg": lambda model, classes: {},
    "fedprox": lambda model, classes: {},
    "scaffold": lambda model, classes: {n: list(p.shape) for n, p in model.named_parameters()},
    "moon": lambda model, classes: {},
    "fednova": lambda model, classes: {NORMALIZER: [1]},
    "feddyn": lambda model, classes: {},
    "fednh": lambda model, classes: {"prototypes": [classes, model.feature_dim], "class_counts": [classes]},
    "fedrcl": lambda model, classes: {},
    "feddisco": lambda model, classes: {HISTOGRAM_KEY: [classes]},
    "fedcda": lambda model, classes: {},
    "feddifrc": lambda model, classes: {},
    "semanticfl": lambda model, classes: {},
    "datashare": lambda model, classes: {},
}


# Audited by their own end-to-end test, on another config.
AUDITED_ELSEWHERE = {"fedafd": "tests/test_fedafd_e2e.py (multimodal_cifar10: public features only, no model)"}


def test_every_registered_algorithm_is_audited():
    unaudited = sorted(set(ALGORITHMS) - set(EXTRAS) - set(AUDITED_ELSEWHERE))
    assert not unaudited, f"add {unaudited} to EXTRAS in tests/test_message_audit.py"


@pytest.fixture(scope="module")
def audited_runs(tmp_path_factory):
    """One ``semanticfl compare`` over every audited algorithm; algorithm → run directory."""
    folder = tmp_path_factory.mktemp("audit")
    result = semanticfl(
        "compare", "quickstart", *TINY, "--algorithms", ",".join(EXTRAS), f"experiment.output_dir={folder}",
        cwd=folder, timeout=1500, env={"SEMANTICFL_CACHE": str(folder / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (comparison,) = [p for p in run_dirs(folder) if p.name != "cache"]
    rows = json.loads((comparison / "comparison.json").read_text())
    return {row["algorithm"]: Path(row["run_dir"]) for row in rows}


@pytest.mark.parametrize("name", list(EXTRAS))
def test_clients_send_only_the_model_declared_extras_and_metrics(name, audited_runs):
    run_dir = audited_runs[name]
    experiment = Experiment(load_config(str(run_dir / "config.toml")))
    model = experiment.build_model()
    state = state_to_numpy(model)
    expected_model = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
    expected_extras = EXTRAS[name](model, experiment.dataset.num_classes)
    audit = read_audit(run_dir / "messages.jsonl")

    assert [m["type"] for m in audit].count("query") == 3
    train = [m for m in audit if m["type"] == "train"]
    assert len(train) == 2 * 3  # two rounds, every client
    for message in audit:
        assert "error" not in message, message
        for record in message["records"].values():
            if record["kind"] == "metrics":
                assert record["list_lengths"] == {}, record  # scalars only
                continue
            assert record["kind"] == "arrays", record
            for array in record["arrays"].values():
                assert array["shape"][-2:] != [28, 28], array  # no image, no batch of images
    for message in train:
        records = message["records"]
        assert sorted(records) == ["extra", "metrics", "model"]
        assert {k: [a["shape"], a["dtype"]] for k, a in records["model"]["arrays"].items()} == expected_model
        assert {k: a["shape"] for k, a in records["extra"]["arrays"].items()} == expected_extras
        assert {"num_examples", "partition_id", "train_loss"} <= set(records["metrics"]["keys"])

    # The audit counts serialised arrays (payload + a small .npy header each); metrics the payload.
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    payload = sum(r["bytes_up_per_client"] for r in rounds) / len(rounds)
    headers = len(expected_model) + len(expected_extras)
    assert payload < sum(array_bytes(m) for m in train) / len(train) <= payload + 256 * headers
