"""FedDifRC and SemanticFL end to end through the CLI with the offline teacher shipped for
Fashion-MNIST (pretrained TAEF2 + MiniLM + the trained U-Net): nothing downloaded, the server's
10,000-sample split (the teacher's training data) withheld from every client."""

import json

import pytest
from helpers import read_rounds, run_dirs, semanticfl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]

TINY = [
    "partition.num_clients=3",
    "data.train_fraction=0.004",
    "teacher.fit_samples=128",
    "train.rounds=2",
    "engine.parallel_clients=2",
]
FEDDIFRC = ["algorithm.name=feddifrc", "algorithm.feddifrc.layer_dims=[128,128,64]"]
SEMANTICFL_LOCAL = ["algorithm.name=semanticfl", "algorithm.semanticfl.mode=local"]


@pytest.fixture
def env(tmp_path):
    return {"SEMANTICFL_CACHE": str(tmp_path / "cache")}


def feature_lines(tmp_path, env, *overrides: str) -> list[str]:
    done = semanticfl("features", "quickstart", *TINY, *overrides, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def run_rounds(tmp_path, env, *overrides: str) -> list[dict]:
    out = tmp_path / "runs"
    done = semanticfl("run", "quickstart", *TINY, *overrides, f"experiment.output_dir={out}", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return read_rounds(run_dirs(out)[0])


def test_feddifrc_with_the_offline_teacher(tmp_path, env):
    lines = feature_lines(tmp_path, env, *FEDDIFRC)
    # TDCL: every sample under the 10 class prompts; NDCR: the null prompt; 128+128+64 = 320 dims
    assert [line.split(":")[0] for line in lines] == ["feddifrc.tdcl", "feddifrc.ndcr"]
    assert "× (10, 320)" in lines[0] and "× (320,)" in lines[1]
    rounds = run_rounds(tmp_path, env, *FEDDIFRC)
    assert [r["clients"] for r in rounds] == [3, 3]
    # CE and TDCL each start near ln 10 = 2.30, NDCR adds a positive distance; the sum falls
    assert rounds[0]["train_loss"] > 2 * 2.30 and rounds[1]["train_loss"] < rounds[0]["train_loss"]


def test_semanticfl_local_mode_with_the_offline_teacher(tmp_path, env):
    lines = feature_lines(tmp_path, env, *SEMANTICFL_LOCAL)
    # the VAE latent (32 channels) and three up-blocks, fused: 32+128+128+64 = 352 dims
    assert [line.split(":")[0] for line in lines] == ["semanticfl.target"]
    assert "× (352,)" in lines[0]
    rounds = run_rounds(tmp_path, env, *SEMANTICFL_LOCAL)
    assert [r["clients"] for r in rounds] == [3, 3]
    # CE starts near ln 10 = 2.30; the consistency KL adds to it; the sum falls
    assert rounds[0]["train_loss"] > 2.30 + 1 and rounds[1]["train_loss"] < rounds[0]["train_loss"]


@pytest.mark.parametrize("algorithm", [
    ["algorithm.name=semanticfl", "algorithm.semanticfl.mode=guidance", "algorithm.semanticfl.guidance_source=public"],
    ["algorithm.name=datashare", "algorithm.datashare.source=generated", "teacher.sample_steps=2"],
])
def test_guidance_set_runs_with_the_offline_teacher(tmp_path, env, algorithm):
    rounds = run_rounds(tmp_path, env, *algorithm, "algorithm.semanticfl.guidance_per_class=3", "algorithm.datashare.per_class=3")
    assert [r["clients"] for r in rounds] == [3, 3]
    summary = json.loads((run_dirs(tmp_path / "runs")[0] / "summary.json").read_text())
    features = 352 * 2 if "mode=guidance" in algorithm[1] else 0  # float16 teacher features per image
    assert summary["guidance_bytes_down_per_client"] == 30 * (28 * 28 + 8 + features)
