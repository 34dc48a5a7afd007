"""One frozen latent diffusion model used as a feature extractor, for every teacher kind.

The extraction follows FedDifRC (Wang et al., ICCV 2025), itself after DIFT: no denoising loop, one
U-Net pass per (image, prompt). An image is encoded by the VAE, noised to timestep ``t`` with the
DDIM forward process, and the U-Net is run once with the prompt's token states as cross-attention
context; the outputs of the chosen decoder (up) blocks are the features. Averaging over several
noise draws (DIFT's ensembling) is optional.

Noise is reproducible per sample: the noise of sample ``i``, draw ``k`` comes from a generator seeded by
``(seed, i, k)``, so a sample's features never depend on the batch it was extracted in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.errors import UserError
from semanticfl.seeding import TeacherStream, derive_teacher_seed
from semanticfl.teachers.base import NULL_PROMPT, ExtractionSettings, LatentCodec, PromptEncoder

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, UNet2DConditionModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROMPT_CACHE_SIZE = 8


def generators(seed: int, stream: int, sample_ids: Tensor, draw: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by ``(seed, stream, sample_id, draw)``."""
    return [torch.Generator().manual_seed(derive_teacher_seed(seed, stream, i, draw)) for i in sample_ids.tolist()]


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: float16 on CUDA, float32 elsewhere; otherwise one of :data:`DTYPES`."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown teacher dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown teacher device {device!r}; use cpu or cuda (cuda:0, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"teacher device {device} asked for but CUDA is not available; use device=cpu")
    return resolved


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _check_batch(images: Tensor, sample_ids: Tensor) -> None:
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    if sample_ids.dim() != 1 or len(sample_ids) != len(images) or sample_ids.is_floating_point():
        raise ValueError(f"sample_ids must be {len(images)} integers, got {tuple(sample_ids.shape)}")


