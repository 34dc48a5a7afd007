"""Image-classification datasets: a registry of specs, readers for common on-disk formats, a decode-once cache.

`load_image_dataset(name)` looks for the data in this order and uses the first place that has it:

1. The user's folder (the ``root`` argument, else ``$SEMANTICFL_DATA``). Under it, in this order:
   a. the official release: CIFAR python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``), MNIST /
      Fashion-MNIST IDX files (raw or ``.gz``; in ``<root>/<name>/``, ``<root>/fashion-mnist/``,
      ``<root>/FashionMNIST/raw/``, ``<root>/mnist/``, ``<root>/MNIST/raw/`` or ``<root>`` itself), or the
      ``tiny-imagenet-200/`` folder (its ``val`` split serves as the test split);
   b. Hugging Face style parquet: ``<root>/<name>/{train,test}.parquet`` or ``<root>/{train,test}.parquet``, an
      image column ``img`` or ``image`` (struct {bytes, path} or plain binary) and an integer ``label`` column
      (``fine_label`` for CIFAR-100);
   c. an image-folder tree ``<root>/<name>/{train,test}/<class>/*.{png,jpg,jpeg}``.
2. Places this machine provides: the CIFAR-10 parquet in ``shared/data/cifar10`` (next to the working
   directory or the repository), the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/``), and
   whatever an earlier ``download=True`` fetched into ``<cache>/downloads``.
3. With ``download=True`` only: the official archive, checked against its known MD5, into ``<cache>/downloads``.

Whatever the source, it is decoded once into ``.npy`` files under
``<cache>/datasets/<name>-<fingerprint>/`` (``<cache>`` = ``cache_dir``, else ``$SEMANTICFL_CACHE``, else
``~/.cache/semanticfl``); every load returns read-only memory maps of those files. The fingerprint hashes the
source files' paths, sizes and modification times, so editing the source makes a fresh cache.

Class names: the registry holds them for every dataset except TinyImageNet, whose names come from the data
(``words.txt`` in ``wnids.txt`` order), so ``ImageDataset.classes`` (not ``DatasetSpec.classes``) is the one to
use. A name that is not registered can still be loaded from a parquet pair or an image-folder tree under the
user's folder; its spec (channels, size, normalisation statistics) is then measured from the data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from semanticfl.errors import UserError
from semanticfl.files import atomic_write

log = logging.getLogger(__name__)

DATA_ENV = "SEMANTICFL_DATA"
CACHE_ENV = "SEMANTICFL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/semanticfl")
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SHARED_CIFAR10_DIR = Path("shared/data/cifar10")
CACHE_FORMAT_VERSION = 1
DOWNLOAD_TIMEOUT_S = 60

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a data pipeline need to know about a dataset before seeing any of it.

    ``classes`` is empty when the names come from the data (TinyImageNet); ``num_classes`` is then the count of
    the official release, and the loaded dataset's spec carries the names and count found in the data.
    ``augment`` lists the training augmentations that suit the images: "crop" (pad and random-crop) and
    "flip" (random horizontal flip; not for digits or other chiral images).
    """

    name: str
    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    num_classes: int

    def __post_init__(self) -> None:
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.in_channels})")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Both splits of a dataset as uint8 N×C×H×W images and int64 labels (possibly read-only memory maps).

    ``spec.classes`` is always resolved here, so ``classes`` is the authoritative list of class names.
    """

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if len(self.spec.classes) != self.spec.num_classes:
            raise ValueError(f"{self.spec.name}: an ImageDataset needs its spec's class names resolved")
        for split in ("train", "test"):
            _check_split(
                getattr(self, f"{split}_images"),
                getattr(self, f"{split}_labels"),
                self.spec,
                f"the {split} split of {self.source}",
            )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def image_size(self) -> int:
        return self.spec.image_size


CIFAR100_CLASSES = tuple(
    name.replace("_", " ")
    for name in (
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
        "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
        "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
        "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
        "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
        "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
        "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
        "worm"
    ).split()
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            in_channels=3,
            image_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            augment=("crop", "flip"),
            num_classes=10,
        ),
        DatasetSpec(
            name="cifar100",
            classes=CIFAR100_CLASSES,
            in_channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            augment=("crop", "flip"),
            num_classes=100,
        ),
        DatasetSpec(
            name="tinyimagenet",
            classes=(),
            in_channels=3,
            image_size=64,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            augment=("crop", "flip"),
            num_classes=200,
        ),
        DatasetSpec(
            name="fashion_mnist",
            classes=(
                "T-shirt/top", "trouser", "pullover", "dress", "coat",
                "sandal", "shirt", "sneaker", "bag", "ankle boot",
            ),
            in_channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            augment=("crop",),
            num_classes=10,
        ),
        DatasetSpec(
            name="mnist",
            classes=tuple(f"digit {digit}" for digit in range(10)),
            in_channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            augment=("crop",),
            num_classes=10,
        ),
    )
}


def dataset_names() -> list[str]:
    """The registered dataset names, in registry order."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registered spec for ``name``; a UserError listing the known names for anything else."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def images_to_tensor(images: np.ndarray, indices: np.ndarray | None = None) -> torch.Tensor:
    """A contiguous, writable uint8 tensor holding a copy of ``images[indices]`` (all rows if None)."""
    base = np.asarray(images)
    rows = base.copy() if indices is None else base[np.asarray(indices, dtype=np.int64)]
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.uint8))


