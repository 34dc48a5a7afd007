"""Offline-teacher training stops and continues exactly: a run split by a stop and ``resume`` ends with
the same weights as one uninterrupted run of the same steps; bad resumes are one-line errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from semanticfl.errors import UserError
from semanticfl.teachers import offline
from semanticfl.teachers.offline_state import STATE_DIR, read_plan
from semanticfl.teachers.offline_training import train_offline_teacher

TINY_UNET = {"block_out_channels": (32, 32, 32), "norm_num_groups": 8, "attention_head_dim": 4}
PLAN = {
    "holdout_size": 2000, "holdout_seed": 3, "limit": 64, "batch_size": 16, "lr": 1e-3, "unet_config": TINY_UNET,
    "threads": 1,
}
STEPS = 6

pytestmark = pytest.mark.usefixtures("fashion_mnist_available")


def train(folder, **overrides):
    return train_offline_teacher("fashion_mnist", folder, **{**PLAN, "minutes": 10.0, **overrides})


def weights(folder):
    return load_file(folder / offline.UNET_WEIGHTS)


def test_a_stopped_and_resumed_training_equals_an_uninterrupted_one(tmp_path):
    whole = train(tmp_path / "whole", max_steps=STEPS)
    assert not (whole / STATE_DIR).exists()  # finished: no state left

    split = train(tmp_path / "split", max_steps=STEPS, until_step=3)
    plan, progress = read_plan(split)
    assert (plan.max_steps, progress.step) == (STEPS, 3)
    train_offline_teacher(None, split, minutes=10.0, resume=True, threads=1)
    assert not (split / STATE_DIR).exists()
    a, b = weights(whole), weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert offline.teacher_info(split)["training"]["steps"] == STEPS


def test_resume_without_a_state_and_restart_over_one_are_clear_errors(tmp_path):
    done = train(tmp_path / "done", max_steps=2)
    with pytest.raises(UserError, match="no unfinished training to resume"):
        train_offline_teacher(None, done, minutes=1.0, resume=True)
    (done / STATE_DIR).mkdir()
    with pytest.raises(UserError, match="continue it with --resume"):
        train(done, max_steps=2)


def test_a_damaged_state_is_a_one_line_error(tmp_path):
    folder = train(tmp_path / "t", max_steps=4, until_step=1)
    (folder / STATE_DIR / "unet.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="damaged"):
        train_offline_teacher(None, folder, minutes=1.0, resume=True, threads=1)
