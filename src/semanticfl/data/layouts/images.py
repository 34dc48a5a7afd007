"""Image files of a folder and decoding encoded images (files or bytes) into one uint8 N×C×H×W array."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semanticfl.data.layouts.base import DATA_ENV, one_line
from semanticfl.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def image_files(folder: Path) -> list[Path]:
    """The .png/.jpg/.jpeg files in a folder (any letter case), sorted by name; [] if the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def _open_image(item: bytes | Path, where: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(
            f"{where} is not a readable image ({one_line(error)}); re-create it or point ${DATA_ENV} elsewhere"
        ) from None


def infer_channels(items: Sequence[bytes | Path], where: str) -> int:
    """1 if every image is grayscale, else 3 (reads headers only)."""
    for index, item in enumerate(items):
        with _open_image(item, _item_name(item, index, where)) as image:
            if image.mode not in GRAYSCALE_MODES:
                return 3
    return 1


def decode_images(items: Sequence[bytes | Path], channels: int, size: int | None, where: str) -> np.ndarray:
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
