"""Teacher-guided runs end to end through the CLI, on a tiny randomly initialised Stable Diffusion
(the real diffusers classes and extraction path, no download) and Fashion-MNIST."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import (
    Processes,
    read_rounds,
    run_dirs,
    semanticfl,
    start_insecure_federation,
    start_semanticfl,
    wait_for_run_dir,
    wait_for_text,
)

from semanticfl.config import load_config
from semanticfl.engine.audit import read_audit
from semanticfl.engine.checkpoint import load_latest_checkpoint
from semanticfl.engine.experiment import Experiment
from semanticfl.teachers.sd import build_tiny_stable_diffusion

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]

TINY = [
    "partition.num_clients=3",
    "data.server_holdout=1000",
    "data.train_fraction=0.004",
    "teacher.kind=stable_diffusion",
    "teacher.fit_samples=64",
    "train.rounds=2",
    "engine.parallel_clients=2",
]
FEDDIFRC = ["algorithm.name=feddifrc", 'algorithm.feddifrc.layers=["up-2","up-1"]', "algorithm.feddifrc.layer_dims=[16,16]"]
SEMANTICFL = [
    "algorithm.name=semanticfl",
    'algorithm.semanticfl.layers=["latent","up-2","up-1"]',
    "algorithm.semanticfl.layer_dims=[4,16,16]",
    "algorithm.semanticfl.text_dim=32",
]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture
def env(tmp_path):
    return {"SEMANTICFL_CACHE": str(tmp_path / "cache")}


def test_features_are_extracted_once_and_keyed_by_the_timestep_and_teacher_seed(tmp_path, tiny_sd, env):
    args = ["features", "quickstart", *TINY, f"teacher.path={tiny_sd}", *FEDDIFRC]
    first = semanticfl(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["feddifrc.tdcl", "feddifrc.ndcr"]
    assert "× (10, 32)" in lines[0] and "× (32,)" in lines[1]
    again = semanticfl(*args, cwd=tmp_path, env=env)
    paths = lambda out: [line.rsplit("→ ", 1)[1] for line in out.strip().splitlines()]
    assert paths(again.stdout) == paths(first.stdout)
    ndcr_only = semanticfl(*args, "algorithm.feddifrc.lambda_tdcl=0", cwd=tmp_path, env=env)
    assert paths(ndcr_only.stdout) == paths(first.stdout)[1:]  # the same request: a cache hit
    later = semanticfl(*args, "algorithm.feddifrc.lambda_tdcl=0", "algorithm.feddifrc.timestep=600", cwd=tmp_path, env=env)
    assert later.returncode == 0, later.stderr
    assert paths(later.stdout) != paths(ndcr_only.stdout)
    other_noise = semanticfl(*args, "algorithm.feddifrc.lambda_tdcl=0", "teacher.seed=3", cwd=tmp_path, env=env)
    assert other_noise.returncode == 0, other_noise.stderr
    assert paths(other_noise.stdout) != paths(ndcr_only.stdout)  # other noise draws, other features


def test_an_incomplete_checkpoint_stops_the_cli_in_one_line_naming_the_file(tmp_path, tiny_sd, env):
    partial = Path(shutil.copytree(tiny_sd, tmp_path / "partial"))
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    done = semanticfl("features", "quickstart", *TINY, f"teacher.path={partial}", "algorithm.name=semanticfl",
                      cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"semanticfl: error: the Stable Diffusion checkpoint at {partial} is incomplete: missing "
        "vae/diffusion_pytorch_model.safetensors (the VAE's weights); download"
    ), line


def test_the_teachers_noise_follows_teacher_seed_not_experiment_seed(tiny_sd):
    """So every seed of a sweep (over the same client pool) reads one feature-store entry."""
    def noise_seed(*overrides):
        config = load_config("quickstart", [*TINY, f"teacher.path={tiny_sd}", *overrides])
        return Experiment(config).teacher_targets.teacher.settings.seed

    assert noise_seed("experiment.seed=3") == noise_seed() == 0
    assert noise_seed("experiment.seed=3", "teacher.seed=5") == 5


def test_feddifrc_trains_on_cached_teacher_features(tmp_path, tiny_sd, env):
    out = tmp_path / "runs"
    done = semanticfl("run", "quickstart", *TINY, f"teacher.path={tiny_sd}", *FEDDIFRC,
                      f"experiment.output_dir={out}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    rounds = read_rounds(run_dirs(out)[0])
    assert len(rounds) == 2 and all(r["clients"] == 3 for r in rounds)
    assert all(r["train_loss"] == r["train_loss"] and r["train_loss"] > 0 for r in rounds)  # finite


def test_feddifrc_with_injected_encodings_extracts_tdcl_on_the_clients_every_round(tmp_path, tiny_sd, env):
    inject = [*TINY, f"teacher.path={tiny_sd}", *FEDDIFRC, "algorithm.feddifrc.inject_encoding=true"]
    listed = semanticfl("features", "quickstart", *inject, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    tdcl, ndcr = listed.stdout.strip().splitlines()
    assert tdcl.startswith("feddifrc.tdcl: conditioned on the client model") and "(10, 32)" in tdcl
    assert ndcr.startswith("feddifrc.ndcr:") and "→ " in ndcr  # cached as before
    out = tmp_path / "runs"
    done = semanticfl("run", "quickstart", *inject, f"experiment.output_dir={out}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    rounds = read_rounds(run_dirs(out)[0])
    assert [r["clients"] for r in rounds] == [3, 3]
    assert all(r["train_loss"] > 2.30 for r in rounds)  # CE + TDCL (≈ ln 10 each at the start) + NDCR


def test_semanticfl_anchors_mode_clients_send_only_model_arrays_and_metrics(tmp_path, tiny_sd, env):
    out = tmp_path / "runs"
    done = semanticfl("run", "quickstart", *TINY, f"teacher.path={tiny_sd}", *SEMANTICFL,
                      "algorithm.semanticfl.mode=anchors", "engine.audit=true", f"experiment.output_dir={out}",
                      cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    run_dir = run_dirs(out)[0]
    model = Experiment(load_config(str(run_dir / "config.toml"), [])).build_model()
    shapes = {name: list(value.shape) for name, value in model.state_dict().items()}
    audit = read_audit(run_dir / "messages.jsonl")
    train = [m for m in audit if m["type"] == "train"]
    assert len(train) == 2 * 3 and all("error" not in m for m in train)
    for message in audit:
        kinds = {name: record["kind"] for name, record in message["records"].items()}
        assert set(kinds.values()) <= {"arrays", "metrics"}
    for message in train:
        arrays = message["records"]["model"]["arrays"]
        assert "teacher_projection.weight" in arrays and "text_projection.weight" in arrays
        assert message["records"]["extra"]["arrays"] == {}
        assert {name: spec["shape"] for name, spec in arrays.items()} == shapes
    assert len({json.dumps(m["records"]["model"]["arrays"], sort_keys=True) for m in train}) == 1


def test_semanticfl_offload_mode_exchanges_noised_latents_once(tmp_path, tiny_sd, env):
    out = tmp_path / "runs"
    done = semanticfl("run", "quickstart", *TINY, f"teacher.path={tiny_sd}", *SEMANTICFL,
                      "algorithm.semanticfl.mode=offload", "engine.audit=true", f"experiment.output_dir={out}",
                      cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    run_dir = run_dirs(out)[0]
    audit = read_audit(run_dir / "messages.jsonl")
    sent = [m for m in audit if m["type"] == "query.offload"]
    assert len(sent) == 3 and len([m for m in audit if m["type"] == "query.offloaded"]) == 3
    sizes = []
    for message in sent:
        (name, spec), = message["records"]["extra"]["arrays"].items()
        assert name == "semanticfl.target.noised" and spec["dtype"] == "float16"
        draws, n, channels, height, width = spec["shape"]  # the tiny SD: 4 latent channels, 32 px / 4
        assert (draws, channels, height, width) == (1, 4, 8, 8)
        sizes.append(n)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["offload_bytes_up_per_client"] == pytest.approx(sum(sizes) / 3 * 4 * 8 * 8 * 2)
    # the features come back once: 4 + 16 + 16 fused dims, float16
    assert summary["offload_bytes_down_per_client"] == pytest.approx(sum(sizes) / 3 * 36 * 2)
    train = [m for m in audit if m["type"] == "train"]
    assert len(train) == 2 * 3 and all(m["records"]["extra"]["arrays"] == {} for m in train)


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's executables are not on PATH")
def test_a_supernode_killed_during_the_offload_exchange_is_left_out_and_the_round_completes(tmp_path, tiny_sd, env):
    """Three SuperNodes on 127.0.0.1; client 2 hangs in the offload exchange (faults.rounds=[0]) and its
    SuperNode is SIGKILLed there. The server leaves client 2 out of the offload (an error or no reply, never
    a crash) and round 1 aggregates the other two (train.min_clients=2)."""
    procs = Processes(tmp_path)
    log = tmp_path / "run.log"
    try:
        link_port = start_insecure_federation(procs, 3)
        out = tmp_path / "runs"
        run = start_semanticfl(
            "run", "quickstart", *TINY, f"teacher.path={tiny_sd}", *SEMANTICFL, "algorithm.semanticfl.mode=offload",
            "train.rounds=1", "train.min_clients=2", "train.client_timeout_s=60", "faults.hang_clients=[2]",
            "faults.rounds=[0]", "faults.hang_s=600", "engine.backend=deployment", f"experiment.output_dir={out}",
            "--superlink", f"127.0.0.1:{link_port}",
            cwd=tmp_path, log=log, env={**env, "FLWR_HOME": str(tmp_path / "cli-home")},
        )
        run_dir = wait_for_run_dir(out, run)
        wait_for_text(tmp_path / "supernode2.log", "client 2 hangs in the offload", run)
        procs.kill("supernode2")
        assert run.wait(timeout=400) == 0, log.read_text()[-3000:] + procs.log("superlink")
    finally:
        procs.stop_all()
    text = log.read_text()
    assert "offload (noised latents): client 2" in text and "Traceback" not in text
    (first,) = read_rounds(run_dir)
    assert (first["clients"], list(first["failures"])) == (2, ["2"])
    assert [c["id"] for c in first["client_metrics"]] == [0, 1]


def test_missing_stable_diffusion_weights_is_a_one_line_error(tmp_path, env):
    done = semanticfl("run", "quickstart", *TINY, f"teacher.path={tmp_path / 'nope'}", *FEDDIFRC,
                      cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(tmp_path / "nope") in done.stderr
    assert "Traceback" not in done.stderr


def test_semanticfl_guidance_mode_sends_the_generated_set_once_and_clients_send_only_weights(tmp_path, tiny_sd, env):
    out = tmp_path / "runs"
    guidance = ["algorithm.semanticfl.mode=guidance", "algorithm.semanticfl.guidance_per_class=2", "teacher.sample_steps=2"]
    done = semanticfl("run", "quickstart", *TINY, f"teacher.path={tiny_sd}", *SEMANTICFL, *guidance,
                      "engine.audit=true", f"experiment.output_dir={out}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    run_dir = run_dirs(out)[0]
    audit = read_audit(run_dir / "messages.jsonl")
    acks = [m for m in audit if m["type"] == "query.guidance"]
    assert len(acks) == 3 and all(set(m["records"]) == {"metrics"} for m in acks)  # an acknowledgement only
    train = [m for m in audit if m["type"] == "train"]
    assert len(train) == 2 * 3 and all(m["records"]["extra"]["arrays"] == {} for m in train)
    summary = json.loads((run_dir / "summary.json").read_text())
    # 20 images of 1×28×28 uint8, 20 int64 labels, 20 × (4 + 16 + 16) float16 features, sent once
    assert summary["guidance_bytes_down_per_client"] == 20 * 28 * 28 + 20 * 8 + 20 * 36 * 2
    assert summary["final_accuracy"] is not None


README = Path(__file__).resolve().parents[1] / "README.md"
SHARED_CIFAR10 = README.parent.parent / "shared" / "data" / "cifar10"
SMALLER = ["train.rounds=1", "train.local_epochs=1", "partition.num_clients=2", "data.train_fraction=0.005",
           "teacher.resolution=32", "teacher.fit_samples=200", "eval.central=false"]
"""What sizes the README's Stable Diffusion recipe down to a test: one round, two clients, 200 images, the
tiny SD's 32 px, 200 fit images (>= the 128 dims of a layer), no ResNet-10 pass over 20,000 evaluation
images."""


def readme_sd_recipe() -> list[str]:
    """The README's Stable Diffusion command, as the arguments after ``semanticfl``."""
    (line,) = [line for line in README.read_text().splitlines() if line.startswith("semanticfl run cifar10_sd ")]
    return shlex.split(line.split("#")[0])[1:]


