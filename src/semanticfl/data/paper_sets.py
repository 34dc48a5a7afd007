"""The FedAFD paper's sets, loaded from user paths (CIFAR-100, AG_NEWS, Flickr30k, COCO captions), and
the benchmark built from them.

**The paper's benchmark** (:func:`paper_benchmark`) builds the same
:class:`~semanticfl.data.multimodal.MultimodalBenchmark` from the paper's sets, loaded from user paths:
CIFAR-100 image clients, AG_NEWS text clients, Flickr30k image-text clients, and COCO's public and
server-test pairs. Pair labels there are pair ids (the row of the image), so relevance is per image.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semanticfl.data.datasets import ImageDataset, images_to_tensor, load_image_dataset
from semanticfl.data.multimodal import (
    ModalData,
    MultimodalBenchmark,
    WordTokenizer,
    labelled_images,
    test_subset,
)
from semanticfl.data.partition import PartitionSpec, partition_indices
from semanticfl.errors import UserError


@dataclass
class LabelledText:
    """Sentences with class labels (AG_NEWS)."""

    texts: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]

    def samples(self, tokenizer: WordTokenizer, index: np.ndarray | None = None) -> ModalData:
        """Rows ``index`` (all if None) as token ids with their labels."""
        index = np.arange(len(self.texts)) if index is None else np.asarray(index, dtype=np.int64)
        return ModalData(
            labels=torch.from_numpy(np.asarray(self.labels, dtype=np.int64)[index]),
            tokens=tokenizer.encode([self.texts[i] for i in index]),
        )


@dataclass
class CaptionedImages:
    """Images with one or more captions each (Flickr30k, COCO): ``caption_image[j]`` is the row
    of ``images`` that caption ``j`` describes."""

    images: np.ndarray
    """uint8 N×3×S×S."""
    captions: list[str]
    caption_image: np.ndarray
    names: list[str]

    def caption_rows(self, image_rows: np.ndarray, first_only: bool = False) -> np.ndarray:
        """The captions (indices, ascending) of the images ``image_rows``; only each image's first
        one with ``first_only``."""
        rows = np.flatnonzero(np.isin(self.caption_image, image_rows))
        if first_only:
            _, first = np.unique(self.caption_image[rows], return_index=True)
            rows = rows[np.sort(first)]
        return rows

    def pairs(self, tokenizer: WordTokenizer, image_rows: np.ndarray, first_only: bool = False) -> ModalData:
        """One sample per (image, caption) pair of the images ``image_rows``, labelled by its pair
        id: the image's row, shared by all its captions, so retrieval counts only the right image."""
        rows = self.caption_rows(image_rows, first_only)
        image_of = self.caption_image[rows]
        return ModalData(
            labels=torch.from_numpy(image_of.astype(np.int64)),
            images=images_to_tensor(self.images, image_of),
            tokens=tokenizer.encode([self.captions[j] for j in rows]),
        )


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path


def load_cifar100(root: str | Path) -> ImageDataset:
    """CIFAR-100 from the official python pickles (``cifar-100-python/{train,test,meta}`` under ``root``)."""
    if not Path(root).expanduser().is_dir():
        raise UserError(f"CIFAR-100 folder not found: {root} (give the folder holding cifar-100-python/)")
    return load_image_dataset("cifar100", root=str(root))


def load_ag_news(csv_path: str | Path) -> LabelledText:
    """AG_NEWS ``train.csv``/``test.csv``: rows ``"class index (1-4)","title","description"``."""
    path = _require_file(Path(csv_path).expanduser(), "AG_NEWS csv", "the file holds rows class,title,description")
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                raise UserError(f"{path}:{line}: expected class (1-4),title,description, got {row[:3]!r}")
            labels.append(int(row[0]) - 1)
            texts.append(f"{row[1].strip()}. {row[2].strip()}".replace("\\", " "))
    return LabelledText(texts, np.asarray(labels, dtype=np.int64), AG_NEWS_CLASSES)


def _decode(paths: list[Path], size: int) -> np.ndarray:
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    for row, path in enumerate(paths):
        _require_file(path, "image", "every captioned image must exist in the images folder")
        with Image.open(path) as image:
            out[row] = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    return out


def _captioned(folder: Path, pairs: list[tuple[str, str]], size: int, limit: int) -> CaptionedImages:
    names = list(dict.fromkeys(name for name, _ in pairs))[: limit or None]
    row_of = {name: row for row, name in enumerate(names)}
    kept = [(name, caption) for name, caption in pairs if name in row_of]
    return CaptionedImages(
        images=_decode([folder / name for name in names], size),
        captions=[caption for _, caption in kept],
        caption_image=np.asarray([row_of[name] for name, _ in kept], dtype=np.int64),
        names=names,
    )