def load_image_dataset(
    name: str, root: str | None = None, cache_dir: str | None = None, download: bool = False
) -> ImageDataset:
    """Find, decode (once) and validate a dataset; see the module docstring for where it looks."""
    spec = DATASETS.get(name)
    user_root = _user_root(root)
    cache_root = _cache_root(cache_dir)
    if spec is None:
        _check_unregistered_name(name, user_root)
    layouts = _candidate_layouts(name, user_root, cache_root)
    layout = next((layout for layout in layouts if layout.present()), None)
    if layout is None and download and spec is not None:
        layout = _download_official(name, cache_root / "downloads")
    if layout is None:
        raise _not_found_error(name, layouts, spec is not None)
    return _load_from_layout(name, spec, layout, cache_root)


# ----------------------------------------------------------------------------------------------- locations


def _user_root(root: str | os.PathLike | None) -> Path | None:
    """The user's data folder (argument, else $SEMANTICFL_DATA), which must exist when given."""
    chosen = root if root not in (None, "") else os.environ.get(DATA_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        origin = "the data root argument" if root not in (None, "") else f"${DATA_ENV}"
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"data folder {path} (from {origin}) {state}; create it or point it at your data")
    return path


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder: argument, else $SEMANTICFL_CACHE, else ~/.cache/semanticfl."""
    chosen = cache_dir if cache_dir not in (None, "") else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser().resolve()


def _repo_root() -> Path | None:
    """The nearest folder above this file that holds a pyproject.toml (the source checkout), if any."""
    return next((parent for parent in Path(__file__).resolve().parents if (parent / "pyproject.toml").is_file()), None)


def _check_unregistered_name(name: str, user_root: Path | None) -> None:
    """Unregistered names are allowed only as folders of the user's own data."""
    if user_root is None or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            f"(for your own images, set ${DATA_ENV} to a folder holding {name}/train/<class>/ and {name}/test/<class>/)"
        )


def _candidate_layouts(name: str, user_root: Path | None, cache_root: Path) -> list[_Layout]:
    """Every place to look for ``name``, in priority order, without duplicates."""
    layouts: list[_Layout] = []
    if user_root is not None:
        layouts += _official_layouts(user_root, name)
        layouts += _parquet_layouts(user_root, name)
        layouts.append(_ImageFolderLayout(user_root / name))
    layouts += _system_layouts(name)
    layouts += _official_layouts(cache_root / "downloads", name)
    unique: dict[str, _Layout] = {}
    for layout in layouts:
        unique.setdefault(layout.description, layout)
    return list(unique.values())


def _official_layouts(root: Path, name: str) -> list[_Layout]:
    """The official release formats of ``name`` as they would sit under ``root``."""
    if name == "cifar10":
        return [_CifarPickleLayout(folder / "cifar-10-batches-py", name) for folder in (root, root / name)]
    if name == "cifar100":
        return [_CifarPickleLayout(folder / "cifar-100-python", name) for folder in (root, root / name)]
    if name == "tinyimagenet":
        return [_TinyImageNetLayout(folder / "tiny-imagenet-200") for folder in (root, root / name)]
    if name == "mnist":
        return [_IdxLayout(folder) for folder in (root / name, root / "MNIST" / "raw", root)]
    if name == "fashion_mnist":
        folders = (root / name, root / "fashion-mnist", root / "FashionMNIST" / "raw", root)
        return [_IdxLayout(folder) for folder in folders]
    return []


