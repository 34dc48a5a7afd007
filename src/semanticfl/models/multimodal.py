"""Encoders that map one modality to L2-normalised features of a common dimension.

Image encoders wrap a client model of the registry (``cnn``, ``resnet10``, ``resnet18``,
``mobilenet``): its feature extractor, then a linear projection. Text encoders read token ids of a
:class:`~semanticfl.data.multimodal.WordTokenizer` (0 = padding, 1 = unknown):

* ``bow`` -- mean of word embeddings (an ``EmbeddingBag``), then a 2-layer MLP;
* ``gru`` -- word embeddings, a bidirectional GRU, the masked mean of its states, a projection
  (the paper's text clients use GloVe + BiGRU; the embeddings here are learnt);
* ``minilm`` -- the frozen pretrained all-MiniLM-L6-v2 sentence embedding (Wang et al., "MiniLM",
  NeurIPS 2020; Reimers & Gurevych, "Sentence-BERT", EMNLP 2019) of the words the ids stand for,
  then a trainable 2-layer MLP (where the paper's text clients start from pretrained GloVe word
  vectors, this one starts from a pretrained sentence encoder and trains only the MLP).

:class:`ImageTextModel` pairs one of each (the server's retrieval model in FedAFD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.errors import UserError
from semanticfl.models.registry import build_model, model_names
from semanticfl.models.text import MiniLMPromptEncoder, shared_minilm

if TYPE_CHECKING:
    from semanticfl.data.multimodal import WordTokenizer

MINILM_BATCH = 64
_minilm_embeddings: dict[str, Tensor] = {}
"""Process-wide cache of the frozen MiniLM's sentence embeddings, by sentence."""


class ImageEncoder(nn.Module):
    """A registry model's features → Linear → unit vector."""

    def __init__(self, arch: str, in_channels: int, image_size: int, dim: int) -> None:
        super().__init__()
        self.backbone = build_model(arch, 2, in_channels, image_size)
        self.backbone.classifier = nn.Identity()  # only the features are used
        self.project = nn.Linear(self.backbone.feature_dim, dim)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.project(self.backbone.features(images)), dim=-1)


def mlp_head(in_dim: int, dim: int) -> nn.Sequential:
    """Linear(in_dim → 2·dim) - ReLU - Linear(2·dim → dim)."""
    return nn.Sequential(nn.Linear(in_dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


class BagOfWordsEncoder(nn.Module):
    """Mean word embedding → Linear-ReLU-Linear → unit vector."""

    def __init__(self, vocab_size: int, dim: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.mlp = mlp_head(embed_dim, dim)

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


def minilm_sentences(sentences: Sequence[str]) -> Tensor:
    """len(sentences)×384 unit embeddings of the shared frozen MiniLM (CPU), each computed once per process.

    New sentences are embedded in batches of exactly ``MINILM_BATCH`` prompts (filled up with empty
    ones) of 32 tokens, so every forward pass has the same shape and a sentence's embedding does not
    depend on which sentences were new alongside it, i.e. on the cache's history.
    """
    missing = sorted(set(sentences) - _minilm_embeddings.keys())
    for start in range(0, len(missing), MINILM_BATCH):
        chunk = missing[start : start + MINILM_BATCH]
        prompts = chunk + [""] * (MINILM_BATCH - len(chunk))
        _minilm_embeddings.update(zip(chunk, shared_minilm().sentence(prompts, padding="max_length")))
    return torch.stack([_minilm_embeddings[sentence] for sentence in sentences])


class MiniLMEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embedding → trainable Linear-ReLU-Linear → unit vector.

    The ids are turned back into their lower-cased words (what the uncased MiniLM would see of the
    sentence, less punctuation; unknown ids become MiniLM's ``[UNK]``). MiniLM itself is the shared
    :func:`~semanticfl.models.text.shared_minilm`, not a submodule, so the head holds the only
    parameters and the whole state_dict.
    """

    def __init__(self, tokenizer: WordTokenizer, dim: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.unknown = shared_minilm().tokenizer.unk_token
        self.head = mlp_head(MiniLMPromptEncoder.dim, dim)

    def frozen(self, tokens: Tensor) -> Tensor:
        """N×L ids → N×384 MiniLM embeddings (no gradient) on the ids' device."""
        return minilm_sentences(self.tokenizer.decode(tokens, self.unknown)).to(tokens.device)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.head(self.frozen(tokens)), dim=-1)


TEXT_ENCODERS: dict[str, Callable[[WordTokenizer, int], nn.Module]] = {
    "bow": lambda tokenizer, dim: BagOfWordsEncoder(tokenizer.vocab_size, dim),
    "gru": lambda tokenizer, dim: GRUEncoder(tokenizer.vocab_size, dim),
    "minilm": MiniLMEncoder,
}


def image_architectures() -> list[str]:
    return model_names()


def text_architectures() -> list[str]:
    return sorted(TEXT_ENCODERS)


def build_text_encoder(arch: str, tokenizer: WordTokenizer, dim: int) -> nn.Module:
    """Text encoder ``arch`` over ``tokenizer``'s ids, into unit vectors of ``dim``."""
    if arch not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder {arch!r}; choose one of: {', '.join(text_architectures())}")
    return TEXT_ENCODERS[arch](tokenizer, dim)


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
