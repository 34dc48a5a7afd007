"""The feature store computes once, resumes interrupted builds, and rebuilds damaged entries."""

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from semanticfl.teachers import store as store_module
from semanticfl.teachers.base import ExtractionSettings
from semanticfl.teachers.store import FeatureStore, store_key

N, CHUNK = 22, 4  # six chunks, the last one short
SPECS = {"fused": ((3,), "float16"), "up1": ((2, 2), np.float32)}
KEY = store_key({"teacher": "offline/abc", "dataset": "toy", "indices": np.arange(N)})


def _values(rows: slice) -> dict[str, np.ndarray]:
    index = np.arange(rows.start, rows.stop, dtype=np.float32)
    return {
        "fused": np.stack([index, -index, index / 7], axis=1),
        "up1": np.broadcast_to(index[:, None, None], (len(index), 2, 2)) + np.float32(0.5),
    }


class Counter:
    """``_values`` that records its calls and can fail on a given call."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[slice] = []
        self.fail_on = fail_on

    def __call__(self, rows: slice) -> dict[str, np.ndarray]:
        self.calls.append(rows)
        if len(self.calls) == self.fail_on:
            raise RuntimeError("interrupted")
        return _values(rows)


def _build(store, compute, key=KEY, **kwargs):
    return store.build(key, SPECS, N, compute, chunk=CHUNK, **kwargs)


def _assert_complete(cached):
    expected = _values(slice(0, N))
    for name, value in expected.items():
        assert isinstance(cached.arrays[name], np.memmap)
        np.testing.assert_array_equal(cached.arrays[name], value.astype(SPECS[name][1]))
    assert cached.arrays["fused"].dtype == np.float16


def test_build_then_open_is_a_cache_hit(tmp_path):
    store, compute = FeatureStore(tmp_path), Counter()
    built = _build(store, compute)
    _assert_complete(built)
    assert len(compute.calls) == 6 and built.path == tmp_path / KEY
    opened = store.open(KEY)
    _assert_complete(opened)
    _build(store, compute)
    assert len(compute.calls) == 6
    np.testing.assert_array_equal(
        opened.take("up1", np.array([5, 1, 5])), _values(slice(0, N))["up1"][[5, 1, 5]]
    )
    assert sorted(p.name for p in (tmp_path / KEY).iterdir()) == ["fused.npy", "manifest.json", "up1.npy"]


def test_a_build_asking_for_other_arrays_rebuilds(tmp_path):
    store = FeatureStore(tmp_path)
    _build(store, Counter())
    hit = Counter()
    store.build(KEY, SPECS, N, hit, chunk=8)  # the chunk size is not part of the content
    assert not hit.calls
    rebuilt = Counter()
    cached = store.build(KEY, {**SPECS, "fused": ((3,), np.float32)}, N, rebuilt, chunk=CHUNK)
    assert len(rebuilt.calls) == 6 and cached.arrays["fused"].dtype == np.float32


def test_a_prebuilt_entry_is_copied_instead_of_computed(tmp_path):
    shipped = tmp_path / "teacher" / "prebuilt"
    _build(FeatureStore(shipped), Counter())
    before = {p.name: p.read_bytes() for p in (shipped / KEY).iterdir()}
    store, compute = FeatureStore(tmp_path / "cache", prebuilt=(tmp_path / "absent", shipped)), Counter()
    cached = _build(store, compute)
    assert compute.calls == [] and cached.path == tmp_path / "cache" / KEY
    _assert_complete(cached)
    assert {p.name: p.read_bytes() for p in (shipped / KEY).iterdir()} == before  # the source is left alone


def test_a_damaged_or_different_prebuilt_entry_is_computed_and_left_in_place(tmp_path, caplog):
    shipped = tmp_path / "prebuilt"
    FeatureStore(shipped).build(KEY, {**SPECS, "fused": ((3,), np.float32)}, N, Counter(), chunk=CHUNK)
    compute = Counter()
    _assert_complete(_build(FeatureStore(tmp_path / "cache", prebuilt=(shipped,)), compute))
    assert len(compute.calls) == 6  # other arrays than asked for: computed
    damaged = tmp_path / "damaged"
    _build(FeatureStore(damaged), Counter())
    (damaged / KEY / "up1.npy").write_bytes((damaged / KEY / "up1.npy").read_bytes()[:-3] + b"xyz")
    compute = Counter()
    with caplog.at_level(logging.WARNING):
        _assert_complete(_build(FeatureStore(tmp_path / "cache2", prebuilt=(damaged,)), compute))
    assert len(compute.calls) == 6 and "failing its SHA-256 check; computing it instead" in caplog.text
    assert (damaged / KEY / "up1.npy").exists()  # never deleted: it is not the store's to delete


def test_open_of_an_absent_entry_is_none(tmp_path):
    assert FeatureStore(tmp_path).open(KEY) is None


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTICFL_CACHE", str(tmp_path))
    assert FeatureStore().root == tmp_path / "features"


def test_keys_change_with_every_part():
    base = {
        "teacher": "sd15/1234",
        "settings": ExtractionSettings(timestep=300),
        "prompt": "a photo of a {}",
        "reducer": "ffee",
        "dataset": ["cifar10", "fp1"],
        "transform": "resize32",
        "indices": np.arange(10),
    }
    variants = [
        {"settings": ExtractionSettings(timestep=150)},
        {"prompt": "a picture of a {}"},
        {"reducer": "ffef"},
        {"dataset": ["cifar10", "fp2"]},
        {"transform": "resize64"},
        {"indices": np.arange(1, 11)},
        {"teacher": "sd15/1235"},
    ]
    keys = {store_key({**base, **variant}) for variant in variants}
    assert len(keys) == len(variants) and store_key(base) not in keys
    same = {**dict(reversed(base.items())), "indices": np.arange(10, dtype=np.int32)}
    assert store_key(same) == store_key(base)  # order-free; indices hashed as int64
    with pytest.raises(TypeError):
        store_key({"weights": np.ones(3)})


def test_interrupted_build_resumes_at_the_first_unfinished_chunk(tmp_path):
    store = FeatureStore(tmp_path / "a")
    with pytest.raises(RuntimeError, match="interrupted"):
        _build(store, Counter(fail_on=3))
    assert store.open(KEY) is None and (tmp_path / "a" / f"{KEY}.partial").is_dir()
    resumed = Counter()
    cached = _build(store, resumed)
    assert [rows.start for rows in resumed.calls] == [8, 12, 16, 20]
    _assert_complete(cached)
    fresh = _build(FeatureStore(tmp_path / "b"), Counter())
    for name in SPECS:
        assert (fresh.path / f"{name}.npy").read_bytes() == (cached.path / f"{name}.npy").read_bytes()
    assert not (tmp_path / "a" / f"{KEY}.partial").exists()


def test_a_killed_build_resumes(tmp_path):
    script = f"""
