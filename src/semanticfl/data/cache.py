"""The decode-once cache: a dataset's decoded arrays as ``.npy`` files under a fingerprinted folder.

``<cache>/datasets/<name>-<fingerprint>/`` holds one ``.npy`` file per array and a ``meta.json`` recording
their shapes, dtypes and the labels' SHA-256; reads return read-only memory maps, and a folder that
disagrees with its ``meta.json`` is treated as absent (and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semanticfl.data.layouts.base import Splits, one_line
from semanticfl.errors import UserError
from semanticfl.files import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "SEMANTICFL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/semanticfl")
CACHE_FORMAT_VERSION = 1
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of datasets, partitions and teacher features: argument, else $SEMANTICFL_CACHE,
    else ~/.cache/semanticfl."""
    chosen = cache_dir if cache_dir not in (None, "") else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser().resolve()


def fingerprint(name: str, files: Sequence[Path]) -> str:
    """sha256 over the dataset name, cache format and every source file's absolute path, size and mtime."""
    digest = hashlib.sha256(f"semanticfl-cache-v{CACHE_FORMAT_VERSION}\0{name}\n".encode())
    for path in sorted(str(Path(file).resolve()) for file in files):
        try:
            status = os.stat(path)
        except OSError as error:
            raise UserError(f"cannot read {path}: {one_line(error)}; check the data folder") from None
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_cache(folder: Path) -> Splits | None:
    """The cached arrays as read-only memory maps, or None if any file is missing or disagrees with meta.json."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta["version"] != CACHE_FORMAT_VERSION:
            return None
        arrays = {}
        for name in ARRAY_NAMES:
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            recorded = meta["arrays"][name]
            if list(array.shape) != recorded["shape"] or str(array.dtype) != recorded["dtype"]:
                raise ValueError(f"{name}.npy does not match meta.json")
            if name.endswith("labels") and _sha256(array) != recorded["sha256"]:
                raise ValueError(f"{name}.npy content does not match meta.json")
            arrays[name] = array
        return Splits(**arrays, classes=tuple(meta["classes"]))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
        log.warning("rebuilding the dataset cache in %s: %s", folder, one_line(error))
        return None


def write_cache(folder: Path, splits: Splits) -> None:
    """Write every array, then meta.json, each atomically; meta.json goes first so a half-rewrite is never valid."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)
        meta = {"version": CACHE_FORMAT_VERSION, "classes": list(splits.classes), "arrays": {}}
        for name in ARRAY_NAMES:
            array = np.ascontiguousarray(getattr(splits, name))
            atomic_write(folder / f"{name}.npy", lambda handle, array=array: np.save(handle, array))
            meta["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype), "count": len(array)}
            if name.endswith("labels"):
                meta["arrays"][name]["sha256"] = _sha256(array)
        text = json.dumps(meta, indent=1).encode()
        atomic_write(folder / "meta.json", lambda handle: handle.write(text))
    except OSError as error:
        raise UserError(
            f"cannot write the dataset cache in {folder}: {one_line(error)}; set ${CACHE_ENV} to a writable folder"
        ) from None



def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