def _parquet_layouts(root: Path, name: str) -> list[_Layout]:
    """``<root>/<name>/{train,test}.parquet`` then ``<root>/{train,test}.parquet``."""
    return [_ParquetLayout(folder, name) for folder in (root / name, root)]


def _system_layouts(name: str) -> list[_Layout]:
    """Copies this machine provides: the shared CIFAR-10 parquet and the Debian Fashion-MNIST package."""
    if name == "cifar10":
        bases = [Path.cwd() / "..", Path.cwd()]
        repo = _repo_root()
        if repo is not None:
            bases.append(repo / "..")
        return [_ParquetLayout((base / SHARED_CIFAR10_DIR).resolve(), name) for base in bases]
    if name == "fashion_mnist":
        return [_IdxLayout(SYSTEM_FASHION_MNIST_DIR)]
    return []


def _not_found_error(name: str, layouts: Sequence[_Layout], registered: bool) -> UserError:
    """One line naming every place looked at and the ways to make the data available."""
    fixes = [f"set ${DATA_ENV} (or pass a data root) to a folder holding one of these layouts"]
    if name == "fashion_mnist":
        fixes.append("install the Debian package dataset-fashion-mnist")
    if registered:
        fixes.append("allow downloading (download=True) to fetch the official release")
    else:
        fixes.append(f"use a registered dataset ({', '.join(DATASETS)})")
    looked = "; ".join(layout.description for layout in layouts)
    return UserError(f"no {name} data found; looked for: {looked}. To fix: {', or '.join(fixes)}")


# ------------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Splits:
    """Decoded arrays of both splits plus the class names they use."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


class _Layout(ABC):
    """One way a dataset can sit on disk: knows whether it is there, its files, and how to decode it."""

    description: str

    @abstractmethod
    def present(self) -> bool:
        """Whether the files this layout needs exist (cheap: no decoding)."""

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Every file whose content the decoded arrays depend on (for the cache fingerprint)."""

    @abstractmethod
    def decode(self, spec: DatasetSpec | None) -> _Splits:
        """Read the data; ``spec`` is None for an unregistered dataset."""


