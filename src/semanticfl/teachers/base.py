"""What every frozen semantic teacher offers: the small interface algorithms program against.

A teacher is a latent diffusion model used as a *representation source* (FedDifRC, SemanticFL):
no denoising loop, one U-Net pass per (image, prompt). Its parts:

* a :class:`LatentCodec` -- the VAE (Stable Diffusion's ``AutoencoderKL`` or the pretrained TAEF2);
* a :class:`PromptEncoder` -- the text encoder (CLIP for SD, MiniLM for the offline teacher);
* a diffusers ``UNet2DConditionModel`` and a ``DDIMScheduler`` (for ``add_noise`` at timestep t).

:class:`ExtractionSettings` says what to extract; :class:`semanticfl.teachers.diffusion.DiffusionTeacher`
implements the extraction once for every teacher kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import Tensor

from semanticfl.errors import UserError

NULL_PROMPT = ""
DEFAULT_TEMPLATE = "a photo of a {}"


def class_prompts(class_names: tuple[str, ...] | list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template`` filled with each class name (underscores read as spaces)."""
    return [template.format(name.replace("_", " ")) for name in class_names]


class LatentCodec(Protocol):
    """A frozen VAE: images in [0, 1] ⇄ latents already multiplied by the scaling factor."""

    latent_channels: int
    downsample: int

    def encode(self, images: Tensor, sample: bool = False) -> Tensor:
        """N×3×H×W in [0, 1] → N×C×H/d×W/d scaled latents (posterior mean, or a sample)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents → images in [0, 1]."""
        ...


