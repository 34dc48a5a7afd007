"""Multimodal data: a word tokenizer, the samples and benchmark types, and the offline class-level
image-text benchmark; the paper's sets and benchmark are in :mod:`semanticfl.data.paper_sets`.

**The class-level image-text benchmark** (what FedAFD runs on here, offline). Images come from an
image dataset (CIFAR-10); text is real English from WordNet (:mod:`semanticfl.data.wordnet`): for
each class, the sentences of its synset and its hyponyms. The pairing is *class-level*: an image
is paired with a sentence about its class, not with a caption of that image. Each class's
sentences are split (seeded) into disjoint public, client and test parts. Every training sample
``i`` (a row of the image dataset) is assigned one sentence of its class by a seeded draw, so:

* an image client holds the images of its partition;
* a text client holds, for every sample of its partition, that sample's sentence (so its label
  distribution is exactly its partition's, and the engine's ``partition.csv`` holds for all kinds);
* an image-text client holds (image, sentence) pairs of its partition;
* the server's public set is the server hold-out (``data.server_holdout`` images, never a
  client's) paired with public sentences.

Retrieval relevance is class-level too: a retrieved item is a hit when it has the query's class.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from semanticfl.data.datasets import ImageDataset, images_to_tensor
from semanticfl.errors import UserError

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class WordTokenizer:
    """Lower-cased word tokens → ids (0 = padding, 1 = unknown), the vocabulary ordered by
    frequency then alphabetically, so the same sentences always give the same ids."""

    def __init__(self, sentences: Sequence[str], max_length: int, max_vocabulary: int = 0) -> None:
        """``max_vocabulary`` > 0 keeps only that many words (the most frequent, ties broken
        alphabetically); the others encode as unknown. Below the cap it changes nothing."""
        counts = Counter(word for sentence in sentences for word in _WORD.findall(sentence.lower()))
        self.words = sorted(counts, key=lambda w: (-counts[w], w))[: max_vocabulary or None]
        """The vocabulary: word ``i`` has id ``i + 2``."""
        self.ids = {word: i + 2 for i, word in enumerate(self.words)}
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.ids) + 2

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """N×max_length int64 ids, truncated, right-padded with 0."""
        out = torch.zeros(len(sentences), self.max_length, dtype=torch.int64)
        for row, sentence in enumerate(sentences):
            ids = [self.ids.get(w, UNK) for w in _WORD.findall(sentence.lower())][: self.max_length]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def decode(self, tokens: torch.Tensor, unknown: str) -> list[str]:
        """N×L ids → N sentences of the lower-cased words joined by spaces (``encode`` without its
        punctuation and case); padding is dropped, an unknown id becomes ``unknown``."""
        vocabulary = ["", unknown, *self.words]  # by id: PAD (dropped), UNK, the words
        return [" ".join(vocabulary[i] for i in row if i != PAD) for row in tokens.tolist()]


@dataclass
class ModalData:
    """Samples of one client, the public set or a test set: images and/or token ids, and labels."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    """uint8 N×C×H×W."""
    tokens: torch.Tensor | None = None
    """int64 N×L."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, index: torch.Tensor) -> ModalData:
        pick = lambda x: None if x is None else x[index]
        return ModalData(self.labels[index], pick(self.images), pick(self.tokens))

    def to(self, device: str | torch.device) -> ModalData:
        move = lambda x: None if x is None else x.to(device)
        return ModalData(self.labels.to(device), move(self.images), move(self.tokens))


@dataclass(frozen=True)
class ClassTextSplits:
    """Per class, disjoint public / client / test sentences."""

    public: list[list[str]]
    client: list[list[str]]
    test: list[list[str]]


def split_class_text(
    per_class: list[list[str]], public_fraction: float, test_fraction: float, cap: int, seed: int
) -> ClassTextSplits:
    """Shuffle each class's sentences (seeded), keep at most ``cap``, cut off public and test parts
    (at least one sentence each, rounding down otherwise); the rest is the clients'."""
    rng = np.random.default_rng(seed)
    public, client, test = [], [], []
    for label, sentences in enumerate(per_class):
        if len(sentences) < 3:
            raise UserError(f"class {label} has {len(sentences)} sentences; the text splits need at least 3")
        kept = [sentences[i] for i in rng.permutation(len(sentences))[:cap]]
        n_public = max(1, int(public_fraction * len(kept)))
        n_test = max(1, int(test_fraction * len(kept)))
        if n_public + n_test >= len(kept):
            raise UserError(
                f"class {label} keeps {len(kept)} sentences: too few for public and test fractions "
                f"{public_fraction} and {test_fraction} to leave any for the clients"
            )
        public.append(kept[:n_public])
        test.append(kept[n_public : n_public + n_test])
        client.append(kept[n_public + n_test :])
    return ClassTextSplits(public, client, test)


