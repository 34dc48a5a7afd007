"""The tiny-imagenet-200 release: wnids.txt, words.txt, train/<wnid>/images/ and the annotated val/ split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import DATA_ENV, Layout, Splits, one_line
from semanticfl.data.layouts.images import decode_images, image_files
from semanticfl.data.registry import DatasetSpec
from semanticfl.errors import UserError


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
            decode_images([path for path, _ in train], spec.in_channels, spec.image_size, str(self.folder / "train")),
            np.array([label for _, label in train], dtype=np.int64),
            decode_images([path for path, _ in test], spec.in_channels, spec.image_size, str(self.folder / "val")),
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
            for path in image_files(self.folder / "train" / wnid / "images")
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(
            f"cannot read {path}: {one_line(error)}; re-create it or point ${DATA_ENV} elsewhere"
        ) from None
