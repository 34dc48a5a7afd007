"""The layout interface (`Layout`, decoding into `Splits`) and what every format reader shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semanticfl.data.registry import DatasetSpec

DATA_ENV = "SEMANTICFL_DATA"


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


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(error).split()) or type(error).__name__