def assign_sentences(indices: np.ndarray, labels: np.ndarray, pool: list[list[str]], draws: np.ndarray) -> list[str]:
    """Sample ``indices[i]`` (label ``labels[i]``) gets ``pool[label][draws[indices[i]] % len(pool[label])]``."""
    return [pool[int(y)][int(draws[int(i)]) % len(pool[int(y)])] for i, y in zip(indices, labels)]


RELEVANCES = ("class", "image")


@dataclass
class MultimodalBenchmark:
    """Every client's, the public and the test data of an image-text benchmark (class-level or
    the paper's sets).

    ``relevance`` says what a pair set's labels are: ``"class"`` (class-level pairing: a
    retrieved item is a hit when it has the query's class) or ``"image"`` (the labels are pair
    ids, the row of the image a caption describes: a hit only for the right image).
    """

    tokenizer: WordTokenizer
    public: ModalData
    test_images: ModalData
    test_text: ModalData
    test_pairs: ModalData
    """The image-text clients' test pairs."""
    clients: list[ModalData]
    num_classes: dict[str, int]
    """Classes of the ``image`` and ``text`` clients' tasks."""
    server_test_pairs: ModalData
    """The server model's test pairs (the clients' ones in the class-level benchmark)."""
    relevance: str = "class"


def test_subset(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded random subset of ``size`` of ``range(n)`` (all of it if ``size`` is 0), sorted."""
    return np.sort(rng.permutation(n)[: min(size or n, n)])


def labelled_images(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> ModalData:
    """Rows ``index`` of an image set with their class labels."""
    labels = torch.from_numpy(np.asarray(labels)[index].astype(np.int64))
    return ModalData(labels=labels, images=images_to_tensor(images, index))


def class_level_benchmark(
    dataset: ImageDataset,
    partitions: list[np.ndarray],
    public_indices: np.ndarray,
    kinds: Sequence[str],
    text: ClassTextSplits,
    seed: int,
    max_tokens: int = 32,
    test_size: int = 0,
    max_vocabulary: int = 0,
) -> MultimodalBenchmark:
    """Build the benchmark for clients of ``kinds`` ("image", "text", "pair") over ``partitions``
    (indices into ``dataset``'s training split). ``test_size`` > 0 keeps a seeded random subset of
    that many test images."""
    if len(public_indices) == 0:
        raise UserError("the image-text benchmark needs a public set: set data.server_holdout > 0")
    all_sentences = [s for part in (text.public, text.client, text.test) for c in part for s in c]
    tokenizer = WordTokenizer(all_sentences, max_tokens, max_vocabulary)
    rng = np.random.default_rng(seed)
    train_draws = rng.integers(0, 2**31, size=len(dataset.train_labels))
    test_draws = rng.integers(0, 2**31, size=len(dataset.test_labels))

    def samples(index: np.ndarray, kind: str, pool: list[list[str]], draws: np.ndarray, split: str) -> ModalData:
        labels = np.asarray(dataset.train_labels if split == "train" else dataset.test_labels)[index]
        images = dataset.train_images if split == "train" else dataset.test_images
        return ModalData(
            labels=torch.from_numpy(labels.astype(np.int64)),
            images=images_to_tensor(images, index) if kind in ("image", "pair") else None,
            tokens=tokenizer.encode(assign_sentences(index, labels, pool, draws)) if kind in ("text", "pair") else None,
        )

    clients = [samples(part, kind, text.client, train_draws, "train") for part, kind in zip(partitions, kinds)]
    test_index = test_subset(len(dataset.test_labels), test_size, rng)
    test_sentences = [(s, y) for y, part in enumerate(text.test) for s in part]
    test_pairs = samples(test_index, "pair", text.test, test_draws, "test")
    return MultimodalBenchmark(
        tokenizer=tokenizer,
        public=samples(np.asarray(public_indices), "pair", text.public, train_draws, "train"),
        test_images=labelled_images(dataset.test_images, dataset.test_labels, test_index),
        test_text=ModalData(
            labels=torch.tensor([y for _, y in test_sentences], dtype=torch.int64),
            tokens=tokenizer.encode([s for s, _ in test_sentences]),
        ),
        test_pairs=test_pairs,
        clients=clients,
        num_classes={"image": dataset.num_classes, "text": dataset.num_classes},
        server_test_pairs=test_pairs,
        relevance="class",
    )
