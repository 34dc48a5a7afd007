"""Class names found in the data matched to a dataset's, label remapping and range checks, the check of
decoded splits against their spec, and a measured spec for an unregistered dataset."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import DATA_ENV, Splits
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


def _normalised(name: str) -> str:
    """Lower-case letters and digits only, so "T-shirt/top", "T-shirt_top" and "t shirt top" compare equal."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def match_class_names(found: Sequence[str], classes: Sequence[str], where: Path) -> dict[str, int]:
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


def resolve_class_names(
    names_in_file: tuple[str, ...], spec: DatasetSpec | None, path: Path
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The dataset's class names and, when the file orders its classes differently, a label remapping."""
    if spec is not None and spec.classes:
        if not names_in_file:
            return spec.classes, None
        mapping = match_class_names(names_in_file, spec.classes, path)
        return spec.classes, np.array([mapping[name] for name in names_in_file], dtype=np.int64)
    if not names_in_file:
        raise UserError(
            f"{path} records no class names in its metadata; use an image-folder tree named by class instead"
        )
    return names_in_file, None


def map_labels(labels: np.ndarray, label_map: np.ndarray | None, path: Path) -> np.ndarray:
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