import os, sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_feature_store import KEY, SPECS, N, CHUNK, _values
from semanticfl.teachers.store import FeatureStore
calls = []
def compute(rows):
    calls.append(rows)
    if len(calls) == 3:
        os._exit(9)
    return _values(rows)
FeatureStore({str(tmp_path)!r}).build(KEY, SPECS, N, compute, chunk=CHUNK)
"""
    assert subprocess.run([sys.executable, "-c", script], check=False, timeout=120).returncode == 9
    resumed = Counter()
    _assert_complete(_build(FeatureStore(tmp_path), resumed))
    assert [rows.start for rows in resumed.calls] == [8, 12, 16, 20]


def test_a_changed_plan_restarts_the_partial_build(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(RuntimeError):
        _build(store, Counter(fail_on=3))
    restarted = Counter()
    store.build(KEY, SPECS, N, restarted, chunk=8)
    assert [rows.start for rows in restarted.calls] == [0, 8, 16]


def test_flipped_byte_is_detected_deleted_and_rebuilt(tmp_path, caplog):
    store = FeatureStore(tmp_path)
    _build(store, Counter())
    file = tmp_path / KEY / "up1.npy"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="semanticfl.teachers.store"):
        assert store.open(KEY) is None
    assert "up1.npy failing its SHA-256 check" in caplog.text
    assert not (tmp_path / KEY).exists()
    rebuilt = Counter()
    _assert_complete(_build(store, rebuilt))
    assert len(rebuilt.calls) == 6


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda entry: (entry / "fused.npy").write_bytes((entry / "fused.npy").read_bytes()[:-2]), "bytes"),
        (lambda entry: (entry / "fused.npy").unlink(), "missing fused.npy"),
        (lambda entry: (entry / "manifest.json").unlink(), "no manifest"),
        (lambda entry: (entry / "manifest.json").write_text("{"), "unreadable manifest"),
    ],
)
def test_damaged_entries_are_rebuilt(tmp_path, caplog, damage, reason):
    store = FeatureStore(tmp_path)
    _build(store, Counter())
    damage(tmp_path / KEY)
    rebuilt = Counter()
    with caplog.at_level(logging.WARNING, logger="semanticfl.teachers.store"):
        _assert_complete(_build(store, rebuilt))
    assert reason in caplog.text and len(rebuilt.calls) == 6


def test_checksums_are_verified_once_per_process(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    _build(store, Counter())
    hashed = []
    real = store_module._sha256
    monkeypatch.setattr(store_module, "_sha256", lambda file: hashed.append(file.name) or real(file))
    store.open(KEY)
    store.open(KEY)
    assert sorted(hashed) == ["fused.npy", "up1.npy"]


def test_concurrent_builds_compute_once(tmp_path):
    compute, lock = Counter(), threading.Lock()

    def slow(rows):
        time.sleep(0.01)
        with lock:
            return compute(rows)

    threads = [threading.Thread(target=_build, args=(FeatureStore(tmp_path), slow)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(compute.calls) == 6
    _assert_complete(FeatureStore(tmp_path).open(KEY))


def test_progress_reports_and_bad_chunks_are_rejected(tmp_path):
    seen = []
    _build(FeatureStore(tmp_path / "a"), Counter(), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, N), (4, N), (8, N), (12, N), (16, N), (20, N), (22, N)]
    _assert_complete(_build(FeatureStore(tmp_path / "b"), Counter(), progress=True))
    with pytest.raises(ValueError, match="shape"):
        _build(FeatureStore(tmp_path / "c"), lambda rows: {**_values(rows), "fused": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="expected"):
        _build(FeatureStore(tmp_path / "d"), lambda rows: {"fused": _values(rows)["fused"]})
