"""The offline teacher: a small latent diffusion model (Rombach et al. 2022) trained here, on the CPU.

No Stable Diffusion weights are reachable from this project's machines, so the teacher-guided algorithms
get a stand-in with the same parts and the same interface (a :class:`DiffusionTeacher`):

* VAE: the real pretrained TAEF2 encoder (:class:`TAEF2Codec`); its latents are shifted by their mean and
  scaled by 1/std over the training latents (SD's ``scaling_factor`` idea), both stored in teacher.json;
* text: all-MiniLM-L6-v2 token states (:class:`MiniLMPromptEncoder`, 384-d cross-attention context);
* U-Net: a diffusers ``UNet2DConditionModel`` trained with the epsilon-prediction loss, class prompts
  ``"a photo of a {class}"`` as conditions and the null prompt ``""`` in ``cond_dropout`` of the steps
  (classifier-free guidance's training recipe, which makes null-prompt features meaningful);
* scheduler: ``DDIMScheduler`` with SD's 1000-step scaled-linear betas.

It is trained only on the server's public split (:func:`stratified_holdout`), which federated clients
never hold; teacher.json records that split. A teacher folder holds ``unet/`` (fp16 safetensors),
``scheduler/`` and ``teacher.json``. :func:`evaluate_teacher` measures feature quality with linear probes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from semanticfl.data.datasets import ImageDataset, images_to_tensor, load_image_dataset
from semanticfl.engine.experiment import stratified_holdout
from semanticfl.errors import UserError
from semanticfl.teachers.base import DEFAULT_TEMPLATE, NULL_PROMPT, ExtractionSettings, class_prompts
from semanticfl.teachers.codecs import TAEF2Codec
from semanticfl.teachers.diffusion import DiffusionTeacher
from semanticfl.teachers.taef2 import TAEF2
from semanticfl.teachers.text import MINILM_NAME, MINILM_PACKAGE, MiniLMPromptEncoder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TEACHER_FILE = "teacher.json"
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
HASHED_FILES = (
    UNET_WEIGHTS,
    Path("unet") / "config.json",
    Path("scheduler") / "scheduler_config.json",
    Path(TEACHER_FILE),
)
WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
TRAIN_HINT = "train one with `semanticfl teacher train CONFIG` (or point teacher.path at a teacher folder)"
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError)

CHIRAL_DATASETS = frozenset({"mnist"})
"""Datasets whose images must not be mirrored (digits); the flip augmentation is skipped for them."""

DEFAULT_UNET = {
    "in_channels": 32,
    "out_channels": 32,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 1,
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
WARMUP_STEPS = 100
MIN_LR_FACTOR = 0.1
EMA_DECAY = 0.999
LOSS_SMOOTHING = 0.98
ENCODE_CHUNK = 500

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ building


def build_unet(resolution: int, overrides: dict | None = None) -> nn.Module:
    """A randomly initialised U-Net for ``resolution``-pixel images (latents of resolution/8)."""
    from diffusers import UNet2DConditionModel

    config = {**DEFAULT_UNET, "sample_size": resolution // TAEF2.downsample, **(overrides or {})}
    return UNet2DConditionModel(**config)


def build_scheduler():
    """DDIM with Stable Diffusion's 1000-step scaled-linear noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def prepare_images(images: Tensor, resolution: int) -> Tensor:
    """uint8 N×C×H×W (C = 1 or 3) → float N×3×R×R in [0, 1], exactly as :meth:`DiffusionTeacher.prepare`."""
    x = images.float() / 255
    x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        )
    return x.clamp(0, 1)


def _module_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


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


def _prompt_states(text: MiniLMPromptEncoder, prompts: list[str]) -> tuple[Tensor, Tensor]:
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


