"""``semanticfl teacher train|report|sample``: build, judge and sample the teacher of a config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from semanticfl.engine.experiment import Experiment
from semanticfl.errors import UserError
from semanticfl.files import atomic_write, atomic_write_text


def train_teacher(
    experiment: Experiment, out: Path, minutes: float, steps: int | None = None, resume: bool = False
) -> Path:
    """Train on the config's server split (``data.server_holdout``), which no client holds."""
    from semanticfl.teachers.offline_training import train_offline_teacher

    data = experiment.config.data
    if data.server_holdout <= 0 and not resume:
        raise UserError(
            "the offline teacher trains on the server's public split, which is empty; set "
            "data.server_holdout (e.g. 10000) -- runs that use the teacher must withhold the same split"
        )
    if minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    _ = experiment.dataset  # a missing dataset fails here, before any training
    return train_offline_teacher(
        data.dataset,
        out,
        holdout_size=data.server_holdout,
        holdout_seed=data.holdout_seed,
        resolution=experiment.config.teacher.resolution,
        minutes=minutes,
        max_steps=steps,
        resume=resume,
        seed=experiment.config.experiment.seed,
        log=lambda line: print(line, flush=True),
    )


def report_teacher(experiment: Experiment, out: Path, timestep: int) -> dict:
    """Linear-probe accuracy of the teacher's features, extraction rate and a PCA plot, in ``out``."""
    from semanticfl.teachers.quality import evaluate_teacher
    from semanticfl.teachers.targets import with_settings

    teacher = experiment.teacher_targets.teacher
    blocks = tuple(range(len(teacher.unet.up_blocks)))
    teacher = with_settings(
        teacher, dataclasses.replace(teacher.settings, timestep=timestep, up_blocks=blocks)
    )
    public = experiment.holdout_indices
    if len(public) == 0:
        raise UserError("the probe trains on the server's public split; set data.server_holdout")
    out.mkdir(parents=True, exist_ok=True)
    report = evaluate_teacher(
        teacher,
        experiment.dataset,
        public_indices=public,
        plot_path=out / "teacher_pca.png",
        seed=experiment.config.experiment.seed,
    )
    atomic_write_text(out / "teacher_report.json", json.dumps(report, indent=2) + "\n")
    return report


def sample_teacher(experiment: Experiment, out: Path, per_class: int, progress: bool) -> Path:
    """``per_class`` generated images of every class (cached like features) → ``out``/samples.npz, a
    labelled grid ``out``/grid.png, and their feature-store entry ``out``/prebuilt/KEY (copied into a
    teacher folder, runs with this teacher and sampler read the images instead of generating them)."""
    from semanticfl.teachers.base import GuidanceRequest, class_prompts
    from semanticfl.teachers.guidance import generated_entry, guidance_set
    from semanticfl.teachers.loading import PREBUILT
    from semanticfl.teachers.sampling import save_grid

    if per_class < 1:
        raise UserError(f"--per-class must be >= 1, got {per_class}")
    ds = experiment.dataset
    targets = experiment.teacher_targets
    targets.progress = progress
    request = GuidanceRequest("samples", per_class, tuple(class_prompts(ds.classes)))
    samples = guidance_set(targets, request)
    out.mkdir(parents=True, exist_ok=True)
    classes = np.array(ds.classes)
    atomic_write(out / "samples.npz", lambda f: np.savez(f, images=samples.images, labels=samples.labels, classes=classes))
    c = experiment.config.teacher
    title = (
        f"{ds.name}: teacher {c.path or 'shipped'}, {c.sample_steps} {c.sampler} steps, "
        f"guidance {c.guidance_scale}, seed {c.seed}"
    )
    atomic_write(
        out / "grid.png", lambda f: save_grid(samples.images, samples.labels, list(ds.classes), f, title=title)
    )
    entry = generated_entry(targets, request.prompts, samples.labels)  # the entry just built: a cache hit
    shutil.copytree(entry.path, out / PREBUILT / entry.key, dirs_exist_ok=True)
    return out
