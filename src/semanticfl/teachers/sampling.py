"""Text-to-image generation with a teacher: classifier-free guided sampling from class prompts.

The server of SemanticFL's ``guidance`` mode (and the ``datashare`` control) synthesises a labelled,
class-balanced set from the class prompts alone. Sampling is the latent diffusion recipe (Rombach et al.
2022; classifier-free guidance, Ho & Salimans 2022): start from Gaussian latents, denoise with a diffusers
scheduler (DDIM by default, Song et al. 2021) for ``steps`` steps, at each step
``ε = ε(x, ∅) + s · (ε(x, c) − ε(x, ∅))`` with guidance scale ``s`` (``s ≤ 1``: the conditional
prediction alone, diffusers' convention), then decode with the teacher's own VAE (TAEF2 / the SD VAE)
and resize to the dataset's images.

* Stable Diffusion runs through diffusers' ``StableDiffusionPipeline`` built from the loaded parts.
* The offline teacher (TAEF2 latents, MiniLM tokens with an attention mask the pipeline cannot pass)
  runs the same loop over the same diffusers scheduler, with the mask it was trained with.

Image ``i``'s starting noise comes from a generator seeded by ``(teacher.seed, i)``, and DDIM with η = 0
is deterministic, so an image never depends on the batch it was generated in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from semanticfl.errors import UserError
from semanticfl.seeding import TeacherStream
from semanticfl.teachers.base import NULL_PROMPT
from semanticfl.teachers.codecs import AutoencoderKLCodec
from semanticfl.teachers.diffusion import DiffusionTeacher, generators

SCHEDULERS = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}


@dataclass(frozen=True)
class SamplerSettings:
    """How images are generated; every field enters the sample cache's fingerprint."""

    steps: int = 50
    guidance_scale: float = 3.0
    scheduler: str = "ddim"
    seed: int = 0
    batch_size: int = 64

    def check(self) -> None:
        problems = [
            (self.steps >= 1, f"teacher.sample_steps must be >= 1, got {self.steps}"),
            (self.guidance_scale >= 0, f"teacher.guidance_scale must be >= 0, got {self.guidance_scale}"),
            (
                self.scheduler in SCHEDULERS,
                f"teacher.sampler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}",
            ),
            (self.batch_size >= 1, f"teacher.batch_size must be >= 1, got {self.batch_size}"),
        ]
        for ok, message in problems:
            if not ok:
                raise UserError(message)


def make_scheduler(teacher: DiffusionTeacher, name: str):
    """A fresh diffusers scheduler of kind ``name`` with the teacher's training noise schedule."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(teacher.scheduler.config)


def check_can_generate(teacher: DiffusionTeacher) -> None:
    if not callable(getattr(teacher.codec, "decode", None)):
        raise UserError("this teacher has no decoder, so it cannot generate images; use one with a VAE decoder")


class Sampler:
    """Generates images of given class prompts with one teacher under one :class:`SamplerSettings`."""

    def __init__(self, teacher: DiffusionTeacher, settings: SamplerSettings) -> None:
        settings.check()
        check_can_generate(teacher)
        self.teacher, self.settings = teacher, settings

    @property
    def guided(self) -> bool:
        return self.settings.guidance_scale > 1

    def initial_noise(self, sample_ids: Tensor) -> Tensor:
        """N×C×h×w standard normal latents, image ``i``'s from its own seeded generator."""
        t = self.teacher
        size = t.settings.resolution // t.codec.downsample
        shape = (t.codec.latent_channels, size, size)
        gens = generators(self.settings.seed, TeacherStream.SAMPLE, sample_ids)
        return torch.stack([torch.randn(shape, generator=g) for g in gens])

    @torch.inference_mode()
    def generate(self, prompts: list[str], sample_ids: Tensor) -> Tensor:
        """Images in [0, 1], N×3×R×R (R = the teacher's resolution), image n of ``prompts[n]``."""
        if len(prompts) != len(sample_ids):
            raise ValueError(f"{len(prompts)} prompts for {len(sample_ids)} sample ids")
        parts = []
        for start in range(0, len(prompts), self.settings.batch_size):
            rows = slice(start, start + self.settings.batch_size)
            if isinstance(self.teacher.codec, AutoencoderKLCodec):
                parts.append(self._pipeline_batch(prompts[rows], sample_ids[rows]))
            else:
                parts.append(self._loop_batch(prompts[rows], sample_ids[rows]))
        return torch.cat(parts)

    def _loop_batch(self, prompts: list[str], sample_ids: Tensor) -> Tensor:
        """The guided denoising loop over a diffusers scheduler, with the prompt tokens' attention mask."""
        t, s = self.teacher, self.settings
        scheduler = make_scheduler(t, s.scheduler)
        scheduler.set_timesteps(s.steps)
        unique = list(dict.fromkeys(prompts))
        tokens, mask = t.prompt_states([*unique, NULL_PROMPT])
        rows = torch.tensor([unique.index(p) for p in prompts], device=tokens.device)
        null = torch.full_like(rows, len(unique))
        if self.guided:
            rows = torch.cat([null, rows])
        states, attention = tokens[rows], mask[rows]
        x = self.initial_noise(sample_ids).to(t.device, t.dtype) * scheduler.init_noise_sigma
        for step in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([x, x]) if self.guided else x, step)
            eps = t.unet(model_input, step, encoder_hidden_states=states, encoder_attention_mask=attention).sample
            if self.guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + s.guidance_scale * (cond - uncond)
            x = scheduler.step(eps, step, x).prev_sample
        return t.codec.decode(x).float().cpu().clamp(0, 1)

    def _pipeline_batch(self, prompts: list[str], sample_ids: Tensor) -> Tensor:
        """Stable Diffusion through diffusers' pipeline, with the teacher's parts and scheduler kind."""
        t, s = self.teacher, self.settings
        pipeline = self._pipeline()
        latents = self.initial_noise(sample_ids).to(t.device, t.dtype)
        images = pipeline(
            prompt=list(prompts),
            height=t.settings.resolution,
            width=t.settings.resolution,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            latents=latents,
            output_type="pt",
        ).images
        return images.float().cpu().clamp(0, 1)

    def _pipeline(self):
        from diffusers import StableDiffusionPipeline

        t = self.teacher
        pipeline = StableDiffusionPipeline(
            vae=t.codec.vae,
            text_encoder=t.text.model,
            tokenizer=t.text.tokenizer,
            unet=t.unet,
            scheduler=make_scheduler(t, self.settings.scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline


def to_dataset_images(images: Tensor, channels: int, size: int) -> np.ndarray:
    """[0, 1] N×3×R×R → uint8 N×channels×size×size, as the dataset stores its images (grey = channel mean)."""
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_grid(
    images: np.ndarray, labels: np.ndarray, class_names: list[str], target, per_row: int = 10, title: str = ""
) -> None:
    """A labelled PNG grid (to a path or binary file): one row per class, up to ``per_row`` of its images,
    under ``title`` (the teacher and the sampler settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(set(int(c) for c in labels))
    figure, axes = plt.subplots(
        len(classes), per_row, figsize=(per_row * 0.9 + 1.6, len(classes) * 0.9), squeeze=False
    )
    for row, c in enumerate(classes):
        members = np.flatnonzero(labels == c)[:per_row]
        for col in range(per_row):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(members):
                image = images[members[col]].transpose(1, 2, 0)
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=9)
    figure.subplots_adjust(left=0.14, wspace=0.05, hspace=0.05)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(target, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
