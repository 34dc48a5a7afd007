"""Hugging Face style parquet files: an encoded-image column, integer labels, class names in the metadata."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semanticfl.data.layouts.base import Layout, Splits, one_line
from semanticfl.data.layouts.checks import map_labels, resolve_class_names
from semanticfl.data.layouts.images import decode_images, infer_channels
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


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
        classes, label_map = resolve_class_names(train_names, spec, train_path)
        channels = spec.in_channels if spec else infer_channels(train_blobs + test_blobs, str(train_path))
        train_images = decode_images(train_blobs, channels, spec.image_size if spec else None, str(train_path))
        test_images = decode_images(test_blobs, channels, train_images.shape[-1], str(test_path))
        return Splits(
            train_images,
            map_labels(train_labels, label_map, train_path),
            test_images,
            map_labels(test_labels, label_map, test_path),
            classes,
        )


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
