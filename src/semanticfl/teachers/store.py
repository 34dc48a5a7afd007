"""The fingerprinted feature store: teacher features are extracted once, cached on disk, read memory-mapped.

An entry is ``<root>/<key>/`` holding one ``<name>.npy`` per array (first axis = sample) and a
``manifest.json`` with each file's shape, dtype, size and SHA-256. ``key`` is :func:`store_key` over
everything the features depend on, so changing any of it (a timestep, a prompt, the sample indices)
makes a new entry. A damaged or stale entry is deleted and rebuilt, never used.

A build fills ``<root>/<key>.partial/`` chunk by chunk and records finished chunks in ``progress.json``;
a killed build resumes at its first unfinished chunk, and the finished folder is renamed into place.
``<root>/<key>.lock`` (``flock``) keeps two processes from building or deleting the same entry at once.

*Prebuilt* folders (read-only, e.g. ``prebuilt/`` inside a shipped teacher) hold finished entries in the same
layout; an entry missing from ``<root>`` is copied from the first prebuilt folder whose copy passes the same
manifest and SHA-256 checks, instead of being computed. A damaged prebuilt copy is skipped, never deleted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from numpy.typing import DTypeLike

from semanticfl.data.cache import CACHE_ENV, cache_root
from semanticfl.errors import UserError
from semanticfl.files import atomic_write_text

log = logging.getLogger(__name__)

STORE_FORMAT = "semanticfl-features/1"
MANIFEST, PROGRESS = "manifest.json", "progress.json"
_KEY = re.compile(r"[0-9a-f]{64}")
_ARRAY_NAME = re.compile(r"[A-Za-z0-9_-]+")

Compute = Callable[[slice], Mapping[str, np.ndarray]]
Progress = Callable[[int, int], object]
"""Called with (samples done, samples in all) after each chunk."""

_verified: set[tuple] = set()
"""Entries whose SHA-256s this process has checked, keyed by their files' (inode, size, mtime)."""


class _Stale(Exception):
    """A cache entry that must not be used; the message says why."""


def store_key(parts: Mapping[str, object]) -> str:
    """SHA-256 hex over the canonical JSON of ``parts``.

    Values may be JSON types, dataclasses (e.g. ``ExtractionSettings``), paths, numpy scalars, or integer
    index arrays (hashed as int64 bytes, see :func:`index_digest`).
    """
    text = json.dumps(
        {"store": STORE_FORMAT, **parts},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
        default=_canonical,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def index_digest(indices: np.ndarray) -> str:
    """SHA-256 hex of sample indices as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def _canonical(value: object) -> object:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"store_key hashes integer index arrays only, got {value.dtype}")
        return {"int64_sha256": index_digest(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"store_key cannot hash a {type(value).__name__}")


def default_root() -> Path:
    """``$SEMANTICFL_CACHE/features``, else ``~/.cache/semanticfl/features``."""
    return cache_root() / "features"


@dataclass(frozen=True)
class CachedFeatures:
    """A verified entry: read-only memory maps, one per array, first axis = sample."""

    key: str
    path: Path
    arrays: dict[str, np.memmap]

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of array ``name``, read into memory."""
        return np.asarray(self.arrays[name][np.asarray(rows)])


class FeatureStore:
    """Feature cache entries under ``root`` (default :func:`default_root`), seeded from ``prebuilt`` folders."""

    def __init__(self, root: str | os.PathLike | None = None, prebuilt: tuple[Path, ...] = ()) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.prebuilt = tuple(Path(folder) for folder in prebuilt)

    def open(self, key: str) -> CachedFeatures | None:
        """The verified entry ``key``; ``None`` if absent, or if damaged (then it is deleted)."""
        _check_key(key)
        if not (self.root / key).is_dir():
            return None
        with self._locked(key):
            return self._open_locked(key)

    def build(
        self,
        key: str,
        arrays: Mapping[str, tuple[tuple[int, ...], DTypeLike]],
        num_samples: int,
        compute: Compute,
        chunk: int = 1024,
        progress: bool | Progress = False,
    ) -> CachedFeatures:
        """The entry ``key``, computed now unless it is cached (a partial build is resumed).

        ``arrays`` maps each name to (per-sample shape, dtype); ``compute(slice(start, stop))`` returns
        every array's rows start..stop. ``progress``: True for a progress bar, or a callback.
        """
        _check_key(key)
        plan = _plan(key, arrays, num_samples, chunk)
        with self._locked(key):
            cached = self._open_locked(key)
            if cached is not None and _layout(cached.arrays) == _layout_of_plan(plan):
                return cached
            if cached is not None:
                log.warning(
                    "feature cache entry %s holds other arrays than asked for; rebuilding it", cached.path
                )
                self._discard(cached.path)
            adopted = self._adopt_prebuilt(key, plan)
            if adopted is not None:
                return adopted
            partial = self.root / f"{key}.partial"
            done = _prepare(partial, plan)
            _fill(partial, plan, done, compute, progress)
            _write_manifest(partial, plan)
            os.rename(partial, self.root / key)
            return CachedFeatures(key, self.root / key, _map(self.root / key, plan["arrays"]))

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the feature cache {self.root} ({exc.strerror}); set ${CACHE_ENV} to a writable folder"
            ) from None
        with open(self.root / f"{key}.lock", "ab") as handle:  # closing the file releases the lock
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _open_locked(self, key: str) -> CachedFeatures | None:
        path = self.root / key
        if not path.is_dir():
            return None
        try:
            manifest = _read_manifest(path, key)
            arrays = _verified_arrays(path, manifest)
        except _Stale as exc:
            log.warning("feature cache entry %s %s; deleting it so it is rebuilt", path, exc)
            self._discard(path)
            return None
        return CachedFeatures(key, path, arrays)

    def _adopt_prebuilt(self, key: str, plan: dict) -> CachedFeatures | None:
        """A verified copy of a prebuilt entry ``key`` with the plan's arrays, placed under ``root``; else None."""
        for folder in self.prebuilt:
            source = folder / key
            if not source.is_dir():
                continue
            try:
                arrays = _verified_arrays(source, _read_manifest(source, key))
            except _Stale as exc:
                log.warning("prebuilt feature entry %s %s; computing it instead", source, exc)
                continue
            if _layout(arrays) != _layout_of_plan(plan):
                continue
            staging = self.root / f"{key}.prebuilt-{uuid.uuid4().hex[:12]}"
            shutil.copytree(source, staging)
            os.rename(staging, self.root / key)
            log.info("feature entry %s copied from %s", key[:12], folder)
            return self._open_locked(key)
        return None

    def _discard(self, path: Path) -> None:
        """Move the entry aside (atomic), then delete it."""
        trash = self.root / f".{path.name}.stale-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"a feature store key is 64 lowercase hex digits (see store_key), got {key!r}")


