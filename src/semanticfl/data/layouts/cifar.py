"""The CIFAR-10 / CIFAR-100 "python version" release: pickled batches, read by a numpy-only unpickler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import Layout, Splits, one_line
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


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
