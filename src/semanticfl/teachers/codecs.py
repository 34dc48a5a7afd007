"""Latent codecs: the frozen VAEs that map images in [0, 1] to the latents a U-Net denoises.

Both codecs satisfy :class:`semanticfl.teachers.base.LatentCodec` and are :class:`torch.nn.Module`
wrappers, so a :class:`~semanticfl.teachers.diffusion.DiffusionTeacher` can move them to its device
and dtype. Inputs are cast to the dtype and device of the wrapped module's parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semanticfl.teachers.taef2 import TAEF2

Generators = torch.Generator | list[torch.Generator] | None


def _cast_like(x: Tensor, module: nn.Module) -> Tensor:
    weight = next(module.parameters())
    return x.to(device=weight.device, dtype=weight.dtype)


class AutoencoderKLCodec(nn.Module):
    """Stable Diffusion's ``diffusers.AutoencoderKL``: images in [0, 1] ⇄ scaled latents.

    The VAE works on images in [-1, 1]; latents are multiplied by ``vae.config.scaling_factor``
    (0.18215 for SD 1.x/2.x) so that they have roughly unit variance, as the U-Net expects.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)

    def encode(self, images: Tensor, sample: bool = False, generator: Generators = None) -> Tensor:
        """N×3×H×W in [0, 1] → N×C×H/d×W/d: the posterior mean, or a sample drawn with ``generator``
        (one CPU generator, or a list of one per image so each image's sample is its own)."""
        posterior = self.vae.encode(_cast_like(images * 2 - 1, self.vae)).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents → N×3×H×W images clamped to [0, 1]."""
        images = self.vae.decode(_cast_like(latents / self.scaling_factor, self.vae)).sample
        return ((images + 1) / 2).clamp(0, 1)


class TAEF2Codec(nn.Module):
    """The pretrained tiny autoencoder :class:`~semanticfl.teachers.taef2.TAEF2` as a codec.

    Its encoder is deterministic, so ``sample`` and ``generator`` are ignored. Latents are
    ``(taef2.encode(images) - shift) * scaling_factor``; :meth:`decode` inverts this.
    """

    def __init__(self, taef2: TAEF2, scaling_factor: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.taef2 = taef2
        self.latent_channels = taef2.latent_channels
        self.downsample = taef2.downsample
        self.scaling_factor = float(scaling_factor)
        self.shift = float(shift)

    def encode(self, images: Tensor, sample: bool = False, generator: Generators = None) -> Tensor:
        """N×3×H×W in [0, 1] (H, W multiples of 8) → N×32×H/8×W/8 shifted, scaled latents."""
        return (self.taef2.encode(images) - self.shift) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Shifted, scaled latents → images in [0, 1]."""
        return self.taef2.decode(latents / self.scaling_factor + self.shift)