class _CifarPickleLayout(_Layout):
    """The CIFAR-10 / CIFAR-100 "python version" release: pickled dicts of N×3072 uint8 rows."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        if name == "cifar10":
            self.train_names = tuple(f"data_batch_{index}" for index in range(1, 6))
            self.test_names, self.label_key = ("test_batch",), b"labels"
        else:
            self.train_names, self.test_names, self.label_key = ("train",), ("test",), b"fine_labels"
        self.description = f"CIFAR python pickles in {folder}"

    def present(self) -> bool:
        return all(path.is_file() for path in self.source_files())

    def source_files(self) -> list[Path]:
        return [self.folder / name for name in self.train_names + self.test_names]

    def decode(self, spec: DatasetSpec | None) -> _Splits:
        train = [_read_cifar_batch(self.folder / name, self.label_key) for name in self.train_names]
        test = [_read_cifar_batch(self.folder / name, self.label_key) for name in self.test_names]
        return _Splits(
            np.concatenate([images for images, _ in train]),
            np.concatenate([labels for _, labels in train]),
            np.concatenate([images for images, _ in test]),
            np.concatenate([labels for _, labels in test]),
            spec.classes,
        )


class _IdxLayout(_Layout):
    """The MNIST / Fashion-MNIST release: four IDX files, each raw or gzipped."""

    STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"IDX files (train-images-idx3-ubyte[.gz], ...) in {folder}"

    def _file(self, stem: str) -> Path | None:
        """The raw file if present, else the gzipped one, else None."""
        return next((path for path in (self.folder / stem, self.folder / f"{stem}.gz") if path.is_file()), None)

    def present(self) -> bool:
        return all(self._file(stem) is not None for stem in self.STEMS)

    def source_files(self) -> list[Path]:
        return [self._file(stem) for stem in self.STEMS]

    def decode(self, spec: DatasetSpec | None) -> _Splits:
        train_images, train_labels, test_images, test_labels = (
            _read_idx(path, ndim) for path, ndim in zip(self.source_files(), (3, 1, 3, 1))
        )
        return _Splits(
            train_images[:, None],
            train_labels.astype(np.int64),
            test_images[:, None],
            test_labels.astype(np.int64),
            spec.classes,
        )


class _TinyImageNetLayout(_Layout):
    """The tiny-imagenet-200 release; its labelled ``val`` split is used as the test split."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"TinyImageNet folder {folder} (wnids.txt, words.txt, train/, val/)"

    def _listing_files(self) -> list[Path]:
        return [self.folder / "wnids.txt", self.folder / "words.txt", self.folder / "val" / "val_annotations.txt"]

    def present(self) -> bool:
        return all(path.is_file() for path in self._listing_files()) and (self.folder / "train").is_dir()

    def source_files(self) -> list[Path]:
        wnids = self._wnids()
        train, test = self._train_items(wnids), self._val_items(wnids)
        return self._listing_files() + [path for path, _ in train + test]

    def decode(self, spec: DatasetSpec | None) -> _Splits:
        wnids = self._wnids()
        train, test = self._train_items(wnids), self._val_items(wnids)
        return _Splits(
            _decode_images([path for path, _ in train], spec.in_channels, spec.image_size, str(self.folder / "train")),
            np.array([label for _, label in train], dtype=np.int64),
            _decode_images([path for path, _ in test], spec.in_channels, spec.image_size, str(self.folder / "val")),
            np.array([label for _, label in test], dtype=np.int64),
            self._class_names(wnids),
        )

    def _wnids(self) -> list[str]:
        wnids = [line.strip() for line in _read_text(self.folder / "wnids.txt").splitlines() if line.strip()]
        if not wnids:
            raise UserError(f"{self.folder / 'wnids.txt'} lists no classes; re-extract tiny-imagenet-200")
        return wnids

    def _class_names(self, wnids: list[str]) -> tuple[str, ...]:
        """The first comma-separated name of each wnid in words.txt, in wnids.txt order."""
        words_path = self.folder / "words.txt"
        first_names = {}
        for line in _read_text(words_path).splitlines():
            wnid, _, names = line.partition("\t")
            first_names[wnid.strip()] = names.split(",")[0].strip()
        missing = [wnid for wnid in wnids if not first_names.get(wnid)]
        if missing:
            raise UserError(f"{words_path} has no name for {', '.join(missing[:5])}; re-extract tiny-imagenet-200")
        return tuple(first_names[wnid] for wnid in wnids)

    def _train_items(self, wnids: list[str]) -> list[tuple[Path, int]]:
        return [
            (path, label)
            for label, wnid in enumerate(wnids)
            for path in _image_files(self.folder / "train" / wnid / "images")
        ]

    def _val_items(self, wnids: list[str]) -> list[tuple[Path, int]]:
        """Pairs from val_annotations.txt lines "<file>\\t<wnid>\\t<box...>"."""
        annotations = self.folder / "val" / "val_annotations.txt"
        label_of = {wnid: label for label, wnid in enumerate(wnids)}
        items = []
        for number, line in enumerate(_read_text(annotations).splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise UserError(f"{annotations} line {number} names no known wnid; re-extract tiny-imagenet-200")
            items.append((self.folder / "val" / "images" / fields[0], label_of[fields[1]]))
        return items


class _ParquetLayout(_Layout):
    """Hugging Face style ``train.parquet`` + ``test.parquet`` with an encoded-image column and labels."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.label_columns = ("fine_label", "label") if name == "cifar100" else ("label",)
        self.description = f"parquet files {folder / 'train.parquet'} and test.parquet"

    def present(self) -> bool:
        return all(path.is_file() for path in self.source_files())

    def source_files(self) -> list[Path]:
        return [self.folder / "train.parquet", self.folder / "test.parquet"]

    def decode(self, spec: DatasetSpec | None) -> _Splits:
        train_path, test_path = self.source_files()
        train_blobs, train_labels, train_names = _read_parquet(train_path, self.label_columns)
        test_blobs, test_labels, test_names = _read_parquet(test_path, self.label_columns)
        if train_names and test_names and train_names != test_names:
            raise UserError(f"{train_path} and {test_path} name different classes; re-create them from one dataset")
        classes, label_map = _resolve_class_names(train_names, spec, train_path)
        channels = spec.in_channels if spec else _infer_channels(train_blobs + test_blobs, str(train_path))
        train_images = _decode_images(train_blobs, channels, spec.image_size if spec else None, str(train_path))
        test_images = _decode_images(test_blobs, channels, train_images.shape[-1], str(test_path))
        return _Splits(
            train_images,
            _map_labels(train_labels, label_map, train_path),
            test_images,
            _map_labels(test_labels, label_map, test_path),
            classes,
        )


class _ImageFolderLayout(_Layout):
    """``<folder>/{train,test}/<class name>/*.{png,jpg,jpeg}``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"image folders {folder}/{{train,test}}/<class>/*.png|jpg"

    def present(self) -> bool:
        return (self.folder / "train").is_dir() and (self.folder / "test").is_dir()

    def source_files(self) -> list[Path]:
        return [path for split in ("train", "test") for path, _ in self._items(split)]

    def decode(self, spec: DatasetSpec | None) -> _Splits:
        train_names = self._class_folders("train")
        classes = spec.classes if spec and spec.classes else tuple(train_names)
        label_of = _match_class_names(sorted(set(train_names) | set(self._class_folders("test"))), classes, self.folder)
        train, test = self._items("train", label_of), self._items("test", label_of)
        for split, items in (("train", train), ("test", test)):
            if not items:
                raise UserError(f"{self.folder / split} holds no .png/.jpg images; add some or remove the folder")
        channels = spec.in_channels if spec else _infer_channels([path for path, _ in train + test], str(self.folder))
        size = spec.image_size if spec else None
        train_images = _decode_images([path for path, _ in train], channels, size, str(self.folder / "train"))
        size = train_images.shape[-1]
        test_images = _decode_images([path for path, _ in test], channels, size, str(self.folder / "test"))
        return _Splits(
            train_images,
            np.array([label for _, label in train], dtype=np.int64),
            test_images,
            np.array([label for _, label in test], dtype=np.int64),
            classes,
        )

    def _class_folders(self, split: str) -> list[str]:
        return sorted(entry.name for entry in (self.folder / split).iterdir() if entry.is_dir())

    def _items(self, split: str, label_of: dict[str, int] | None = None) -> list[tuple[Path, int]]:
        """(image path, label) for every image of a split; labels are -1 when ``label_of`` is not given."""
        return [
            (path, label_of[folder] if label_of else -1)
            for folder in self._class_folders(split)
            for path in _image_files(self.folder / split / folder)
        ]


# ------------------------------------------------------------------------------------------ format readers


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only, so a hostile pickle cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch as (N×3×32×32 uint8 images, int64 labels)."""
    hint = "re-extract the CIFAR archive or point $SEMANTICFL_DATA elsewhere"
    try:
        with path.open("rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError) as error:
        raise UserError(f"{path} is not a readable CIFAR python batch: {_one_line(error)}; {hint}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None:
        raise UserError(f"{path} lacks N×3072 'data' and {label_key.decode()!r} entries; {hint}")
    labels = _integer_labels(labels)
    if labels is None:
        raise UserError(f"{path}: {label_key.decode()!r} must be a list of integer labels; {hint}")
    if len(labels) != len(data):
        raise UserError(f"{path} has {len(data)} images but {len(labels)} labels; {hint}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def _integer_labels(labels: object) -> np.ndarray | None:
    """``labels`` as a 1-D int64 array if it is a flat sequence of integers, else None."""
    try:
        array = np.asarray(labels)
    except ValueError:  # a ragged nesting
        return None
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        return None
    return array.astype(np.int64)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (raw or gzipped) as an array of its declared shape."""
    hint = "re-download it or point $SEMANTICFL_DATA elsewhere"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path} is not a readable IDX file: {_one_line(error)}; {hint}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise UserError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s); {hint}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(f"{path} holds {len(raw) - header} data bytes but its header promises {expected}; {hint}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_parquet(path: Path, label_columns: Sequence[str]) -> tuple[list[bytes], np.ndarray, tuple[str, ...]]:
    """(encoded images, int64 labels, class names from the Hugging Face metadata or ()) of one parquet file."""
    hint = "re-create it or point $SEMANTICFL_DATA elsewhere"
    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        image_column = next((name for name in ("img", "image") if name in columns), None)
        label_column = next((name for name in label_columns if name in columns), None)
        if image_column is None or label_column is None:
            raise UserError(
                f"{path} needs an 'img' or 'image' column and a {' or '.join(map(repr, label_columns))} column "
                f"but has {', '.join(columns)}; {hint}"
            )
        table = parquet.read(columns=[image_column, label_column])
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path} is not a readable parquet file: {_one_line(error)}; {hint}") from None
    images = table.column(image_column).combine_chunks()
    if pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0:
        images = images.field("bytes")
    labels = table.column(label_column)
    if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)) or images.null_count:
        raise UserError(f"{path}: column {image_column!r} must hold encoded image bytes in every row; {hint}")
    if not pa.types.is_integer(labels.type) or labels.null_count:
        raise UserError(f"{path}: column {label_column!r} must hold an integer label in every row; {hint}")
    names = _huggingface_class_names(parquet.schema_arrow, label_column)
    return images.to_pylist(), labels.to_numpy().astype(np.int64), names


def _huggingface_class_names(schema: pa.Schema, label_column: str) -> tuple[str, ...]:
    """The ClassLabel names that `datasets` records in the parquet metadata, or () if there are none."""
    try:
        info = json.loads((schema.metadata or {})[b"huggingface"])
        return tuple(str(name) for name in info["info"]["features"][label_column]["names"])
    except (KeyError, TypeError, ValueError):
        return ()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(
            f"cannot read {path}: {_one_line(error)}; re-create it or point ${DATA_ENV} elsewhere"
        ) from None


def _image_files(folder: Path) -> list[Path]:
    """The .png/.jpg/.jpeg files in a folder (any letter case), sorted by name; [] if the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


# ------------------------------------------------------------------------------------------ image decoding


def _open_image(item: bytes | Path, where: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(
            f"{where} is not a readable image ({_one_line(error)}); re-create it or point ${DATA_ENV} elsewhere"
        ) from None


def _infer_channels(items: Sequence[bytes | Path], where: str) -> int:
    """1 if every image is grayscale, else 3 (reads headers only)."""
    for index, item in enumerate(items):
        with _open_image(item, _item_name(item, index, where)) as image:
            if image.mode not in GRAYSCALE_MODES:
                return 3
    return 1


def _decode_images(items: Sequence[bytes | Path], channels: int, size: int | None, where: str) -> np.ndarray:
    """Decode encoded images (``where`` names their collection) into one uint8 N×C×H×W array.

    Every image must be square and, if ``size`` is given, ``size`` pixels wide. Grayscale images are expanded
    to RGB when ``channels`` is 3, colour images reduced to luminance when it is 1.
    """
    mode = "L" if channels == 1 else "RGB"
    output: np.ndarray | None = None
    for index, item in enumerate(items):
        name = _item_name(item, index, where)
        with _open_image(item, name) as image:
            try:
                pixels = np.asarray(image.convert(mode))
            except (OSError, ValueError) as error:
                raise UserError(f"{name} is not a readable image ({_one_line(error)}); re-create it") from None
        if output is None:
            size = size or pixels.shape[0]
            output = np.empty((len(items), channels, size, size), dtype=np.uint8)
        if pixels.shape[:2] != (size, size):
            raise UserError(
                f"{name} is {pixels.shape[1]}×{pixels.shape[0]} pixels but this dataset needs {size}×{size}; "
                "resize the images first"
            )
        output[index] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if output is None:
        raise UserError(f"{where} holds no images; add images or point ${DATA_ENV} elsewhere")
    return output


def _item_name(item: bytes | Path, index: int, where: str) -> str:
    """A file's path, or "<where> row <index>" for an image stored inside another file."""
    return str(item) if isinstance(item, Path) else f"{where} row {index}"


# ------------------------------------------------------------------------------------- class names, labels


def _normalised(name: str) -> str:
    """Lower-case letters and digits only, so "T-shirt/top", "T-shirt_top" and "t shirt top" compare equal."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _match_class_names(found: Sequence[str], classes: Sequence[str], where: Path) -> dict[str, int]:
    """Map each name found in the data to an index in ``classes`` (by normalised name, or a label number)."""
    index_of = {_normalised(name): index for index, name in enumerate(classes)}
    mapping, unknown = {}, []
    for name in found:
        index = index_of.get(_normalised(name))
        if index is None and name.isdigit() and int(name) < len(classes):
            index = int(name)
        if index is None:
            unknown.append(name)
        else:
            mapping[name] = index
    if unknown:
        raise UserError(
            f"{where}: class name(s) {', '.join(unknown[:5])} match none of this dataset's {len(classes)} classes "
            f"({', '.join(classes[:4])}, ...); rename them to the class names or label numbers"
        )
    return mapping


def _resolve_class_names(
    names_in_file: tuple[str, ...], spec: DatasetSpec | None, path: Path
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The dataset's class names and, when the file orders its classes differently, a label remapping."""
    if spec is not None and spec.classes:
        if not names_in_file:
            return spec.classes, None
        mapping = _match_class_names(names_in_file, spec.classes, path)
        return spec.classes, np.array([mapping[name] for name in names_in_file], dtype=np.int64)
    if not names_in_file:
        raise UserError(
            f"{path} records no class names in its metadata; use an image-folder tree named by class instead"
        )
    return names_in_file, None


def _map_labels(labels: np.ndarray, label_map: np.ndarray | None, path: Path) -> np.ndarray:
    """Translate file labels to dataset labels; out-of-range labels are left for `_check_split` to report."""
    if label_map is None:
        return labels
    _check_label_range(labels, len(label_map), str(path))
    return label_map[labels]


def _check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise UserError(
            f"labels in {where} must lie in [0, {num_classes}) but include {bad}; fix the labels or the dataset name"
        )


def _check_split(images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, where: str) -> None:
    """Images uint8 N×C×S×S matching the spec, labels int64 N within [0, num_classes)."""
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise UserError(
            f"images in {where} are {images.dtype} {tuple(images.shape)} but {spec.name} needs uint8 N×"
            f"{'×'.join(map(str, expected))}; fix the data or the dataset name"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise UserError(
            f"labels in {where} are {labels.dtype} {tuple(labels.shape)} but need int64 ({len(images)},); fix the data"
        )
    if len(images) == 0:
        raise UserError(f"{where} holds no images; add data or point ${DATA_ENV} elsewhere")
    _check_label_range(labels, spec.num_classes, where)


def _measured_spec(name: str, splits: _Splits) -> DatasetSpec:
    """A spec for an unregistered dataset, with per-channel statistics measured on its training images."""
    images = splits.train_images
    channels = images.shape[1]
    sums, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].astype(np.float64) / 255.0
        sums += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)).clip(min=1 / 255)
    return DatasetSpec(
        name=name,
        classes=splits.classes,
        in_channels=channels,
        image_size=images.shape[-1],
        mean=tuple(round(float(value), 4) for value in mean),
        std=tuple(round(float(value), 4) for value in std),
        augment=("crop", "flip") if channels == 3 else ("crop",),
        num_classes=len(splits.classes),
    )


# ----------------------------------------------------------------------------------------- decode-once cache


def _load_from_layout(name: str, spec: DatasetSpec | None, layout: _Layout, cache_root: Path) -> ImageDataset:
    """Decode ``layout`` into the cache unless a valid copy is there, then wrap the memory-mapped arrays."""
    folder = cache_root / "datasets" / f"{name}-{_fingerprint(name, layout.source_files())[:16]}"
    splits = _read_cache(folder)
    if splits is None:
        log.info("decoding %s from %s into %s (once)", name, layout.description, folder)
        start = time.perf_counter()
        decoded = layout.decode(spec)
        if spec is not None:
            for split in ("train", "test"):
                images, labels = getattr(decoded, f"{split}_images"), getattr(decoded, f"{split}_labels")
                _check_split(images, labels, spec, f"the {split} split of {layout.description}")
        _write_cache(folder, decoded)
        log.info("decoded %s in %.1f s", name, time.perf_counter() - start)
        splits = _read_cache(folder)
        if splits is None:
            raise UserError(f"the cache just written in {folder} cannot be read back; check the disk or ${CACHE_ENV}")
    if spec is None:
        resolved = _measured_spec(name, splits)
    elif not spec.classes:
        resolved = replace(spec, classes=splits.classes, num_classes=len(splits.classes))
    else:
        resolved = spec
    return ImageDataset(
        spec=resolved,
        train_images=splits.train_images,
        train_labels=splits.train_labels,
        test_images=splits.test_images,
        test_labels=splits.test_labels,
        source=f"{layout.description} (decoded copy in {folder})",
    )


def _fingerprint(name: str, files: Sequence[Path]) -> str:
    """sha256 over the dataset name, cache format and every source file's absolute path, size and mtime."""
    digest = hashlib.sha256(f"semanticfl-cache-v{CACHE_FORMAT_VERSION}\0{name}\n".encode())
    for path in sorted(str(Path(file).resolve()) for file in files):
        try:
            status = os.stat(path)
        except OSError as error:
            raise UserError(f"cannot read {path}: {_one_line(error)}; check the data folder") from None
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(folder: Path) -> _Splits | None:
    """The cached arrays as read-only memory maps, or None if any file is missing or disagrees with meta.json."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta["version"] != CACHE_FORMAT_VERSION:
            return None
        arrays = {}
        for name in ARRAY_NAMES:
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            recorded = meta["arrays"][name]
            if list(array.shape) != recorded["shape"] or str(array.dtype) != recorded["dtype"]:
                raise ValueError(f"{name}.npy does not match meta.json")
            if name.endswith("labels") and _sha256(array) != recorded["sha256"]:
                raise ValueError(f"{name}.npy content does not match meta.json")
            arrays[name] = array
        return _Splits(**arrays, classes=tuple(meta["classes"]))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        log.warning("rebuilding the dataset cache in %s: %s", folder, _one_line(error))
        return None


def _write_cache(folder: Path, splits: _Splits) -> None:
    """Write every array, then meta.json, each atomically; meta.json goes first so a half-rewrite is never valid."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)
        meta = {"version": CACHE_FORMAT_VERSION, "classes": list(splits.classes), "arrays": {}}
        for name in ARRAY_NAMES:
            array = np.ascontiguousarray(getattr(splits, name))
            atomic_write(folder / f"{name}.npy", lambda handle, array=array: np.save(handle, array))
            meta["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype), "count": len(array)}
            if name.endswith("labels"):
                meta["arrays"][name]["sha256"] = _sha256(array)
        text = json.dumps(meta, indent=1).encode()
        atomic_write(folder / "meta.json", lambda handle: handle.write(text))
    except OSError as error:
        raise UserError(
            f"cannot write the dataset cache in {folder}: {_one_line(error)}; set ${CACHE_ENV} to a writable folder"
        ) from None



def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------- downloading


@dataclass(frozen=True)
class _Download:
    """One file of an official release: where to get it, its MD5, and where it goes under the downloads folder.

    Archives (``.tar.gz``, ``.zip``) are unpacked and removed; ``target`` is then the folder they create.
    """

    url: str
    md5: str
    target: str


_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MNIST_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

_DOWNLOADS: dict[str, tuple[_Download, ...]] = {
    "cifar10": (
        _Download(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-batches-py",
        ),
    ),
    "cifar100": (
        _Download(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python",
        ),
    ),
    "tinyimagenet": (
        _Download(
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200"
        ),
    ),
    "mnist": tuple(
        _Download(_MNIST_BASE + file, md5, f"mnist/{file}")
        for file, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    "fashion_mnist": tuple(
        _Download(_FASHION_MNIST_BASE + file, md5, f"fashion_mnist/{file}")
        for file, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
}

_open_url = urllib.request.urlopen


def _download_official(name: str, downloads: Path) -> _Layout:
    """Fetch (and unpack) the official release of ``name`` into ``downloads``; return the layout it forms."""
    for item in _DOWNLOADS[name]:
        target = downloads / item.target
        if target.exists():
            continue
        archive_suffix = next((suffix for suffix in (".tar.gz", ".zip") if item.url.endswith(suffix)), None)
        if archive_suffix is None:
            _fetch(item, target)
        else:
            archive = downloads / f"{item.target}{archive_suffix}"
            _fetch(item, archive)
            _unpack(archive, downloads, item.target)
    layout = next((layout for layout in _official_layouts(downloads, name) if layout.present()), None)
    if layout is None:
        raise UserError(f"the downloaded {name} release in {downloads} is incomplete; delete that folder and retry")
    return layout


def _fetch(item: _Download, destination: Path) -> None:
    """Download ``item.url`` to ``destination`` via a temporary file, verifying its MD5 before the rename."""
    log.info("downloading %s", item.url)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    except OSError as error:
        raise UserError(f"cannot write to {destination.parent}: {_one_line(error)}; set ${CACHE_ENV}") from None
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(descriptor, "wb") as output, _open_url(item.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                output.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(
            f"could not download {item.url}: {_one_line(error)}; check the network, or fetch it yourself and "
            f"point ${DATA_ENV} at the folder holding it"
        ) from None
    if digest.hexdigest() != item.md5:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(
            f"{item.url} downloaded with MD5 {digest.hexdigest()} but {item.md5} was expected; "
            "the transfer was corrupted or the file changed upstream, so retry later or fetch it yourself"
        )
    os.replace(temporary, destination)


def _unpack(archive: Path, downloads: Path, folder_name: str) -> None:
    """Unpack an archive into a scratch folder, move its ``folder_name`` into place, and delete the rest."""
    scratch = Path(tempfile.mkdtemp(dir=downloads, prefix=".unpack-"))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(scratch)
        else:
            with tarfile.open(archive) as bundle:
                bundle.extractall(scratch, filter="data")
        if not (scratch / folder_name).is_dir():
            raise UserError(f"{archive} does not contain {folder_name}/; delete it and retry the download")
        os.replace(scratch / folder_name, downloads / folder_name)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot unpack {archive}: {_one_line(error)}; delete it and retry the download") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    archive.unlink()


def _one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(error).split()) or type(error).__name__