class PromptEncoder(Protocol):
    """A frozen text encoder: token states for cross-attention, one vector per prompt for contrast."""

    dim: int

    def tokens(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts → (P×L×dim token states, P×L attention mask of 0/1)."""
        ...

    def sentence(self, prompts: list[str]) -> Tensor:
        """Prompts → P×dim L2-normalised sentence embeddings."""
        ...


def resolve_layer_names(layers: tuple[str, ...], num_up_blocks: int, owner: str) -> tuple[str, ...]:
    """``up-k`` → ``up{num_up_blocks − k}`` (``latent`` unchanged); every index must exist, else a
    UserError naming ``owner`` (the request or setting that asked for the layer)."""
    resolved = []
    for name in layers:
        if name == "latent":
            resolved.append(name)
            continue
        index = int(name[2:])
        index = num_up_blocks + index if index < 0 else index
        if not 0 <= index < num_up_blocks:
            raise UserError(
                f"layer '{name}' of {owner} does not exist: the teacher's U-Net has "
                f"{num_up_blocks} up-blocks (up0..up{num_up_blocks - 1}, or up-1..up-{num_up_blocks})"
            )
        resolved.append(f"up{index}")
    return tuple(resolved)


@dataclass(frozen=True)
class TeacherShape:
    """The widths of a teacher, known from its configs without loading its weights: what
    ``layer_dims = "auto"`` and ``text_dim = "auto"`` are read from."""

    latent_channels: int
    """Channels of the VAE latent (SD: 4; TAEF2: 32)."""
    up_channels: tuple[int, ...]
    """Output channels of each ``unet.up_blocks[i]``: the U-Net's ``block_out_channels`` reversed."""
    text_dim: int
    """Width of the text encoder's sentence embeddings (CLIP ViT-L 768, OpenCLIP-H 1024, MiniLM 384)."""

    @classmethod
    def of_unet(cls, unet_config, latent_channels: int, text_dim: int) -> TeacherShape:
        """From a diffusers ``UNet2DConditionModel`` config (its ``block_out_channels``)."""
        up_channels = tuple(int(c) for c in reversed(unet_config["block_out_channels"]))
        return cls(int(latent_channels), up_channels, int(text_dim))

    def channels(self, layers: tuple[str, ...], owner: str) -> tuple[int, ...]:
        """Channels of each named layer (``latent``, ``up<i>``, ``up-<k>``)."""
        resolved = resolve_layer_names(layers, len(self.up_channels), owner)
        return tuple(
            self.latent_channels if name == "latent" else self.up_channels[int(name[2:])] for name in resolved
        )


@dataclass(frozen=True)
class ExtractionSettings:
    """What one feature extraction computes; every field enters the feature-cache fingerprint."""

    resolution: int = 32
    """Images are resized (bilinear) to resolution×resolution before the VAE."""
    timestep: int = 300
    """Noise level t of the U-Net pass (FedDifRC: 300; SemanticFL: 150)."""
    up_blocks: tuple[int, ...] = (1, 2, 3)
    """Indices into ``unet.up_blocks`` whose outputs are kept (FedDifRC code: 1, 2, 3)."""
    noise_draws: int = 1
    """Features averaged over this many noise draws (DIFT-style ensembling)."""
    latent_sample: bool = False
    """Use a posterior sample instead of the mean (``AutoencoderKL`` only)."""
    batch_size: int = 64
    """Images per U-Net call (memory bound); prompt repeats are counted in it."""
    seed: int = 0
    """Noise for sample ``i``, draw ``k`` comes from a generator seeded by (seed, i, k): features of
    a sample never depend on which batch it was extracted in."""


@dataclass(frozen=True)
class FeatureRequest:
    """Per-sample teacher features an algorithm reads in every batch, as ``Batch.targets[name]``.

    The engine extracts them once into the feature store (one U-Net pass per sample and prompt at
    ``timestep``), reduces each layer to its PCA dims and fuses the layers into one unit vector of
    ``sum(layer_dims)`` dims. With one prompt a sample's target is that vector (``D``); with ``P``
    prompts it is ``P×D``, one row per prompt (TDCL's all-classes conditioning).
    """

    name: str
    timestep: int
    layers: tuple[str, ...]
    """``latent`` (the VAE latents) and/or ``up{i}`` (U-Net decoder up-block ``i``)."""
    layer_dims: tuple[int, ...]
    prompts: tuple[str, ...] = (NULL_PROMPT,)
    reduction: str = "spatial_norm"
    """``spatial_norm`` (FedDifRC's code: PCA on pixel vectors, then L2 over positions) or ``gap``."""
    conditioned: bool = False
    """Each sample's encoding by the client's current model is injected into the teacher's
    conditioning (FedDifRC's conditional representations): the features change with the model, so
    they are not cached but extracted on the client at the start of every round, and read with
    ``LocalData.conditioned_targets`` instead of ``Batch.targets``."""

    @property
    def dim(self) -> int:
        return sum(self.layer_dims)

    def per_sample_shape(self) -> tuple[int, ...]:
        return (self.dim,) if len(self.prompts) == 1 else (len(self.prompts), self.dim)


@dataclass(frozen=True)
class AnchorRequest:
    """Class-level teacher features the *server* computes once and sends with the model.

    Row ``c`` is the fused feature of class ``c``: the mean over ``public_per_class`` public
    samples of class ``c``, each conditioned on ``features.prompts[c]``; with
    ``public_per_class = 0`` the image is a uniform grey one, so the row comes from the prompt
    alone. With ``text = True`` the rows are instead the text encoder's sentence embeddings of the
    prompts.
    """

    name: str
    features: FeatureRequest
    public_per_class: int = 0
    text: bool = False


GUIDANCE_SOURCES = ("generated", "public")


@dataclass(frozen=True)
class GuidanceRequest:
    """A class-balanced labelled set the *server* builds once and sends to every client.

    ``source = "generated"``: ``per_class`` images per class synthesised by the teacher from the class
    prompt alone (text-to-image with classifier-free guidance, :mod:`semanticfl.teachers.sampling`);
    ``"public"``: ``per_class`` real images per class drawn from the server's own public split. With
    ``features``, every image also carries its fused teacher features (that request's layers, timestep
    and PCA, under its one prompt), so clients can align with the teacher on these samples.
    """

    name: str
    per_class: int
    prompts: tuple[str, ...]
    """One prompt per class, row c = class c (what ``generated`` samples from)."""
    source: str = "generated"
    features: FeatureRequest | None = None


@dataclass(frozen=True)
class TeacherRequests:
    """Everything an algorithm asks of the teacher, by where it is computed (all empty: no teacher)."""

    features: tuple[FeatureRequest, ...] = ()
    """Per-sample features of each client's own data, read from ``Batch.targets`` (the conditioned
    ones from ``LocalData.conditioned_targets``)."""
    offload: tuple[FeatureRequest, ...] = ()
    """Per-sample features split between client (VAE + noise) and server (U-Net), read from
    ``Batch.targets`` like ``features`` (see engine/exchanges.py)."""
    anchors: tuple[AnchorRequest, ...] = ()
    """Class-level features the server computes once, handed to the algorithm before round 1."""
    guidance: tuple[GuidanceRequest, ...] = ()
    """Labelled sets the server builds once and sends to every client (``LocalData.guidance``)."""

    @property
    def conditioned(self) -> bool:
        """Whether some per-sample request is conditioned on the client model (extracted on the client)."""
        return any(request.conditioned for request in self.features)


@dataclass(frozen=True)
class GuidanceSet:
    """What a :class:`GuidanceRequest` delivers: images as the dataset stores them, labels, features."""

    images: np.ndarray
    """uint8 N×C×H×W at the dataset's channels and size."""
    labels: np.ndarray
    """int64 N, class-balanced."""
    features: np.ndarray | None = None
    """float16 N×D unit vectors, or ``None``."""

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The set as named arrays for the wire (``prefix.images``, ``.labels``, ``.features``)."""
        out = {f"{prefix}.images": self.images, f"{prefix}.labels": self.labels}
        if self.features is not None:
            out[f"{prefix}.features"] = self.features
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> GuidanceSet:
        return cls(
            np.asarray(arrays[f"{prefix}.images"]),
            np.asarray(arrays[f"{prefix}.labels"]),
            None if f"{prefix}.features" not in arrays else np.asarray(arrays[f"{prefix}.features"]),
        )
