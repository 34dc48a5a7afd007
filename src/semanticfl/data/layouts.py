"""On-disk layouts of a dataset, the format readers behind them, image decoding and label checks.

A layout (`Layout`) knows whether its files are there, which files the decoded arrays depend on (for the
cache fingerprint) and how to decode them into `Splits`: the CIFAR python pickles, MNIST-style IDX files,
the tiny-imagenet-200 folder, Hugging Face style parquet files and image-folder trees.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError

DATA_ENV = "SEMANTICFL_DATA"

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

# ------------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Splits:
    """Decoded arrays of both splits plus the class names they use."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


class Layout(ABC):
    """One way a dataset can sit on disk: knows whether it is there, its files, and how to decode it."""

    description: str

    @abstractmethod
    def present(self) -> bool:
        """Whether the files this layout needs exist (cheap: no decoding)."""

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Every file whose content the decoded arrays depend on (for the cache fingerprint)."""

    @abstractmethod
    def decode(self, spec: DatasetSpec | None) -> Splits:
        """Read the data; ``spec`` is None for an unregistered dataset."""


class CifarPickleLayout(Layout):
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

    def decode(self, spec: DatasetSpec | None) -> Splits:
        train = [_read_cifar_batch(self.folder / name, self.label_key) for name in self.train_names]
        test = [_read_cifar_batch(self.folder / name, self.label_key) for name in self.test_names]
        return Splits(
            np.concatenate([images for images, _ in train]),
            np.concatenate([labels for _, labels in train]),
            np.concatenate([images for images, _ in test]),
            np.concatenate([labels for _, labels in test]),
            spec.classes,
        )


class IdxLayout(Layout):
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

    def decode(self, spec: DatasetSpec | None) -> Splits:
        train_images, train_labels, test_images, test_labels = (
            _read_idx(path, ndim) for path, ndim in zip(self.source_files(), (3, 1, 3, 1))
        )
        return Splits(
            train_images[:, None],
            train_labels.astype(np.int64),
            test_images[:, None],
            test_labels.astype(np.int64),
            spec.classes,
        )


class TinyImageNetLayout(Layout):
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

    def decode(self, spec: DatasetSpec | None) -> Splits:
        wnids = self._wnids()
        train, test = self._train_items(wnids), self._val_items(wnids)
        return Splits(
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


class ParquetLayout(Layout):
    """Hugging Face style ``train.parquet`` + ``test.parquet`` with an encoded-image column and labels."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.label_columns = ("fine_label", "label") if name == "cifar100" else ("label",)
        self.description = f"parquet files {folder / 'train.parquet'} and test.parquet"

    def present(self) -> bool:
        return all(path.is_file() for path in self.source_files())

    def source_files(self) -> list[Path]:
        return [self.folder / "train.parquet", self.folder / "test.parquet"]

    def decode(self, spec: DatasetSpec | None) -> Splits:
        train_path, test_path = self.source_files()
        train_blobs, train_labels, train_names = _read_parquet(train_path, self.label_columns)
        test_blobs, test_labels, test_names = _read_parquet(test_path, self.label_columns)
        if train_names and test_names and train_names != test_names:
            raise UserError(f"{train_path} and {test_path} name different classes; re-create them from one dataset")
        classes, label_map = _resolve_class_names(train_names, spec, train_path)
        channels = spec.in_channels if spec else _infer_channels(train_blobs + test_blobs, str(train_path))
        train_images = _decode_images(train_blobs, channels, spec.image_size if spec else None, str(train_path))
        test_images = _decode_images(test_blobs, channels, train_images.shape[-1], str(test_path))
        return Splits(
            train_images,
            _map_labels(train_labels, label_map, train_path),
            test_images,
            _map_labels(test_labels, label_map, test_path),
            classes,
        )


class ImageFolderLayout(Layout):
    """``<folder>/{train,test}/<class name>/*.{png,jpg,jpeg}``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"image folders {folder}/{{train,test}}/<class>/*.png|jpg"

    def present(self) -> bool:
        return (self.folder / "train").is_dir() and (self.folder / "test").is_dir()

    def source_files(self) -> list[Path]:
        return [path for split in ("train", "test") for path, _ in self._items(split)]

    def decode(self, spec: DatasetSpec | None) -> Splits:
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
        return Splits(
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


def official_layouts(root: Path, name: str) -> list[Layout]:
    """The official release formats of ``name`` as they would sit under ``root``."""
    if name == "cifar10":
        return [CifarPickleLayout(folder / "cifar-10-batches-py", name) for folder in (root, root / name)]
    if name == "cifar100":
        return [CifarPickleLayout(folder / "cifar-100-python", name) for folder in (root, root / name)]
    if name == "tinyimagenet":
        return [TinyImageNetLayout(folder / "tiny-imagenet-200") for folder in (root, root / name)]
    if name == "mnist":
        return [IdxLayout(folder) for folder in (root / name, root / "MNIST" / "raw", root)]
    if name == "fashion_mnist":
        folders = (root / name, root / "fashion-mnist", root / "FashionMNIST" / "raw", root)
        return [IdxLayout(folder) for folder in folders]
    return []


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
        raise UserError(f"{path} is not a readable CIFAR python batch: {one_line(error)}; {hint}") from None
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
        raise UserError(f"{path} is not a readable IDX file: {one_line(error)}; {hint}") from None
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
        raise UserError(f"{path} is not a readable parquet file: {one_line(error)}; {hint}") from None
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
            f"cannot read {path}: {one_line(error)}; re-create it or point ${DATA_ENV} elsewhere"
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
            f"{where} is not a readable image ({one_line(error)}); re-create it or point ${DATA_ENV} elsewhere"
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
                raise UserError(f"{name} is not a readable image ({one_line(error)}); re-create it") from None
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
    """Translate file labels to dataset labels; out-of-range labels are left for `check_split` to report."""
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


def check_split(images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, where: str) -> None:
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


def measured_spec(name: str, splits: Splits) -> DatasetSpec:
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


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(error).split()) or type(error).__name__
