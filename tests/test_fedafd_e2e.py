"""FedAFD end to end through Flower's Simulation Engine, with the message audit: no client
weights leave a client, only its features of the public set; and ``variant=code``, whose
discriminators' Adam state (client state) and distillation AdamP state (server state) must carry a
run stopped by ``--until-round`` to exactly the uninterrupted result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import read_rounds, run_dirs, semanticfl, without_timings

from semanticfl.data.wordnet import SYSTEM_WORDNET_DIR
from semanticfl.engine.audit import read_audit
from semanticfl.engine.checkpoint import load_latest_checkpoint
from semanticfl.engine.client_state import ClientStateStore

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


CODE = [*TINY, "algorithm.fedafd.variant=code", "engine.audit=false", "train.rounds=3"]


@pytest.mark.timeout(1200)  # three tiny runs: several minutes on 2 busy cores
def test_the_code_variant_resumes_exactly_with_its_optimiser_states(tmp_path):
    whole_out, stopped_out = tmp_path / "whole", tmp_path / "stopped"
    whole = semanticfl("run", "multimodal_cifar10", *CODE, f"experiment.output_dir={whole_out}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = semanticfl("run", "multimodal_cifar10", *CODE, f"experiment.output_dir={stopped_out}",
                         "--until-round", "2", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    (run_dir,) = run_dirs(stopped_out)
    resumed = semanticfl("run", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (whole_dir,) = run_dirs(whole_out)
    assert without_timings(read_rounds(run_dir)) == without_timings(read_rounds(whole_dir))
    final, expected = load_latest_checkpoint(run_dir / "checkpoints"), load_latest_checkpoint(whole_dir / "checkpoints")
    assert any(k.startswith("distill_optimizer.") for k in expected.server_state)  # AdamP's moments
    for name, value in [*expected.global_arrays.items(), *expected.server_state.items()]:
        np.testing.assert_array_equal({**final.global_arrays, **final.server_state}[name], value, err_msg=name)
    state = ClientStateStore(whole_dir / "client-state", keep=2).load_before(2, 4)  # the image-text client
    passes, batches = 3 * 1, -(-PUBLIC // 64)  # 3 rounds x 1 local epoch, one BAA pass each
    assert state["optimizer.discriminator.0.step"].tolist() == [passes * batches]
