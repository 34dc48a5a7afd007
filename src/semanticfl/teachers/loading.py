"""Loading the ``[teacher]`` of a config: Stable Diffusion from a diffusers folder, or the offline teacher.

Inputs are plain (the teacher section, the dataset, the client pool), so the engine calls this without
handing its experiment down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semanticfl.config import TeacherConfig
from semanticfl.data.splits import stratified_holdout
from semanticfl.errors import UserError
from semanticfl.teachers.base import ExtractionSettings, TeacherShape
from semanticfl.teachers.diffusion import DiffusionTeacher
from semanticfl.teachers.offline import (
    load_offline_teacher,
    offline_teacher_shape,
    shipped_teacher_dir,
    teacher_info,
)


def placeholder_settings(cfg: TeacherConfig) -> ExtractionSettings:
    """The section's extraction settings; each request replaces the timestep and up-blocks."""
    return ExtractionSettings(
        resolution=cfg.resolution,
        noise_draws=cfg.noise_draws,
        batch_size=cfg.batch_size,
        up_blocks=(0,),
        seed=cfg.seed,
    )


def load_teacher(
    cfg: TeacherConfig, dataset_name: str, train_labels: np.ndarray, client_pool: np.ndarray, device: str
) -> DiffusionTeacher:
    """The frozen teacher of ``cfg``; an offline teacher must not have seen a client's sample."""
    settings = placeholder_settings(cfg)
    if cfg.kind == "stable_diffusion":
        from semanticfl.teachers.sd import load_stable_diffusion

        return load_stable_diffusion(
            require_sd_path(cfg), settings, device=device, allow_download=cfg.allow_download
        )
    folder = offline_teacher_folder(cfg, dataset_name)
    check_teacher_data_withheld(folder, dataset_name, train_labels, client_pool)
    return load_offline_teacher(folder, settings, device=device)


def teacher_shape(cfg: TeacherConfig, dataset_name: str) -> TeacherShape:
    """The widths of the teacher ``cfg`` names, read from its configs (no weights loaded): what
    ``layer_dims = "auto"`` and ``text_dim = "auto"`` resolve to, the same on server and clients."""
    if cfg.kind == "stable_diffusion":
        from semanticfl.teachers.sd import stable_diffusion_shape

        return stable_diffusion_shape(require_sd_path(cfg), cfg.allow_download)
    return offline_teacher_shape(offline_teacher_folder(cfg, dataset_name))


PREBUILT = "prebuilt"
"""A teacher folder's subfolder of finished feature-store entries (e.g. its guidance set's samples)."""


def prebuilt_entries(cfg: TeacherConfig, dataset_name: str) -> tuple[Path, ...]:
    """The teacher folder's ``prebuilt/`` store entries, if it has any (a hub id has none). A run
    without a teacher (the ``datashare`` control on the public split) has none and needs no folder."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
    else:
        folder = None if cfg.kind == "stable_diffusion" else shipped_teacher_dir(dataset_name)
    return (folder / PREBUILT,) if folder is not None and (folder / PREBUILT).is_dir() else ()


def require_sd_path(cfg: TeacherConfig) -> str:
    """``teacher.path`` of a Stable Diffusion teacher, which must be set."""
    if not cfg.path:
        raise UserError(
            "teacher.kind=stable_diffusion needs teacher.path: a local diffusers folder of an SD 1.x/2.x "
            "checkpoint (or a hub id with teacher.allow_download=true and a network)"
        )
    return cfg.path


def offline_teacher_folder(cfg: TeacherConfig, dataset_name: str) -> Path:
    """``teacher.path``, else the weights shipped for the dataset, else a clear error."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    shipped = shipped_teacher_dir(dataset_name)
    if shipped is None:
        raise UserError(
            f"no offline teacher ships for dataset '{dataset_name}'; train one with "
            f"'semanticfl teacher train CONFIG' and set teacher.path=FOLDER"
        )
    return shipped


def check_teacher_data_withheld(
    folder: Path, dataset_name: str, train_labels: np.ndarray, client_pool: np.ndarray
) -> None:
    """The samples the offline teacher was trained on must be withheld from every client."""
    trained_on = teacher_info(folder).get("trained_on", {})
    if trained_on.get("dataset") != dataset_name:
        return  # trained on another dataset: nothing of this one to withhold
    size, seed = int(trained_on["holdout_size"]), int(trained_on["holdout_seed"])
    used = stratified_holdout(train_labels, size, seed)
    leaked = np.intersect1d(used, client_pool)
    if len(leaked):
        raise UserError(
            f"the teacher in {folder} was trained on {size} samples of {dataset_name} that clients would "
            f"hold ({len(leaked)} overlap); withhold them with data.server_holdout={size} "
            f"data.holdout_seed={seed}"
        )
