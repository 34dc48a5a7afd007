"""Conversions between the algorithms' plain arrays and Flower's records, and their sizes."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord

from semanticfl.algorithms.base import Arrays
from semanticfl.verified import contiguous

# Keys of the RecordDict exchanged in every message.
MODEL, PAYLOAD, EXTRA, METRICS, CONFIG = "model", "payload", "extra", "metrics", "config"
STATE, STATE_ROUND = "algorithm-state", "algorithm-state-round"


def to_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(contiguous(v))) for k, v in arrays.items()))


def from_record(record: ArrayRecord) -> Arrays:
    return {k: v.numpy() for k, v in record.items()}


def nbytes(arrays: Arrays) -> int:
    """Payload bytes of the arrays (what the wire must carry at least)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def all_finite(arrays: Arrays) -> bool:
    """False if any floating array holds NaN or Inf (such updates are not aggregated)."""
    return all(
        np.isfinite(v).all() for v in arrays.values() if np.issubdtype(np.asarray(v).dtype, np.floating)
    )