def _run(trainer: _Trainer, seconds: float, max_steps: int | None, log_every: int, log: Log) -> dict:
    """Train until the wall-clock budget (or ``max_steps``) is spent; the loss log and summary."""
    start, step, window, smoothed, loss_log = time.perf_counter(), 0, [], None, []
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (max_steps is not None and step >= max_steps):
            break
        progress = max(elapsed / seconds, step / max_steps if max_steps else 0.0)
        loss = trainer.step(step, progress)
        step += 1
        window.append(loss)
        smoothed = loss if smoothed is None else LOSS_SMOOTHING * smoothed + (1 - LOSS_SMOOTHING) * loss
        if step % log_every == 0:
            loss_log.append([step, float(np.mean(window))])
            log(f"step {step}: loss {loss_log[-1][1]:.4f} (smoothed {smoothed:.4f}, {elapsed / 60:.1f} min)")
            window = []
    return {
        "steps": step,
        "minutes": round((time.perf_counter() - start) / 60, 3),
        "final_loss_ema": smoothed,
        "loss_log": loss_log,
    }


# ------------------------------------------------------------------------------------------------- saving


def _check_out_dir(out_dir: Path) -> None:
    """Refuse (before any training) to replace a folder that holds something other than a teacher."""
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
    states = _prompt_states(text, class_prompts(dataset.classes, prompt_template))
    provenance = {
        "dataset": dataset_name,
        "classes": list(dataset.classes),
        "prompt_template": prompt_template,
        "resolution": resolution,
        "codec": {
            "name": "taef2",
            "shift": shift,
            "scaling_factor": scale,
            "encoder_sha256": _module_sha256(taef2.encoder),
        },
        "text": {"name": MINILM_NAME, "package": MINILM_PACKAGE, "fingerprint": text.fingerprint()},
        "trained_on": {
            "dataset": dataset_name,
            "split": "train",
            "holdout_size": holdout_size,
            "holdout_seed": holdout_seed,
            "indices_sha256": _indices_sha256(split),
            "samples_used": len(used),
            "flipped_copies": flip,
        },
    }
    return (raw - shift) * scale, labels, states, provenance


def train_offline_teacher(
    dataset_name: str,
    out_dir: Path,
    *,
    holdout_size: int,
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
) -> Path:
    """Train the offline teacher of ``dataset_name`` for ``minutes`` of wall-clock time; returns ``out_dir``.

    Only the public split ``stratified_holdout(train_labels, holdout_size, holdout_seed)`` is used (its
    first ``limit`` samples if given, for tests). ``max_steps`` stops earlier; ``unet_config`` overrides
    :data:`DEFAULT_UNET`. Runs on ``threads`` torch threads (default: every core the process may use);
    the EMA weights are saved.
    """
    _check_training_args(resolution, minutes, batch_size, cond_dropout)
    log = log or logger.info
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        torch.manual_seed(seed)
        began = time.perf_counter()
        latents, labels, states, provenance = _training_data(
            dataset_name, holdout_size, holdout_seed, resolution, limit, augment_flip, prompt_template
        )
        log(f"encoded {len(latents)} public-split latents in {time.perf_counter() - began:.0f} s")
        unet, scheduler = build_unet(resolution, unet_config), build_scheduler()
        trainer = _Trainer(
            unet,
            scheduler,
            latents,
            labels,
            states,
            batch_size=batch_size,
            lr=lr,
            cond_dropout=cond_dropout,
            seed=seed,
        )
        summary = _run(trainer, minutes * 60, max_steps, log_every, log)
    finally:
        torch.set_num_threads(threads)
    meta = {
        "format": FORMAT_VERSION,
        "kind": "offline",
        **provenance,
        "unet": {"parameters": sum(p.numel() for p in unet.parameters()), "dtype": "float16"},
        "training": {
            **summary,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_steps": WARMUP_STEPS,
            "ema_decay": EMA_DECAY,
            "cond_dropout": cond_dropout,
            "seed": seed,
            "objective": "epsilon-prediction MSE, t uniform in [0, 1000)",
        },
    }
    _save(out_dir, trainer.ema.module, scheduler, meta)
    log(
        f"saved the offline teacher to {out_dir} "
        f"({summary['steps']} steps, loss {summary['final_loss_ema']:.4f})"
    )
    return out_dir


# ------------------------------------------------------------------------------------------------ loading


def shipped_teacher_dir(dataset_name: str) -> Path | None:
    """The teacher shipped inside the package for ``dataset_name``, if there is one."""
    folder = WEIGHTS_ROOT / dataset_name
    return folder if (folder / TEACHER_FILE).is_file() else None


