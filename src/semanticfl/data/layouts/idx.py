"""The MNIST / Fashion-MNIST release: IDX files of unsigned bytes, raw or gzipped."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import Layout, Splits, one_line
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


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
