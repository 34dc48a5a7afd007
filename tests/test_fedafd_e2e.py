"""FedAFD end to end through Flower's Simulation Engine, with the message audit: no client
weights leave a client, only its features of the public set."""

from __future__ import annotations

import json

import pytest
from helpers import read_rounds, run_dirs, semanticfl

from semanticfl.data.wordnet import SYSTEM_WORDNET_DIR
from semanticfl.engine.audit import read_audit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SYSTEM_WORDNET_DIR / "data.noun").is_file(), reason="apt-get install wordnet-base"),
]

PUBLIC, DIM = 200, 32
TINY = [
    "experiment.name=fedafd-tiny",
    "partition.num_clients=3",
    "partition.alpha=0.5",
    "data.train_fraction=0.01",
    f"data.server_holdout={PUBLIC}",
    "train.rounds=2",
    "train.local_epochs=1",
    "engine.parallel_clients=2",
    "engine.audit=true",
    'algorithm.fedafd.clients=["image:cnn", "text:bow", "pair:cnn+gru"]',
    f"algorithm.fedafd.feature_dim={DIM}",
    "algorithm.fedafd.test_size=200",
    "algorithm.fedafd.target_rsum=1",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedafd")
    result = semanticfl("run", "multimodal_cifar10", *TINY, f"experiment.output_dir={out}", cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    return run_dir


def test_only_public_features_leave_a_client(tiny_run):
    train = [m for m in read_audit(tiny_run / "messages.jsonl") if m["type"] == "train"]
    assert len(train) == 2 * 3
    expected = {"image": {"public_image"}, "text": {"public_text"}, "pair": {"public_image", "public_text"}}
    kinds = {}
    for message in train:
        records = message["records"]
        assert records["model"] == {"kind": "arrays", "arrays": {}}  # no weights uploaded
        arrays = records["extra"]["arrays"]
        for array in arrays.values():
            assert array["shape"] == [PUBLIC, DIM] and array["dtype"] == "float32"
            assert PUBLIC * DIM * 4 <= array["bytes"] < PUBLIC * DIM * 4 + 1024  # values + Flower's header
        kinds.setdefault(frozenset(arrays), 0)
        kinds[frozenset(arrays)] += 1
    assert kinds == {frozenset(v): 2 for v in expected.values()}
    for record in read_rounds(tiny_run):
        ups = {c["id"]: c["bytes_up"] for c in record["client_metrics"]}
        assert ups == {0: PUBLIC * DIM * 4, 1: PUBLIC * DIM * 4, 2: 2 * PUBLIC * DIM * 4}


def test_rounds_and_summary_hold_client_and_server_metrics(tiny_run):
    rounds = read_rounds(tiny_run)
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert 0 <= record["client_image_top1"] <= 100 and 0 <= record["client_text_top1"] <= 100
        assert 0 < record["server_rsum"] <= 600 and 0 < record["client_pair_rsum"] <= 600
        assert record["server_r1_i2t"] <= record["server_r5_i2t"] <= record["server_r10_i2t"]
        assert set(record["client_tests"]) == {"0", "1", "2"}
        assert record["test_accuracy"] is None  # no single classifier to score
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["final_server_rsum"] == rounds[-1]["server_rsum"]
    assert summary["rounds_to_target_rsum"] == 1  # rsum 1 is below any model's
    assert summary["client_pair_rsum"] == rounds[-1]["client_pair_rsum"]


def test_layout_that_does_not_match_the_clients_is_a_one_line_error(tmp_path):
    result = semanticfl("run", "multimodal_cifar10", "partition.num_clients=4", f"experiment.output_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert "algorithm.fedafd.clients lists 10 clients but partition.num_clients is 4" in result.stderr
    assert run_dirs(tmp_path) == []