class DiffusionTeacher:
    """A frozen VAE + text encoder + U-Net that turns images into multi-layer features.

    Outputs of :meth:`features`, :meth:`features_per_prompt` and :meth:`text_embeddings` are float32 on
    the CPU; the building blocks (:meth:`latents`, :meth:`noised`, :meth:`up_block_features`) stay on
    the teacher's device. On CUDA the U-Net and VAE run in half precision (``dtype="auto"``) under
    autocast, in channels-last memory format; on the CPU in float32.
    """

    def __init__(
        self,
        codec: LatentCodec,
        text: PromptEncoder,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        settings: ExtractionSettings,
        fingerprint: str,
        device: str = "cpu",
        dtype: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.codec = self._place(codec)
        self.unet = self._place(unet)
        self.text = text
        self.scheduler = scheduler
        self.settings = settings
        self.fingerprint = fingerprint
        self._check_settings()
        self._prompt_cache: OrderedDict[tuple[str, ...], tuple[Tensor, Tensor]] = OrderedDict()
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def _place(self, module):
        """Freeze a module and move it to the teacher's device and dtype (channels-last on CUDA)."""
        if not isinstance(module, nn.Module):
            return module
        module.eval().requires_grad_(False)
        module.to(self.device)
        if next(module.parameters()).dtype != self.dtype:
            module.to(dtype=self.dtype)
        if self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        return module

    def _check_settings(self) -> None:
        s = self.settings
        blocks = len(self.unet.up_blocks)
        bad = [i for i in s.up_blocks if not 0 <= i < blocks]
        if bad or not s.up_blocks:
            raise UserError(
                f"up_blocks {list(s.up_blocks)} invalid for this U-Net: it has {blocks} up blocks, "
                f"use indices in 0..{blocks - 1}"
            )
        steps = self.scheduler.config.num_train_timesteps
        if not 0 <= s.timestep < steps:
            raise UserError(f"timestep {s.timestep} out of range; use 0..{steps - 1}")
        factor = self.codec.downsample
        if s.resolution <= 0 or s.resolution % factor:
            raise UserError(
                f"resolution {s.resolution} is not a positive multiple of the VAE's downsampling "
                f"factor {factor}; set the resolution to a multiple of {factor}"
            )
        if s.noise_draws < 1 or s.batch_size < 1:
            raise UserError(
                f"noise_draws ({s.noise_draws}) and batch_size ({s.batch_size}) must be at least 1"
            )

    @torch.inference_mode()
    def prepare(self, images: Tensor) -> Tensor:
        """uint8 (0..255) or float ([0, 1]) N×C×H×W, C = 1 or 3 → float32 N×3×R×R in [0, 1] on the
        device; grayscale is repeated to RGB, R = ``settings.resolution`` (bilinear, antialiased)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be N×1×H×W or N×3×H×W, got {tuple(images.shape)}")
        x = images.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = x.expand(-1, 3, -1, -1)
        size = (self.settings.resolution, self.settings.resolution)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0, 1)

    @torch.inference_mode()
    def latents(self, images: Tensor, sample_ids: Tensor) -> Tensor:
        """Clean scaled latents N×C×h×w of (prepared or raw) images: the posterior mean, or, with
        ``settings.latent_sample``, a posterior sample seeded by ``(seed, sample_id)``."""
        _check_batch(images, sample_ids)
        return self._encode(self.prepare(images), sample_ids)

    def autocast(self) -> torch.autocast:
        """Mixed precision for the half-precision teacher on CUDA (normalisations and softmaxes in float32,
        as autocast's op lists say); a no-op on the CPU, where the teacher runs in float32."""
        half = self.device.type == "cuda" and self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=half)

    def _encode(self, images: Tensor, sample_ids: Tensor) -> Tensor:
        with self.autocast():
            if not self.settings.latent_sample:
                return self.codec.encode(images)
            gens = generators(self.settings.seed, TeacherStream.LATENT, sample_ids)
            return self.codec.encode(images, sample=True, generator=gens)

    def _timesteps(self, count: int) -> Tensor:
        return torch.full((count,), self.settings.timestep, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def noised(self, latents: Tensor, sample_ids: Tensor, draw: int) -> Tensor:
        """DDIM forward process to ``settings.timestep``: ``scheduler.add_noise(latents, noise, t)`` with
        each sample's noise drawn (float32, on the CPU) from a generator seeded by (seed, id, draw)."""
        gens = generators(self.settings.seed, TeacherStream.NOISE, sample_ids, draw)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens])
        noise = noise.to(device=latents.device, dtype=latents.dtype)
        return self.scheduler.add_noise(latents, noise, self._timesteps(len(latents)))

    @torch.inference_mode()
    def up_block_features(
        self, noisy: Tensor, encoder_states: Tensor, encoder_mask: Tensor | None = None
    ) -> dict[int, Tensor]:
        """One stock U-Net call at ``settings.timestep`` (FedDifRC): the float32 output N×C_i×h_i×w_i
        of each ``unet.up_blocks[i]``, i in ``settings.up_blocks``, caught by forward hooks that are
        removed afterwards."""
        outputs: dict[int, Tensor] = {}

        def keeper(index: int):
            def hook(module: nn.Module, args, output: Tensor) -> None:
                outputs[index] = output

            return hook

        handles = [self.unet.up_blocks[i].register_forward_hook(keeper(i)) for i in self.settings.up_blocks]
        try:
            with self.autocast():
                self.unet(
                    noisy.to(device=self.device, dtype=self.dtype),
                    self._timesteps(len(noisy)),
                    encoder_hidden_states=encoder_states.to(device=self.device, dtype=self.dtype),
                    encoder_attention_mask=None if encoder_mask is None else encoder_mask.to(self.device),
                )
        finally:
            for handle in handles:
                handle.remove()
        return {i: outputs[i].float().contiguous() for i in self.settings.up_blocks}

    def prompt_states(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Token states and mask of ``prompts`` on the device, cached for the last few prompt lists."""
        key = tuple(prompts)
        if key not in self._prompt_cache:
            states, mask = self.text.tokens(list(prompts))
            self._prompt_cache[key] = (states.to(self.device, self.dtype), mask.to(self.device))
            if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        self._prompt_cache.move_to_end(key)
        return self._prompt_cache[key]

    def _up_features(
        self,
        latents: Tensor,
        sample_ids: Tensor,
        states: tuple[Tensor, Tensor],
        image_of_row: Tensor,
        prompt_of_row: Tensor,
        condition: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Row r = image ``image_of_row[r]`` conditioned on prompt ``prompt_of_row[r]`` (plus, if given,
        the image's ``condition`` token appended to the prompt's tokens): its up-block features
        averaged over the noise draws, at most ``batch_size`` rows per U-Net call."""
        noisy = [self.noised(latents, sample_ids, draw) for draw in range(self.settings.noise_draws)]
        return self._up_features_of_noisy(noisy, states, image_of_row, prompt_of_row, condition)

    def _up_features_of_noisy(
        self,
        noisy: list[Tensor],
        states: tuple[Tensor, Tensor],
        image_of_row: Tensor,
        prompt_of_row: Tensor,
        condition: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """:meth:`_up_features` from already-noised latents, one N×C×h×w tensor per draw."""
        draws = len(noisy)
        tokens, mask = states
        parts = []
        for rows in _chunks(len(image_of_row), self.settings.batch_size):
            images, prompts = image_of_row[rows], prompt_of_row[rows]
            row_tokens, row_mask = tokens[prompts], mask[prompts]
            if condition is not None:
                row_tokens = torch.cat([row_tokens, condition[images, None].to(row_tokens)], dim=1)
                row_mask = torch.cat([row_mask, row_mask.new_ones(len(images), 1)], dim=1)
            outs = [self.up_block_features(x[images], row_tokens, row_mask) for x in noisy]
            parts.append({f"up{i}": (sum(out[i] for out in outs) / draws).cpu() for i in outs[0]})
        return _concat(parts)

    @torch.inference_mode()
    def noised_latents(self, images: Tensor, sample_ids: Tensor) -> Tensor:
        """What a client computes and sends in SemanticFL's ``offload`` mode: its images' latents
        noised to ``settings.timestep``, one per noise draw (D×N×C×h×w, float32, CPU). Only the VAE
        encoder and the scheduler run; the clean latents stay with the caller."""
        _check_batch(images, sample_ids)
        parts = []
        for chunk in _chunks(len(images), self.settings.batch_size):
            ids = sample_ids[chunk]
            latents = self._encode(self.prepare(images[chunk]), ids)
            parts.append(
                torch.stack([self.noised(latents, ids, d) for d in range(self.settings.noise_draws)])
            )
        return torch.cat(parts, dim=1).float().cpu()

    @torch.inference_mode()
    def features_of_noised(self, noised: Tensor, prompt: str) -> dict[str, Tensor]:
        """What the server computes from a client's :meth:`noised_latents` (D×N×C×h×w):
        ``{"latent": the noised latents averaged over the draws, "up{i}": …}``. The clean latent is
        never seen, so the ``latent`` layer is the noised one (the only difference from :meth:`features`)."""
        states = self.prompt_states([prompt])
        parts = []
        for chunk in _chunks(noised.shape[1], self.settings.batch_size):
            noisy = [draw[chunk].to(self.device, self.dtype) for draw in noised]
            rows = torch.arange(len(noisy[0]))
            part = self._up_features_of_noisy(noisy, states, rows, torch.zeros_like(rows))
            parts.append({"latent": noised[:, chunk].float().mean(dim=0), **part})
        return _concat(parts)

    @torch.inference_mode()
    def condition_tokens(self, encodings: Tensor) -> Tensor:
        """Sample encodings N×D (e.g. a client model's features) → N×d tokens the U-Net's
        cross-attention can read beside a prompt (FedDifRC's conditional injection of ``h_k(x_i)``).

        The map is a fixed Gaussian projection seeded by ``settings.seed`` (the paper does not say
        how the widths are matched), and each token is rescaled to the mean norm of the null
        prompt's tokens, so an injected token weighs like a word."""
        tokens, mask = self.prompt_states([NULL_PROMPT])
        width = tokens.shape[-1]
        generator = torch.Generator().manual_seed(
            derive_teacher_seed(self.settings.seed, TeacherStream.CONDITION, encodings.shape[1])
        )
        projection = torch.randn(encodings.shape[1], width, generator=generator) / encodings.shape[1] ** 0.5
        mapped = F.normalize(encodings.float().cpu() @ projection, dim=1)
        norms = tokens.float().norm(dim=-1)[mask.bool()]
        return mapped * norms.mean().cpu()

    @torch.inference_mode()
    def features(self, images: Tensor, sample_ids: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        """``{"latent": N×C×h×w clean latents, "up{i}": N×C_i×h_i×w_i}``, each image conditioned on
        ``prompts[0]`` (one prompt for all, e.g. the null prompt) or on its own ``prompts[n]``; up-block
        outputs are averaged over ``settings.noise_draws``. Runs ``settings.batch_size`` images at a time."""
        _check_batch(images, sample_ids)
        if len(prompts) not in (1, len(images)):
            raise ValueError(f"need 1 or {len(images)} prompts, got {len(prompts)}")
        unique = list(dict.fromkeys(prompts))
        prompt_index = torch.tensor([unique.index(p) for p in prompts]).expand(len(images))
        states = self.prompt_states(unique)
        parts = []
        for chunk in _chunks(len(images), self.settings.batch_size):
            ids = sample_ids[chunk]
            latents = self._encode(self.prepare(images[chunk]), ids)
            part = self._up_features(latents, ids, states, torch.arange(len(ids)), prompt_index[chunk])
            parts.append({"latent": latents.float().cpu(), **part})
        return _concat(parts)

    @torch.inference_mode()
    def features_per_prompt(
        self, images: Tensor, sample_ids: Tensor, prompts: list[str], condition: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"up{i}": N×P×C_i×h_i×w_i}``: every image conditioned on every one of the P prompts (e.g. all
        class prompts, for TDCL). The P rows of one image share its latent and the same noise (per
        draw), so they differ only by the prompt. With ``condition`` (N×d, :meth:`condition_tokens`)
        image ``n``'s token is appended to every prompt it is paired with. At most
        ``settings.batch_size`` U-Net rows run at once; the clean latents do not depend on the prompt
        and come from :meth:`features`."""
        _check_batch(images, sample_ids)
        count = len(prompts)
        states = self.prompt_states(prompts)
        parts = []
        for chunk in _chunks(len(images), max(1, self.settings.batch_size // count)):
            ids = sample_ids[chunk]
            latents = self._encode(self.prepare(images[chunk]), ids)
            image_of_row = torch.arange(len(ids)).repeat_interleave(count)
            prompt_of_row = torch.arange(count).repeat(len(ids))
            tokens = None if condition is None else condition[chunk]
            part = self._up_features(latents, ids, states, image_of_row, prompt_of_row, tokens)
            parts.append({key: value.unflatten(0, (len(ids), count)) for key, value in part.items()})
        return _concat(parts)

    @torch.inference_mode()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """P×dim L2-normalised sentence embeddings of the prompts (float32, CPU)."""
        return self.text.sentence(list(prompts)).float().cpu()

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every entry of :meth:`features` (measured once on a blank image)."""
        if self._shapes is None:
            size = self.settings.resolution
            blank = torch.zeros(1, 3, size, size)
            out = self.features(blank, torch.zeros(1, dtype=torch.long), [NULL_PROMPT])
            self._shapes = {key: tuple(value.shape[1:]) for key, value in out.items()}
        return self._shapes