def load_flickr30k(images_dir: str | Path, captions_file: str | Path, size: int = 32, limit: int = 0) -> CaptionedImages:
    """Flickr30k: an images folder and its captions file, either ``results_20130124.token`` lines
    (``name.jpg#k<TAB>caption``) or a csv with header ``image,caption`` (or Kaggle's
    ``image_name| comment_number| comment``). ``limit`` > 0 keeps the first images."""
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"Flickr30k images folder not found: {folder}")
    path = _require_file(Path(captions_file).expanduser(), "Flickr30k captions file", "results_20130124.token or a csv")
    pairs = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and "\t" in lines[0]:
        for line in filter(None, lines):
            key, _, caption = line.partition("\t")
            pairs.append((key.split("#")[0], caption.strip()))
    else:
        delimiter = "|" if "|" in (lines[0] if lines else "") else ","
        rows = csv.reader(lines, delimiter=delimiter)
        header = [h.strip() for h in next(rows, [])]
        if not header or header[0] not in ("image", "image_name") or header[-1] not in ("caption", "comment"):
            raise UserError(f"{path}: expected a header image,caption or image_name| comment_number| comment")
        pairs = [(row[0].strip(), row[-1].strip()) for row in rows if row]
    if not pairs:
        raise UserError(f"{path} holds no captions")
    return _captioned(folder, pairs, size, limit)


