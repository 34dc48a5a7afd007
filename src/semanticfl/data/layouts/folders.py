"""Image-folder trees: one folder of .png/.jpg images per split and class, named by the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import Layout, Splits
from semanticfl.data.layouts.checks import match_class_names
from semanticfl.data.layouts.images import decode_images, image_files, infer_channels
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


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
        label_of = match_class_names(sorted(set(train_names) | set(self._class_folders("test"))), classes, self.folder)
        train, test = self._items("train", label_of), self._items("test", label_of)
        for split, items in (("train", train), ("test", test)):
            if not items:
                raise UserError(f"{self.folder / split} holds no .png/.jpg images; add some or remove the folder")
        channels = spec.in_channels if spec else infer_channels([path for path, _ in train + test], str(self.folder))
        size = spec.image_size if spec else None
        train_images = decode_images([path for path, _ in train], channels, size, str(self.folder / "train"))
        size = train_images.shape[-1]
        test_images = decode_images([path for path, _ in test], channels, size, str(self.folder / "test"))
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
            for path in image_files(self.folder / split / folder)
        ]
