"""Server-side splits of a training set: the stratified public holdout no client holds."""

from __future__ import annotations

import numpy as np

from semanticfl.errors import UserError
from semanticfl.seeding import Stream, derive_seed


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices drawn evenly across classes with a seeded RNG (sorted)."""
    labels = np.asarray(labels)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    if size >= len(labels):
        raise UserError(
            f"data.server_holdout={size} leaves no training data for the clients "
            f"(the training set has {len(labels)} samples)"
        )
    rng = np.random.default_rng(derive_seed(seed, Stream.HOLDOUT))
    classes = np.unique(labels)
    per_class = np.full(len(classes), size // len(classes))
    per_class[: size % len(classes)] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=min(k, int((labels == c).sum())), replace=False)
        for c, k in zip(classes, per_class)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