def teacher_info(folder: Path) -> dict:
    """The contents of ``folder``/teacher.json (checked to describe an offline teacher)."""
    path = Path(folder) / TEACHER_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no offline teacher at {folder} ({TEACHER_FILE} missing); {TRAIN_HINT}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); it is corrupt: {TRAIN_HINT}") from None
    needed = ("codec", "text", "resolution", "trained_on")
    if not isinstance(info, dict) or info.get("kind") != "offline" or any(key not in info for key in needed):
        raise UserError(f"{path} does not describe an offline teacher; {TRAIN_HINT}")
    if info.get("format") != FORMAT_VERSION:
        raise UserError(
            f"{path} has format {info.get('format')}, this version reads {FORMAT_VERSION}; {TRAIN_HINT}"
        )
    return info


def _load_parts(folder: Path):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    if not (folder / UNET_WEIGHTS).is_file():
        raise UserError(f"offline teacher weights {folder / UNET_WEIGHTS} missing; {TRAIN_HINT}")
    try:
        unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    except LOAD_ERRORS as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(
            f"cannot load the offline teacher in {folder} ({reason}); it is corrupt: {TRAIN_HINT}"
        ) from None
    return unet, scheduler


def _check_components(folder: Path, info: dict, taef2: TAEF2, text: MiniLMPromptEncoder) -> None:
    if _module_sha256(taef2.encoder) != info["codec"].get("encoder_sha256"):
        raise UserError(
            f"the teacher in {folder} was trained with other TAEF2 weights than the ones found; "
            "point SEMANTICFL_TAEF2 at the original taef2 files or retrain the teacher"
        )
    if text.fingerprint() != info["text"].get("fingerprint"):
        raise UserError(
            f"the teacher in {folder} was trained with another {MINILM_NAME} than the installed "
            f"one; reinstall `{MINILM_PACKAGE}` at the version it was trained with or retrain it"
        )


def teacher_fingerprint(folder: Path, taef2: TAEF2, text: MiniLMPromptEncoder) -> str:
    """sha256 over the U-Net weights and config, the scheduler config, teacher.json, the TAEF2 encoder's
    weights and the MiniLM weight file's hash."""
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        digest.update(name.as_posix().encode() + b"\0" + (folder / name).read_bytes())
    digest.update(f"taef2-encoder:{_module_sha256(taef2.encoder)}\0minilm:{text.fingerprint()}".encode())
    return digest.hexdigest()


def load_offline_teacher(
    folder: Path, settings: ExtractionSettings, device: str = "cpu", dtype: str = "auto"
) -> DiffusionTeacher:
    """The frozen offline teacher in ``folder`` (float32 on the CPU) as a :class:`DiffusionTeacher`."""
    folder = Path(folder)
    info = teacher_info(folder)
    unet, scheduler = _load_parts(folder)
    taef2, text = TAEF2.from_directory(), MiniLMPromptEncoder.load()
    _check_components(folder, info, taef2, text)
    if settings.resolution != info["resolution"]:
        logger.warning(
            "the teacher in %s was trained at %d px; extracting at %d px",
            folder,
            info["resolution"],
            settings.resolution,
        )
    codec = TAEF2Codec(taef2, scaling_factor=info["codec"]["scaling_factor"], shift=info["codec"]["shift"])
    fingerprint = teacher_fingerprint(folder, taef2, text)
    teacher = DiffusionTeacher(
        codec, text, unet, scheduler, settings, fingerprint, device=device, dtype=dtype
    )
    text.model.to(teacher.device)
    return teacher


# ------------------------------------------------------------------------------------------------ quality

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PROBE_ITERATIONS = 200
EXTRACT_CHUNK = 1024


