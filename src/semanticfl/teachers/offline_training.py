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
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from semanticfl.data.datasets import ImageDataset, images_to_tensor, load_image_dataset
from semanticfl.data.splits import stratified_holdout
from semanticfl.errors import UserError
from semanticfl.files import atomic_write_text
from semanticfl.models.text import MINILM_NAME, MINILM_PACKAGE, MiniLMPromptEncoder
from semanticfl.teachers.base import DEFAULT_TEMPLATE, NULL_PROMPT, class_prompts
from semanticfl.teachers.offline import (
    CHIRAL_DATASETS,
    FORMAT_VERSION,
    TEACHER_FILE,
    build_scheduler,
    build_unet,
    indices_sha256,
    module_sha256,
    prepare_images,
)
from semanticfl.teachers.taef2 import TAEF2

logger = logging.getLogger(__name__)

WARMUP_STEPS = 100
MIN_LR_FACTOR = 0.1
EMA_DECAY = 0.999
LOSS_SMOOTHING = 0.98
ENCODE_CHUNK = 500
STATE_DIR = "training-state"

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- training data


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


def public_split(dataset: ImageDataset, holdout_size: int, holdout_seed: int) -> np.ndarray:
    """The server's public split: the stratified holdout that no federated client holds."""
    if holdout_size < 1:
        raise UserError(
            f"holdout_size must be >= 1 (the public split the teacher trains on), got {holdout_size}"
        )
    return stratified_holdout(dataset.train_labels, holdout_size, holdout_seed)


@torch.no_grad()
def encode_latents(
    taef2: TAEF2, images: np.ndarray, indices: np.ndarray, resolution: int, flip: bool
) -> Tensor:
    """Unscaled TAEF2 latents of ``images[indices]``, followed by those of their mirror images if ``flip``."""
    parts, mirrored = [], []
    for start in range(0, len(indices), ENCODE_CHUNK):
        x = prepare_images(images_to_tensor(images, indices[start : start + ENCODE_CHUNK]), resolution)
        parts.append(taef2.encode(x))
        if flip:
            mirrored.append(taef2.encode(x.flip(-1)))
    return torch.cat(parts + mirrored)


def prompt_states(text: MiniLMPromptEncoder, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Token states and masks of the class prompts followed by the null prompt (row ``len(prompts)``)."""
    return text.tokens([*prompts, NULL_PROMPT])


# ------------------------------------------------------------------------------------------------ training


class _EMA:
    """Exponential moving average of a module's weights, with the usual warm-up of the decay."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.module.parameters(), module.parameters()):
            average.lerp_(current, 1 - decay)


def _lr_factor(step: int, progress: float) -> float:
    """Linear warm-up over WARMUP_STEPS, then a cosine decay to MIN_LR_FACTOR over the (time) budget."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return warm * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class _Trainer:
    """Epsilon-prediction training of the U-Net on precomputed latents and prompt states."""

    def __init__(
        self, unet, scheduler, latents, labels, states, *, batch_size, lr, cond_dropout, seed
    ) -> None:
        self.unet, self.scheduler = unet.train(), scheduler
        self.latents, self.labels = latents, labels
        self.states, self.mask = states
        self.null_row = len(states[0]) - 1
        self.batch_size, self.lr, self.cond_dropout = batch_size, lr, cond_dropout
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
        self.ema = _EMA(unet, EMA_DECAY)
        self.steps = scheduler.config.num_train_timesteps

    def _batch(self) -> tuple[Tensor, Tensor, Tensor]:
        g = self.generator
        rows = torch.randint(len(self.latents), (self.batch_size,), generator=g)
        dropped = torch.rand(self.batch_size, generator=g) < self.cond_dropout
        prompts = torch.where(dropped, self.null_row, self.labels[rows])
        return self.latents[rows], prompts, torch.randint(self.steps, (self.batch_size,), generator=g)

    def step(self, step: int, progress: float) -> float:
        clean, prompts, t = self._batch()
        noise = torch.randn(clean.shape, generator=self.generator)
        noisy = self.scheduler.add_noise(clean, noise, t)
        predicted = self.unet(
            noisy, t, encoder_hidden_states=self.states[prompts], encoder_attention_mask=self.mask[prompts]
        ).sample
        loss = F.mse_loss(predicted, noise)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * _lr_factor(step, progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.unet, step)
        return float(loss.detach())


# ------------------------------------------------------------------------------------------------- saving


def _check_out_dir(out_dir: Path, resume: bool) -> None:
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


def _save(out_dir: Path, unet: nn.Module, scheduler, meta: dict) -> None:
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


def _training_data(
    dataset_name: str,
    holdout_size: int,
    holdout_seed: int,
    resolution: int,
    limit: int | None,
    augment_flip: bool,
    prompt_template: str,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], dict]:
    """Scaled latents, labels and prompt states of the public split, and the provenance for teacher.json."""
    dataset = load_image_dataset(dataset_name)
    split = public_split(dataset, holdout_size, holdout_seed)
    used = split if limit is None else split[:limit]
    flip = augment_flip and dataset_name not in CHIRAL_DATASETS
    taef2 = TAEF2.from_directory()
    raw = encode_latents(taef2, dataset.train_images, used, resolution, flip)
    shift, scale = float(raw.mean()), float(1 / raw.std())
    labels = torch.as_tensor(np.asarray(dataset.train_labels)[used], dtype=torch.long).repeat(
        2 if flip else 1
    )
    text = MiniLMPromptEncoder.load()
    states = prompt_states(text, class_prompts(dataset.classes, prompt_template))
    provenance = {
        "dataset": dataset_name,
        "classes": list(dataset.classes),
        "prompt_template": prompt_template,
        "resolution": resolution,
        "codec": {
            "name": "taef2",
            "shift": shift,
            "scaling_factor": scale,
            "encoder_sha256": module_sha256(taef2.encoder),
        },
        "text": {"name": MINILM_NAME, "package": MINILM_PACKAGE, "fingerprint": text.fingerprint()},
        "trained_on": {
            "dataset": dataset_name,
            "split": "train",
            "holdout_size": holdout_size,
            "holdout_seed": holdout_seed,
            "indices_sha256": indices_sha256(split),
            "samples_used": len(used),
            "flipped_copies": flip,
        },
    }
    return (raw - shift) * scale, labels, states, provenance




# ------------------------------------------------------------------------------------------ the plan, state


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


def save_state(folder: Path, plan: TrainingPlan, trainer: _Trainer, progress: Progress) -> None:
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


def load_state(folder: Path, trainer: _Trainer) -> None:
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


# ------------------------------------------------------------------------------------------------ the loop


def _train_steps(
    trainer: _Trainer,
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
    _check_out_dir(out_dir, resume)
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
        latents, labels, states, provenance = _training_data(
            plan.dataset, plan.holdout_size, plan.holdout_seed, plan.resolution, plan.limit,
            plan.augment_flip, plan.prompt_template,
        )
        log(f"encoded {len(latents)} public-split latents in {time.perf_counter() - began:.0f} s")
        unet, scheduler = build_unet(plan.resolution, plan.unet_config), build_scheduler()
        trainer = _Trainer(
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
    _save(out_dir, trainer.ema.module, scheduler, _metadata(plan, progress, provenance, unet))
    if finished:
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
        log(f"saved the offline teacher to {out_dir} ({progress.step} steps, loss {progress.smoothed:.4f})")
    else:
        log(
            f"stopped at step {progress.step} of {plan.max_steps}; the teacher in {out_dir} "
            f"holds these weights -- continue with: semanticfl teacher train CONFIG --out {out_dir} --resume"
        )
    return out_dir
