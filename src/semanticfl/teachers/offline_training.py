"""Training the offline teacher (:mod:`semanticfl.teachers.offline`) on the server's public split.

Epsilon-prediction training (Ho et al. 2020) of the small diffusers U-Net on TAEF2 latents of the public
split, class prompts as conditions and the null prompt in ``cond_dropout`` of the steps (classifier-free
guidance's recipe), AdamW with a linear warm-up and a cosine decay, EMA weights saved.

With a step budget (``max_steps``) the schedule is a function of the step alone, so training can stop --
at the wall-clock budget, or killed -- and continue with ``resume=True`` to exactly the weights one
uninterrupted run of the same steps gives: every ``checkpoint_every`` steps (and when the time budget
ends) the U-Net, its EMA, the optimiser, the batch RNG and the loss log are written to
``<teacher folder>/training-state/``; the teacher folder itself always holds the latest EMA weights in
fp16 (what ships), and the state is deleted once the planned steps are done.

The parts: :mod:`~semanticfl.teachers.offline_data` (the public split's latents and prompt states),
:mod:`~semanticfl.teachers.offline_trainer` (the training step, EMA, lr schedule) and
:mod:`~semanticfl.teachers.offline_state` (the teacher folder, the plan and the resumable state); this module
checks the arguments and runs the loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semanticfl.errors import UserError
from semanticfl.teachers.base import DEFAULT_TEMPLATE
from semanticfl.teachers.offline import FORMAT_VERSION, build_scheduler, build_unet
from semanticfl.teachers.offline_data import training_data
from semanticfl.teachers.offline_state import (
    STATE_DIR,
    Progress,
    TrainingPlan,
    check_out_dir,
    load_state,
    read_plan,
    save_state,
    save_teacher,
)
from semanticfl.teachers.offline_trainer import EMA_DECAY, WARMUP_STEPS, Trainer

logger = logging.getLogger(__name__)

LOSS_SMOOTHING = 0.98

Log = Callable[[str], None]


def _check_training_args(resolution: int, minutes: float, batch_size: int, cond_dropout: float) -> None:
    problems = [
        (resolution < 8 or resolution % 8, f"resolution must be a positive multiple of 8, got {resolution}"),
        (not minutes > 0, f"minutes must be > 0, got {minutes}"),
        (batch_size < 1, f"batch_size must be >= 1, got {batch_size}"),
        (not 0 <= cond_dropout < 1, f"cond_dropout must be in [0, 1), got {cond_dropout}"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def _train_steps(
    trainer: Trainer,
    plan: TrainingPlan,
    progress: Progress,
    seconds: float,
    on_checkpoint: Callable[[], None],
    checkpoint_every: int,
    log_every: int,
    log: Log,
    until_step: int | None = None,
) -> None:
    """Steps until ``plan.max_steps``, ``until_step`` or the wall-clock budget; with a step budget the lr
    schedule is a function of the step alone (exactly resumable), without one of the time spent."""
    start, window, spent = time.perf_counter(), [], progress.minutes
    last = min(step for step in (plan.max_steps, until_step) if step is not None) if plan.max_steps else None
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (last is not None and progress.step >= last):
            break
        fraction = progress.step / plan.max_steps if plan.max_steps else elapsed / seconds
        loss = trainer.step(progress.step, fraction)
        progress.step += 1
        window.append(loss)
        s = progress.smoothed
        progress.smoothed = loss if s is None else LOSS_SMOOTHING * s + (1 - LOSS_SMOOTHING) * loss
        progress.minutes = spent + (time.perf_counter() - start) / 60
        if progress.step % log_every == 0:
            progress.loss_log.append([progress.step, float(np.mean(window))])
            log(
                f"step {progress.step}: loss {progress.loss_log[-1][1]:.4f} "
                f"(smoothed {progress.smoothed:.4f}, {progress.minutes:.1f} min)"
            )
            window = []
        if plan.max_steps and progress.step % checkpoint_every == 0 and progress.step < plan.max_steps:
            on_checkpoint()


def _metadata(plan: TrainingPlan, progress: Progress, provenance: dict, unet: nn.Module) -> dict:
    return {
        "format": FORMAT_VERSION,
        "kind": "offline",
        **provenance,
        "unet": {"parameters": sum(p.numel() for p in unet.parameters()), "dtype": "float16"},
        "training": {
            "steps": progress.step,
            "planned_steps": plan.max_steps,
            "minutes": round(progress.minutes, 3),
            "final_loss_ema": progress.smoothed,
            "loss_log": progress.loss_log,
            "batch_size": plan.batch_size,
            "lr": plan.lr,
            "warmup_steps": WARMUP_STEPS,
            "ema_decay": EMA_DECAY,
            "cond_dropout": plan.cond_dropout,
            "seed": plan.seed,
            "objective": "epsilon-prediction MSE, t uniform in [0, 1000)",
        },
    }


def train_offline_teacher(
    dataset_name: str | None,
    out_dir: Path,
    *,
    holdout_size: int = 0,
    holdout_seed: int = 0,
    resolution: int = 32,
    minutes: float,
    batch_size: int = 128,
    lr: float = 3e-4,
    seed: int = 0,
    prompt_template: str = DEFAULT_TEMPLATE,
    cond_dropout: float = 0.1,
    augment_flip: bool = True,
    log: Log | None = None,
    log_every: int = 50,
    limit: int | None = None,
    max_steps: int | None = None,
    unet_config: dict | None = None,
    threads: int | None = None,
    resume: bool = False,
    checkpoint_every: int = 250,
    until_step: int | None = None,
) -> Path:
    """Train the offline teacher of ``dataset_name`` for at most ``minutes`` (and ``max_steps``); returns
    ``out_dir``. With ``resume`` the plan recorded in ``out_dir`` is continued (the other arguments but
    ``minutes``, ``until_step``, ``log*`` and ``threads`` are ignored); ``until_step`` stops a step-budget
    training early, resumable, like ``semanticfl run --until-round``.

    Only the public split ``stratified_holdout(train_labels, holdout_size, holdout_seed)`` is used (its
    first ``limit`` samples if given, for tests). ``unet_config`` overrides :data:`DEFAULT_UNET`. Runs on
    ``threads`` torch threads (default: every core the process may use); the EMA weights are saved.
    """
    log = log or logger.info
    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume)
    if resume:
        plan, progress = read_plan(out_dir)
    else:
        plan = TrainingPlan(
            dataset_name, holdout_size, holdout_seed, resolution, batch_size, lr, seed, prompt_template,
            cond_dropout, augment_flip, limit, max_steps, dict(unet_config or {}),
        )
        progress = Progress()
    _check_training_args(plan.resolution, minutes, plan.batch_size, plan.cond_dropout)
    if plan.max_steps is not None and plan.max_steps < 1:
        raise UserError(f"--steps must be >= 1, got {plan.max_steps}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        torch.manual_seed(plan.seed)
        began = time.perf_counter()
        latents, labels, states, provenance = training_data(
            plan.dataset, plan.holdout_size, plan.holdout_seed, plan.resolution, plan.limit,
            plan.augment_flip, plan.prompt_template,
        )
        log(f"encoded {len(latents)} public-split latents in {time.perf_counter() - began:.0f} s")
        unet, scheduler = build_unet(plan.resolution, plan.unet_config), build_scheduler()
        trainer = Trainer(
            unet, scheduler, latents, labels, states,
            batch_size=plan.batch_size, lr=plan.lr, cond_dropout=plan.cond_dropout, seed=plan.seed,
        )
        if resume:
            load_state(out_dir, trainer)
            log(f"resuming at step {progress.step} of {plan.max_steps}")

        def checkpoint() -> None:
            save_state(out_dir, plan, trainer, progress)

        _train_steps(
            trainer, plan, progress, minutes * 60, checkpoint, checkpoint_every, log_every, log, until_step
        )
    finally:
        torch.set_num_threads(previous_threads)
    finished = plan.max_steps is None or progress.step >= plan.max_steps
    if not finished:
        checkpoint()
    save_teacher(out_dir, trainer.ema.module, scheduler, _metadata(plan, progress, provenance, unet))
    if finished:
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
        log(f"saved the offline teacher to {out_dir} ({progress.step} steps, loss {progress.smoothed:.4f})")
    else:
        log(
            f"stopped at step {progress.step} of {plan.max_steps}; the teacher in {out_dir} "
            f"holds these weights -- continue with: semanticfl teacher train CONFIG --out {out_dir} --resume"
        )
    return out_dir