def _plan(
    key: str, arrays: Mapping[str, tuple[tuple[int, ...], DTypeLike]], num_samples: int, chunk: int
) -> dict:
    """What a build writes, as JSON-able data (a resumed build must have the same plan)."""
    if num_samples < 0 or chunk < 1 or not arrays:
        raise ValueError(
            f"a build needs arrays, num_samples >= 0 and chunk >= 1 (got {num_samples}, {chunk})"
        )
    bad = [name for name in arrays if not _ARRAY_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"array names must be letters, digits, '_' or '-', got {bad}")
    specs = {
        name: {"shape": [int(n) for n in shape], "dtype": np.dtype(dtype).str}
        for name, (shape, dtype) in arrays.items()
    }
    return {
        "format": STORE_FORMAT,
        "key": key,
        "num_samples": int(num_samples),
        "chunk": chunk,
        "arrays": specs,
    }


def _layout(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    return {name: (array.shape, array.dtype.str) for name, array in arrays.items()}


def _layout_of_plan(plan: dict) -> dict[str, tuple]:
    n = plan["num_samples"]
    return {name: ((n, *spec["shape"]), spec["dtype"]) for name, spec in plan["arrays"].items()}


def _prepare(partial: Path, plan: dict) -> int:
    """Chunks already done in a resumable ``partial`` folder; else a fresh one, and 0."""
    done = _resumable(partial, plan)
    if done is not None:
        log.info("resuming feature build %s after %d chunks", partial, done)
        return done
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for name, spec in plan["arrays"].items():
        shape = (plan["num_samples"], *spec["shape"])
        open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.dtype(spec["dtype"]), shape=shape).flush()
    atomic_write_text(partial / PROGRESS, json.dumps({**plan, "chunks_done": 0}))
    return 0