def _pooled_features(teacher: DiffusionTeacher, images: np.ndarray, indices: np.ndarray) -> dict[str, Tensor]:
    """Per sample: each up block's output averaged over space and L2-normalised, plus the flat latent."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(indices), EXTRACT_CHUNK):
        chunk = indices[start : start + EXTRACT_CHUNK]
        out = teacher.features(images_to_tensor(images, chunk), torch.as_tensor(chunk), [NULL_PROMPT])
        for key, value in out.items():
            pooled = value.flatten(1) if key == "latent" else F.normalize(value.mean((2, 3)), dim=1)
            parts.setdefault(key, []).append(pooled)
    return {key: torch.cat(value) for key, value in parts.items()}


def _fused(features: dict[str, Tensor]) -> Tensor:
    return torch.cat([value for key, value in sorted(features.items()) if key != "latent"], dim=1)


def _fit_probe(x: Tensor, y: Tensor, classes: int, weight_decay: float) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full-batch L-BFGS, L2 penalty ``weight_decay / 2 · |W|²``."""
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=PROBE_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(probe: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    weight, bias = probe
    return float(((x @ weight + bias).argmax(1) == y).float().mean())


def linear_probe(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, seed: int = 0
) -> dict:
    """Test accuracy of a standardised logistic-regression probe whose weight decay is picked on a
    held-out fifth of the training rows."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    fit, val = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    scores = {
        wd: _accuracy(_fit_probe(train[fit], train_labels[fit], classes, wd), train[val], train_labels[val])
        for wd in WEIGHT_DECAYS
    }
    best = max(scores, key=scores.get)
    probe = _fit_probe(train, train_labels, classes, best)
    return {"accuracy": _accuracy(probe, test, test_labels), "weight_decay": best}


def _pca_plot(features: Tensor, labels: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = features - features.mean(0)
    coords = (centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T).numpy()
    figure, axes = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        rows = labels == index
        axes.scatter(coords[rows, 0], coords[rows, 1], s=2, color=colours(index % colours.N), label=name)
    axes.set(title=title, xlabel="PC 1", ylabel="PC 2")
    axes.legend(markerscale=5, fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def evaluate_teacher(
    teacher: DiffusionTeacher,
    dataset: ImageDataset,
    *,
    public_indices: np.ndarray,
    probe_samples: int = 10000,
    test_samples: int | None = None,
    plot_path: Path | None = None,
    seed: int = 0,
) -> dict:
    """Linear-probe quality of the teacher's null-prompt features (at ``teacher.settings``).

    Probes are trained on up to ``probe_samples`` of the public split and tested on the test set (its
    first ``test_samples``): the fused up-block features (global average pooled, L2-normalised per
    block, concatenated), each block alone, the flat VAE latent, and raw pixels as the reference.
    Also reports extraction throughput and, with ``plot_path``, saves a 2-D PCA of the fused test features.
    """
    rng = np.random.default_rng(seed)
    train_rows = np.sort(
        rng.choice(public_indices, size=min(probe_samples, len(public_indices)), replace=False)
    )
    test_rows = np.arange(len(dataset.test_labels) if test_samples is None else test_samples)
    train = _pooled_features(teacher, dataset.train_images, train_rows)
    began = time.perf_counter()
    test = _pooled_features(teacher, dataset.test_images, test_rows)
    seconds = time.perf_counter() - began
    train["teacher"], test["teacher"] = _fused(train), _fused(test)
    train["pixels"] = images_to_tensor(dataset.train_images, train_rows).flatten(1).float() / 255
    test["pixels"] = images_to_tensor(dataset.test_images, test_rows).flatten(1).float() / 255
    y_train = torch.as_tensor(np.asarray(dataset.train_labels)[train_rows], dtype=torch.long)
    y_test = torch.as_tensor(np.asarray(dataset.test_labels)[test_rows], dtype=torch.long)
    probes = {key: linear_probe(train[key], y_train, test[key], y_test, seed) for key in sorted(train)}
    report = {
        "probe_accuracy": {key: probe["accuracy"] for key, probe in probes.items()},
        "probe_weight_decay": {key: probe["weight_decay"] for key, probe in probes.items()},
        "feature_dims": {key: int(value.shape[1]) for key, value in train.items()},
        "probe_train_samples": len(train_rows),
        "test_samples": len(test_rows),
        "timestep": teacher.settings.timestep,
        "up_blocks": list(teacher.settings.up_blocks),
        "extract_images_per_s": len(test_rows) / seconds,
        "extract_batch_size": teacher.settings.batch_size,
    }
    if plot_path is not None:
        accuracy = report["probe_accuracy"]["teacher"]
        title = f"{dataset.name} test set, teacher at t={teacher.settings.timestep} (probe {accuracy:.1%})"
        _pca_plot(test["teacher"], y_test.numpy(), dataset.classes, Path(plot_path), title)
        report["plot"] = str(plot_path)
    return report
