"""The offline teacher's folder on disk: the checks before a training, the atomic write of the teacher
(fp16 U-Net, scheduler, teacher.json), and a training's plan, progress and resumable state under
``training-state/``."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from semanticfl.errors import UserError
from semanticfl.files import atomic_write_text
from semanticfl.teachers.base import DEFAULT_TEMPLATE
from semanticfl.teachers.offline import TEACHER_FILE
from semanticfl.teachers.offline_trainer import Trainer

STATE_DIR = "training-state"


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """Refuse (before any training) to replace a folder that holds something other than a teacher, to
    start over an unfinished training, or to resume one that is not there."""
    state = out_dir / STATE_DIR
    if resume and not (state / "state.json").is_file():
        raise UserError(
            f"{out_dir} holds no unfinished training to resume ({STATE_DIR}/ missing: it finished, or was "
            "started without a step budget); train again with --steps N"
        )
    if resume:
        return
    if state.exists():
        raise UserError(f"{out_dir} holds an unfinished training; continue it with --resume {out_dir}")
    if out_dir.exists() and not (out_dir / TEACHER_FILE).is_file() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not a teacher folder; choose an empty or new folder")


def _replace_folder(staged: Path, out_dir: Path) -> None:
    """Move the complete ``staged`` folder to ``out_dir``, replacing an earlier teacher folder there."""
    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    retired = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.replace(out_dir, retired / out_dir.name)
    os.replace(staged, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """World-readable modes (temp folders are owner-only); the weights ship as package data."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def save_teacher(out_dir: Path, unet: nn.Module, scheduler, meta: dict) -> None:
    """unet/ (fp16 safetensors), scheduler/ and teacher.json, written to a temp folder, then renamed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        copy.deepcopy(unet).half().save_pretrained(staged / "unet", safe_serialization=True)
        scheduler.save_pretrained(staged / "scheduler")
        (staged / TEACHER_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        _make_readable(staged)
        if (out_dir / STATE_DIR).is_dir():
            os.replace(out_dir / STATE_DIR, staged / STATE_DIR)
        _replace_folder(staged, out_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@dataclass(frozen=True)
class TrainingPlan:
    """Everything one training's result depends on (recorded in the state, so a resume repeats it)."""

    dataset: str
    holdout_size: int
    holdout_seed: int = 0
    resolution: int = 32
    batch_size: int = 128
    lr: float = 3e-4
    seed: int = 0
    prompt_template: str = DEFAULT_TEMPLATE
    cond_dropout: float = 0.1
    augment_flip: bool = True
    limit: int | None = None
    max_steps: int | None = None
    unet_config: dict = field(default_factory=dict)


@dataclass
class Progress:
    """Where a training stands: steps done, the loss log, the smoothed loss, minutes spent in all."""

    step: int = 0
    loss_log: list = field(default_factory=list)
    smoothed: float | None = None
    minutes: float = 0.0


def save_state(folder: Path, plan: TrainingPlan, trainer: Trainer, progress: Progress) -> None:
    """U-Net, EMA, optimiser, batch RNG and progress under ``folder``/training-state/, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=folder, prefix=f".{STATE_DIR}.tmp-"))
    try:
        save_file({k: v.contiguous() for k, v in trainer.unet.state_dict().items()}, staged / "unet.safetensors")
        save_file(
            {k: v.contiguous() for k, v in trainer.ema.module.state_dict().items()}, staged / "ema.safetensors"
        )
        torch.save(
            {"optimizer": trainer.optimizer.state_dict(), "generator": trainer.generator.get_state()},
            staged / "optimizer.pt",
        )
        atomic_write_text(
            staged / "state.json", json.dumps({"plan": asdict(plan), "progress": asdict(progress)}) + "\n"
        )
        retired = folder / f".{STATE_DIR}.old"
        shutil.rmtree(retired, ignore_errors=True)
        if (folder / STATE_DIR).exists():
            os.replace(folder / STATE_DIR, retired)
        os.replace(staged, folder / STATE_DIR)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def read_plan(folder: Path) -> tuple[TrainingPlan, Progress]:
    try:
        saved = json.loads((folder / STATE_DIR / "state.json").read_text(encoding="utf-8"))
        return TrainingPlan(**saved["plan"]), Progress(**saved["progress"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the training state in {folder / STATE_DIR} ({exc}); train again") from None


def load_state(folder: Path, trainer: Trainer) -> None:
    state = folder / STATE_DIR
    try:
        trainer.unet.load_state_dict(load_file(state / "unet.safetensors"))
        trainer.ema.module.load_state_dict(load_file(state / "ema.safetensors"))
        saved = torch.load(state / "optimizer.pt", weights_only=True)
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.generator.set_state(saved["generator"])
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"the training state in {state} is damaged ({reason}); train again") from None