def _resumable(partial: Path, plan: dict) -> int | None:
    """``chunks_done`` of an earlier build with the same plan whose files are intact, else None."""
    try:
        saved = json.loads((partial / PROGRESS).read_text())
        done = saved.pop("chunks_done")
        if saved != plan or not isinstance(done, int):
            return None
        for name, spec in plan["arrays"].items():
            array = np.load(partial / f"{name}.npy", mmap_mode="r")
            if array.shape != (plan["num_samples"], *spec["shape"]) or array.dtype.str != spec["dtype"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return done


def _fill(partial: Path, plan: dict, done: int, compute: Compute, progress: bool | Progress) -> None:
    """Compute chunks ``done``…, flushing each before recording it in ``progress.json``."""
    memmaps = {name: np.load(partial / f"{name}.npy", mmap_mode="r+") for name in plan["arrays"]}
    total, chunk = plan["num_samples"], plan["chunk"]
    with _reporter(progress, f"features {plan['key'][:12]}") as report:
        report(min(done * chunk, total), total)
        for index in range(done, math.ceil(total / chunk)):
            rows = slice(index * chunk, min(total, (index + 1) * chunk))
            _write_rows(memmaps, compute(rows), rows)
            atomic_write_text(partial / PROGRESS, json.dumps({**plan, "chunks_done": index + 1}))
            report(rows.stop, total)


def _write_rows(memmaps: dict[str, np.memmap], values: Mapping[str, np.ndarray], rows: slice) -> None:
    if set(values) != set(memmaps):
        raise ValueError(f"compute returned arrays {sorted(values)}, expected {sorted(memmaps)}")
    for name, target in memmaps.items():
        value = np.asarray(values[name])
        expected = (rows.stop - rows.start, *target.shape[1:])
        if value.shape != expected:
            raise ValueError(
                f"compute returned {name} of shape {value.shape} for rows {rows}, expected {expected}"
            )
        target[rows] = value
    for target in memmaps.values():
        target.flush()


@contextmanager
def _reporter(progress: bool | Progress, label: str) -> Iterator[Progress]:
    if progress is True:
        from rich.progress import Progress as Bar

        with Bar() as bar:
            task = bar.add_task(label)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        yield progress or (lambda done, total: None)


def _write_manifest(partial: Path, plan: dict) -> None:
    files = {}
    for name, spec in plan["arrays"].items():
        file = partial / f"{name}.npy"
        files[name] = {**spec, "bytes": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {
        "format": STORE_FORMAT,
        "key": plan["key"],
        "num_samples": plan["num_samples"],
        "arrays": files,
    }
    atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1))
    (partial / PROGRESS).unlink()


def _read_manifest(path: Path, key: str) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise _Stale("has no manifest") from None
    except (OSError, ValueError):
        raise _Stale("has an unreadable manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT or manifest.get("key") != key:
        raise _Stale("has a manifest of another format or key")
    return manifest


def _verified_arrays(path: Path, manifest: dict) -> dict[str, np.memmap]:
    """Every array, checked against the manifest (SHA-256s once per process while the files are unchanged)."""
    try:
        specs, num_samples = manifest["arrays"], manifest["num_samples"]
        arrays = {name: _checked_array(path, name, spec, num_samples) for name, spec in specs.items()}
        stamp = _stamp(path, [MANIFEST, *(f"{name}.npy" for name in arrays)])
        if stamp not in _verified:
            for name, spec in specs.items():
                if _sha256(path / f"{name}.npy") != spec["sha256"]:
                    raise _Stale(f"has {name}.npy failing its SHA-256 check")
            _verified.add(stamp)
    except (KeyError, TypeError, AttributeError):
        raise _Stale("has a malformed manifest") from None
    except OSError as exc:
        raise _Stale(f"is unreadable ({exc.strerror})") from None
    return arrays


def _stamp(path: Path, names: list[str]) -> tuple:
    """Identifies the entry's files as they are now: a changed file changes its stamp."""
    stats = [(name, (path / name).stat()) for name in names]
    return (str(path), *((name, s.st_ino, s.st_size, s.st_mtime_ns) for name, s in stats))


def _checked_array(path: Path, name: str, spec: dict, num_samples: int) -> np.memmap:
    file = path / f"{name}.npy"
    if not file.is_file():
        raise _Stale(f"is missing {file.name}")
    if file.stat().st_size != spec["bytes"]:
        raise _Stale(f"has {file.name} of {file.stat().st_size} bytes, not {spec['bytes']}")
    try:
        array = np.load(file, mmap_mode="r")
    except ValueError:
        raise _Stale(f"has an unreadable {file.name}") from None
    if array.shape != (num_samples, *spec["shape"]) or array.dtype.str != spec["dtype"]:
        raise _Stale(f"has {file.name} of shape {array.shape} and dtype {array.dtype}, not as recorded")
    return array


def _map(path: Path, specs: Mapping[str, dict]) -> dict[str, np.memmap]:
    return {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in specs}


def _sha256(file: Path) -> str:
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
