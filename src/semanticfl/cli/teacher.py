"""``semanticfl teacher train|report``: build and judge the offline teacher of a config's dataset."""

from __future__ import annotations

import json
from pathlib import Path

from semanticfl.engine.experiment import Experiment
from semanticfl.errors import UserError
from semanticfl.files import atomic_write_text


def train_teacher(experiment: Experiment, out: Path, minutes: float) -> Path:
    """Train on the config's server split (``data.server_holdout``), which no client holds."""
    from semanticfl.teachers.offline import train_offline_teacher

    data = experiment.config.data
    if data.server_holdout <= 0:
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
        seed=experiment.config.experiment.seed,
        log=lambda line: print(line, flush=True),
    )


def report_teacher(experiment: Experiment, out: Path, timestep: int) -> dict:
    """Linear-probe accuracy of the teacher's features, extraction rate and a PCA plot, in ``out``."""
    import dataclasses

    from semanticfl.engine.teacher_targets import load_teacher, with_settings
    from semanticfl.teachers.offline import evaluate_teacher

    teacher = load_teacher(experiment)
    blocks = tuple(range(len(teacher.unet.up_blocks)))
    teacher = with_settings(
        teacher, dataclasses.replace(teacher.settings, timestep=timestep, up_blocks=blocks)
    )
    out.mkdir(parents=True, exist_ok=True)
    public = experiment.holdout_indices
    if len(public) == 0:
        raise UserError("the probe trains on the server's public split; set data.server_holdout")
    report = evaluate_teacher(
        teacher,
        experiment.dataset,
        public_indices=public,
        plot_path=out / "teacher_pca.png",
        seed=experiment.config.experiment.seed,
    )
    atomic_write_text(out / "teacher_report.json", json.dumps(report, indent=2) + "\n")
    return report