def load_coco_captions(images_dir: str | Path, annotations_json: str | Path, size: int = 32, limit: int = 0) -> CaptionedImages:
    """COCO captions (``captions_train2017.json``: ``images`` with ``id``/``file_name``,
    ``annotations`` with ``image_id``/``caption``); ``limit`` > 0 keeps the first images (a subset,
    e.g. the paper's 10,000 public pairs)."""
    folder = Path(images_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"COCO images folder not found: {folder}")
    path = _require_file(Path(annotations_json).expanduser(), "COCO captions json", "e.g. captions_train2017.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        file_of = {image["id"]: image["file_name"] for image in data["images"]}
        pairs = [(file_of[a["image_id"]], a["caption"].strip()) for a in data["annotations"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a COCO captions file ({type(exc).__name__}: {exc})") from None
    return _captioned(folder, pairs, size, limit)


# --------------------------------------------------------------------------- the paper's benchmark


@dataclass
class PaperSets:
    """The paper's four sets, loaded: CIFAR-100 (image clients), AG_NEWS train/test (text
    clients), Flickr30k (image-text clients) and COCO captions (the server's public and test pairs)."""

    cifar100: ImageDataset
    ag_news_train: LabelledText
    ag_news_test: LabelledText
    flickr30k: CaptionedImages
    coco: CaptionedImages


def subsample(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of ``range(n)`` (at least one), sorted; all of it at fraction 1."""
    if fraction >= 1:
        return np.arange(n)
    keep = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))


def partition_pool(
    labels: np.ndarray, spec: PartitionSpec, count: int, num_classes: int, what: str
) -> list[np.ndarray]:
    """``labels`` (one kind's pool) split over that kind's ``count`` clients with the run's
    partition scheme ``spec`` (its ``num_clients`` replaced by ``count``): positions into ``labels``."""
    if count == 0:
        return []
    spec = dataclasses.replace(spec, num_clients=count)
    spec.validate(len(labels), num_classes)
    parts = partition_indices(np.asarray(labels), spec, num_classes)
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise UserError(
            f"{what} clients {empty[:5]} received no samples; use fewer clients or a larger partition.alpha"
        )
    return parts


def iid_split(items: np.ndarray, count: int, seed: int, what: str) -> list[np.ndarray]:
    """``items`` shuffled (seeded) and cut into ``count`` near-equal parts, each sorted."""
    if count > len(items):
        raise UserError(f"{len(items)} {what} cannot be shared by {count} clients")
    order = np.random.default_rng(seed).permutation(items)
    return [np.sort(part) for part in np.array_split(order, count)] if count else []


def _deal(kinds: Sequence[str], per_kind: dict[str, list[ModalData]]) -> list[ModalData]:
    """Each client, in ``kinds``' order, gets the next of its kind's parts."""
    queues = {kind: iter(parts) for kind, parts in per_kind.items()}
    return [next(queues[kind]) for kind in kinds]


def paper_benchmark(
    sets: PaperSets,
    kinds: Sequence[str],
    spec: PartitionSpec,
    *,
    public_pairs: int,
    server_test_images: int,
    flickr_test_images: int,
    seed: int,
    train_fraction: float = 1.0,
    test_size: int = 0,
    max_tokens: int = 32,
    max_vocabulary: int = 0,
) -> MultimodalBenchmark:
    """The FedAFD paper's setup (relevance per image):

    * image clients: CIFAR-100 train (a seeded ``train_fraction``), split over the image clients
      with the run's partition scheme; tested on ``test_size`` CIFAR-100 test images (0 = all);
    * text clients: AG_NEWS train (the same fraction), split the same way by its 4 labels;
      tested on the whole AG_NEWS test set;
    * image-text clients: Flickr30k; its first ``flickr_test_images`` images with all their
      captions are their test pairs, the other images (the same fraction) are split IID by image
      and every (image, caption) pair of a client's images is one sample;
    * server: COCO's first ``public_pairs`` images with their first caption each are the public
      set; the next ``server_test_images`` images with all their captions its test pairs.

    Pair labels are pair ids (the image's row in its set). The vocabulary is built from the
    training side only (clients' texts and the public captions), capped at ``max_vocabulary``.
    """
    counts = {kind: sum(k == kind for k in kinds) for kind in ("image", "text", "pair")}
    coco, flickr = sets.coco, sets.flickr30k
    if len(coco.names) < public_pairs + server_test_images:
        raise UserError(
            f"COCO holds {len(coco.names)} captioned images, fewer than algorithm.fedafd.public_pairs + "
            f"server_test_images = {public_pairs + server_test_images}"
        )
    if len(flickr.names) <= flickr_test_images:
        raise UserError(
            f"Flickr30k holds {len(flickr.names)} images: none left for the image-text clients after "
            f"algorithm.fedafd.flickr_test_images = {flickr_test_images}"
        )
    fraction_seed = np.random.SeedSequence([seed, 15485863]).generate_state(3)
    image_pool = subsample(len(sets.cifar100.train_labels), train_fraction, int(fraction_seed[0]))
    text_pool = subsample(len(sets.ag_news_train.texts), train_fraction, int(fraction_seed[1]))
    flickr_train = np.arange(flickr_test_images, len(flickr.names))
    flickr_train = flickr_train[subsample(len(flickr_train), train_fraction, int(fraction_seed[2]))]
    image_parts = [image_pool[p] for p in partition_pool(
        sets.cifar100.train_labels[image_pool], spec, counts["image"], sets.cifar100.num_classes, "image")]
    text_parts = [text_pool[p] for p in partition_pool(
        sets.ag_news_train.labels[text_pool], spec, counts["text"], len(sets.ag_news_train.classes), "text")]
    pair_parts = iid_split(flickr_train, counts["pair"], spec.seed, "Flickr30k training images")
    public_rows = coco.caption_rows(np.arange(public_pairs), first_only=True)
    vocabulary = [sets.ag_news_train.texts[i] for part in text_parts for i in part]
    vocabulary += [flickr.captions[j] for j in flickr.caption_rows(flickr_train)]
    vocabulary += [coco.captions[j] for j in public_rows]
    tokenizer = WordTokenizer(vocabulary, max_tokens, max_vocabulary)
    cifar = sets.cifar100
    test_index = test_subset(len(cifar.test_labels), test_size, np.random.default_rng(seed))
    per_kind = {
        "image": [labelled_images(cifar.train_images, cifar.train_labels, part) for part in image_parts],
        "text": [sets.ag_news_train.samples(tokenizer, part) for part in text_parts],
        "pair": [flickr.pairs(tokenizer, part) for part in pair_parts],
    }
    return MultimodalBenchmark(
        tokenizer=tokenizer,
        public=coco.pairs(tokenizer, np.arange(public_pairs), first_only=True),
        test_images=labelled_images(cifar.test_images, cifar.test_labels, test_index),
        test_text=sets.ag_news_test.samples(tokenizer),
        test_pairs=flickr.pairs(tokenizer, np.arange(flickr_test_images)),
        clients=_deal(kinds, per_kind),
        num_classes={"image": cifar.num_classes, "text": len(sets.ag_news_train.classes)},
        server_test_pairs=coco.pairs(tokenizer, np.arange(public_pairs, public_pairs + server_test_images)),
        relevance="image",
    )