def test_the_readmes_stable_diffusion_recipe_runs_as_written(tmp_path, tiny_sd, env):
    if not (SHARED_CIFAR10 / "train.parquet").is_file():
        pytest.skip(f"no shared CIFAR-10 parquet at {SHARED_CIFAR10}")
    recipe = readme_sd_recipe()
    assert recipe[:2] == ["run", "cifar10_sd"] and [arg.split("=")[0] for arg in recipe[2:]] == ["teacher.path"]
    out = tmp_path / "runs"
    done = semanticfl(*recipe[:2], f"teacher.path={tiny_sd}", *SMALLER, f"experiment.output_dir={out}",
                      cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    (run,) = run_dirs(out)
    assert [r["round"] for r in read_rounds(run)] == [1]
    ran = load_config(str(run / "config.toml"))
    assert (ran.algorithm.name, ran.teacher.kind, ran.data.server_holdout) == ("semanticfl", "stable_diffusion", 10000)
    arrays = load_latest_checkpoint(run / "checkpoints").global_arrays
    # auto dims: the tiny SD's latent (4) and up-blocks 1..3 (64, 32, 32 channels, under the cap of 128),
    # and its 32-d text encoder; ResNet-10's 512-d features project into both
    assert arrays["teacher_projection.weight"].shape == (4 + 64 + 32 + 32, 512)
    assert arrays["text_projection.weight"].shape == (32, 512)
