"""Encoders that map one modality to L2-normalised features of a common dimension.

Image encoders wrap a client model of the registry (``cnn``, ``resnet10``, ``resnet18``): its
feature extractor, then a linear projection. Text encoders read token ids (0 = padding):

* ``bow`` -- mean of word embeddings (an ``EmbeddingBag``), then a 2-layer MLP;
* ``gru`` -- word embeddings, a bidirectional GRU, the masked mean of its states, a projection
  (the paper's text clients use GloVe + BiGRU; the embeddings here are learnt).

:class:`ImageTextModel` pairs one of each (the server's retrieval model in FedAFD).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.errors import UserError
from semanticfl.models.registry import build_model, model_names


class ImageEncoder(nn.Module):
    """A registry model's features → Linear → unit vector."""

    def __init__(self, arch: str, in_channels: int, image_size: int, dim: int) -> None:
        super().__init__()
        self.backbone = build_model(arch, 2, in_channels, image_size)
        self.backbone.classifier = nn.Identity()  # only the features are used
        self.project = nn.Linear(self.backbone.feature_dim, dim)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.project(self.backbone.features(images)), dim=-1)


class BagOfWordsEncoder(nn.Module):
    """Mean word embedding → Linear-ReLU-Linear → unit vector."""

    def __init__(self, vocab_size: int, dim: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.mlp(self.embed(tokens)), dim=-1)


class GRUEncoder(nn.Module):
    """Word embeddings → BiGRU → masked mean over tokens → Linear → unit vector."""

    def __init__(self, vocab_size: int, dim: int, embed_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * hidden, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        states, _ = self.gru(self.embed(tokens))
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(self.project(pooled), dim=-1)


TEXT_ENCODERS: dict[str, Callable[[int, int], nn.Module]] = {"bow": BagOfWordsEncoder, "gru": GRUEncoder}


def image_architectures() -> list[str]:
    return model_names()


def text_architectures() -> list[str]:
    return sorted(TEXT_ENCODERS)


def build_text_encoder(arch: str, vocab_size: int, dim: int) -> nn.Module:
    if arch not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder {arch!r}; choose one of: {', '.join(text_architectures())}")
    return TEXT_ENCODERS[arch](vocab_size, dim)


def build_image_encoder(arch: str, in_channels: int, image_size: int, dim: int) -> ImageEncoder:
    if arch not in model_names():
        raise UserError(f"unknown image encoder {arch!r}; choose one of: {', '.join(image_architectures())}")
    return ImageEncoder(arch, in_channels, image_size, dim)


class ImageTextModel(nn.Module):
    """An image encoder and a text encoder into one feature space."""

    def __init__(self, image: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.image = image
        self.text = text
