"""Image-classification datasets: `ImageDataset` and `load_image_dataset`, which finds, decodes and checks one.

Its parts sit in four modules below it, each importing only those listed before it: `registry.py` (the
specs), `layouts/` (on-disk layouts, one module per format, image decoding, label checks), `cache.py` (the
decode-once cache), `downloads.py` (checksummed downloads). This module picks the places to look, joins the
parts and re-exports the registry (`DATASETS`, `DatasetSpec`, `dataset_names`, `get_spec`).

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

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from semanticfl.data.cache import CACHE_ENV, cache_root, fingerprint, read_cache, write_cache
from semanticfl.data.downloads import download_official
from semanticfl.data.layouts import official_layouts
from semanticfl.data.layouts.base import DATA_ENV, Layout
from semanticfl.data.layouts.checks import check_split, measured_spec
from semanticfl.data.layouts.folders import ImageFolderLayout
from semanticfl.data.layouts.idx import IdxLayout
from semanticfl.data.layouts.parquet import ParquetLayout
from semanticfl.data.registry import DATASETS, DatasetSpec, dataset_names, get_spec
from semanticfl.errors import UserError

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageDataset",
    "dataset_names",
    "get_spec",
    "images_to_tensor",
    "load_image_dataset",
]

log = logging.getLogger(__name__)

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SHARED_CIFAR10_DIR = Path("shared/data/cifar10")


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
            check_split(
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
    cache_folder = cache_root(cache_dir)
    if spec is None:
        _check_unregistered_name(name, user_root)
    layouts = _candidate_layouts(name, user_root, cache_folder)
    layout = next((layout for layout in layouts if layout.present()), None)
    if layout is None and download and spec is not None:
        layout = download_official(name, cache_folder / "downloads")
    if layout is None:
        raise _not_found_error(name, layouts, spec is not None)
    return _load_from_layout(name, spec, layout, cache_folder)


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


def _candidate_layouts(name: str, user_root: Path | None, cache_folder: Path) -> list[Layout]:
    """Every place to look for ``name``, in priority order, without duplicates."""
    layouts: list[Layout] = []
    if user_root is not None:
        layouts += official_layouts(user_root, name)
        layouts += _parquet_layouts(user_root, name)
        layouts.append(ImageFolderLayout(user_root / name))
    layouts += _system_layouts(name)
    layouts += official_layouts(cache_folder / "downloads", name)
    unique: dict[str, Layout] = {}
    for layout in layouts:
        unique.setdefault(layout.description, layout)
    return list(unique.values())


def _parquet_layouts(root: Path, name: str) -> list[Layout]:
    """``<root>/<name>/{train,test}.parquet`` then ``<root>/{train,test}.parquet``."""
    return [ParquetLayout(folder, name) for folder in (root / name, root)]


def _system_layouts(name: str) -> list[Layout]:
    """Copies this machine provides: the shared CIFAR-10 parquet and the Debian Fashion-MNIST package."""
    if name == "cifar10":
        bases = [Path.cwd() / "..", Path.cwd()]
        repo = _repo_root()
        if repo is not None:
            bases.append(repo / "..")
        return [ParquetLayout((base / SHARED_CIFAR10_DIR).resolve(), name) for base in bases]
    if name == "fashion_mnist":
        return [IdxLayout(SYSTEM_FASHION_MNIST_DIR)]
    return []


def _not_found_error(name: str, layouts: Sequence[Layout], registered: bool) -> UserError:
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


# ------------------------------------------------------------------------------ decoding through the cache


def _load_from_layout(name: str, spec: DatasetSpec | None, layout: Layout, cache_folder: Path) -> ImageDataset:
    """Decode ``layout`` into the cache unless a valid copy is there, then wrap the memory-mapped arrays."""
    folder = cache_folder / "datasets" / f"{name}-{fingerprint(name, layout.source_files())[:16]}"
    splits = read_cache(folder)
    if splits is None:
        log.info("decoding %s from %s into %s (once)", name, layout.description, folder)
        start = time.perf_counter()
        decoded = layout.decode(spec)
        if spec is not None:
            for split in ("train", "test"):
                images, labels = getattr(decoded, f"{split}_images"), getattr(decoded, f"{split}_labels")
                check_split(images, labels, spec, f"the {split} split of {layout.description}")
        write_cache(folder, decoded)
        log.info("decoded %s in %.1f s", name, time.perf_counter() - start)
        splits = read_cache(folder)
        if splits is None:
            raise UserError(f"the cache just written in {folder} cannot be read back; check the disk or ${CACHE_ENV}")
    if spec is None:
        resolved = measured_spec(name, splits)
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
