"""Tests for semanticfl.data.datasets: registry, every reader, validation, the decode-once cache, downloads.

Synthetic datasets are written into tmp_path in the official formats; the real CIFAR-10 parquet and the
Debian Fashion-MNIST files are used when this machine has them. Nothing touches the network.
"""

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from semanticfl.data import datasets, downloads
from semanticfl.data.cache import fingerprint
from semanticfl.data.datasets import (
    DATASETS,
    DatasetSpec,
    ImageDataset,
    dataset_names,
    get_spec,
    images_to_tensor,
    load_image_dataset,
)
from semanticfl.data.layouts.cifar import CifarPickleLayout
from semanticfl.data.layouts.idx import IdxLayout
from semanticfl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_environment_roots(monkeypatch):
    """Tests choose their folders explicitly; the developer's environment must not leak in."""
    monkeypatch.delenv("SEMANTICFL_DATA", raising=False)
    monkeypatch.delenv("SEMANTICFL_CACHE", raising=False)


def _user_error(call, *args, **kwargs) -> str:
    """The message of the UserError that ``call`` raises, checked to be one line."""
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def _random_images(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def _png(image_chw: np.ndarray) -> bytes:
    """Lossless PNG bytes of a C×H×W uint8 image (grayscale for one channel)."""
    pixels = image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_parquet(path: Path, images, labels, image_column="img", label_column="label", metadata=None) -> None:
    blobs = [image if isinstance(image, bytes) else _png(image) for image in images]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            image_column: pa.array([{"bytes": blob, "path": f"{i}.png"} for i, blob in enumerate(blobs)], image_type),
            label_column: pa.array(labels, pa.int64()),
        }
    )
    if metadata is not None:
        table = table.replace_schema_metadata({"huggingface": json.dumps(metadata)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes; gzipped when the name ends in .gz."""
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _write_mnist_style(folder: Path, gz: bool, seed: int = 0, train_labels=None):
    """Four IDX files in ``folder``; returns (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        np.array(train_labels if train_labels is not None else rng.integers(0, 10, 12), dtype=np.uint8),
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 5).astype(np.uint8),
    )
    for stem, array in zip(IdxLayout.STEMS, arrays):
        _write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def _write_cifar_pickles(folder: Path, name: str, seed: int = 0):
    """A small CIFAR python release of ``name``; returns (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    layout = CifarPickleLayout(folder, name)
    classes = len(DATASETS[name].classes)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for file in layout.train_names + layout.test_names:
        images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, 3).tolist()
        with (folder / file).open("wb") as handle:
            pickle.dump({b"data": images.reshape(3, -1), layout.label_key: labels, b"batch_label": b"x"}, handle)
        batches[file] = (images, labels)
    train = [batches[file] for file in layout.train_names]
    test = [batches[file] for file in layout.test_names]
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        np.concatenate([images for images, _ in test]),
        np.concatenate([labels for _, labels in test]),
    )


def _cache_folders(cache: Path, name: str) -> list[Path]:
    return sorted((cache / "datasets").glob(f"{name}-*"))


# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_class_counts():
    assert dataset_names() == ["cifar10", "cifar100", "tinyimagenet", "fashion_mnist", "mnist"]
    counts = {name: len(get_spec(name).classes) for name in ("cifar10", "cifar100", "fashion_mnist", "mnist")}
    assert counts == {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "mnist": 10}
    assert get_spec("tinyimagenet").classes == () and get_spec("tinyimagenet").num_classes == 200
    cifar100 = get_spec("cifar100").classes
    assert cifar100[:3] == ("apple", "aquarium fish", "baby") and cifar100[-1] == "worm"
    assert len(set(cifar100)) == 100 and not any("_" in name for name in cifar100)
    assert get_spec("fashion_mnist").classes[0] == "T-shirt/top"
    assert get_spec("cifar10").augment == ("crop", "flip") and get_spec("mnist").augment == ("crop",)
    for spec in DATASETS.values():
        assert len(spec.mean) == len(spec.std) == spec.in_channels


def test_unknown_name_lists_the_known_names(tmp_path):
    for call in (get_spec, load_image_dataset):
        message = _user_error(call, "cifar11")
        assert "cifar11" in message and all(name in message for name in dataset_names())
    # With a data root an unregistered name may be the user's own image folder; if it is not there either:
    message = _user_error(load_image_dataset, "cifar11", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert str(tmp_path / "cifar11") in message and all(name in message for name in dataset_names())


# --------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cifar10(tmp_path_factory):
    """CIFAR-10 found through the system lookup (cwd = repository), decoded once into a fresh cache."""
    if not (SHARED_CIFAR10 / "train.parquet").is_file():
        pytest.skip(f"no shared CIFAR-10 parquet at {SHARED_CIFAR10}")
    cache = tmp_path_factory.mktemp("cifar10-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SEMANTICFL_DATA", raising=False)
        patch.chdir(REPO)
        start = time.perf_counter()
        first = load_image_dataset("cifar10", cache_dir=str(cache))
        decode_s = time.perf_counter() - start
        files = sorted(_cache_folders(cache, "cifar10")[0].iterdir())
        stamps = {file: file.stat().st_mtime_ns for file in files}
        start = time.perf_counter()
        second = load_image_dataset("cifar10", cache_dir=str(cache))
        reload_s = time.perf_counter() - start
    print(f"\nCIFAR-10: decode {decode_s:.1f} s, load from cache {reload_s * 1000:.1f} ms")
    return {"first": first, "second": second, "stamps": stamps, "decode_s": decode_s, "reload_s": reload_s}


def test_real_cifar10_shapes_and_class_balance(real_cifar10):
    data = real_cifar10["first"]
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes == get_spec("cifar10").classes and data.num_classes == 10
    assert "shared/data/cifar10" in data.source
    assert 100 < data.train_images[:1000].mean() < 160  # real photographs, not blank decodes
    assert real_cifar10["decode_s"] < 60


def test_real_cifar10_second_load_is_memory_mapped_from_the_untouched_cache(real_cifar10):
    second = real_cifar10["second"]
    assert isinstance(second.train_images, np.memmap) and not second.train_images.flags.writeable
    assert real_cifar10["reload_s"] < 1.0
    assert all(file.stat().st_mtime_ns == stamp for file, stamp in real_cifar10["stamps"].items())
    assert np.array_equal(second.test_labels, real_cifar10["first"].test_labels)


def test_images_to_tensor_copies_selected_rows(real_cifar10):
    images = real_cifar10["second"].train_images
    indices = np.array([49999, 0, 1234])
    tensor = images_to_tensor(images, indices)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 3, 32, 32) and tensor.is_contiguous()
    assert np.array_equal(tensor.numpy(), images[indices])
    tensor.zero_()  # writable, and a copy: the memory map is unchanged
    assert images[0].any()
    small = np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)
    assert torch.equal(images_to_tensor(small), torch.from_numpy(small))


def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    if not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian package dataset-fashion-mnist is not installed ({SYSTEM_FASHION})")
    data = load_image_dataset("fashion_mnist", cache_dir=str(tmp_path))
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert str(SYSTEM_FASHION) in data.source


# ---------------------------------------------------------------------------------------- format readers


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_pickles_round_trip(tmp_path, name):
    folder = tmp_path / "data" / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    train_images, train_labels, test_images, test_labels = _write_cifar_pickles(folder, name)
    data = load_image_dataset(name, root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(data.train_images, train_images) and np.array_equal(data.train_labels, train_labels)
    assert np.array_equal(data.test_images, test_images) and np.array_equal(data.test_labels, test_labels)
    assert str(folder) in data.source


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _write_cifar_pickles(folder, "cifar100")
    (folder / "train").write_bytes(pickle.dumps(os.system))
    message = _user_error(load_image_dataset, "cifar100", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert str(folder / "train") in message and "refusing" in message


@pytest.mark.parametrize(("gz", "subfolder"), [(True, "fashion_mnist"), (False, "FashionMNIST/raw"), (True, ".")])
def test_idx_files_round_trip(tmp_path, gz, subfolder):
    arrays = _write_mnist_style(tmp_path / "data" / subfolder, gz=gz)
    data = load_image_dataset("fashion_mnist", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(data.train_images[:, 0], arrays[0]) and np.array_equal(data.train_labels, arrays[1])
    assert np.array_equal(data.test_images[:, 0], arrays[2]) and np.array_equal(data.test_labels, arrays[3])
    assert data.train_labels.dtype == np.int64 and data.in_channels == 1


def test_mnist_idx_in_torchvision_layout(tmp_path):
    arrays = _write_mnist_style(tmp_path / "MNIST" / "raw", gz=False)
    data = load_image_dataset("mnist", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(data.train_images[:, 0], arrays[0])
    assert data.classes[3] == "digit 3"


def test_parquet_with_png_bytes_round_trip(tmp_path):
    train, test = _random_images(20, 3, 32, seed=1), _random_images(6, 3, 32, seed=2)
    train_labels, test_labels = list(range(10)) * 2, [9, 8, 7, 0, 1, 2]
    _write_parquet(tmp_path / "cifar10" / "train.parquet", train, train_labels)
    _write_parquet(tmp_path / "cifar10" / "test.parquet", test, test_labels)
    data = load_image_dataset("cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(data.train_images, train) and data.train_labels.tolist() == train_labels
    assert np.array_equal(data.test_images, test) and data.test_labels.tolist() == test_labels


def test_parquet_grayscale_image_column_and_huggingface_class_order(tmp_path):
    # The file's own ClassLabel order is "9".."0": its label 0 is the digit nine.
    names = {"info": {"features": {"label": {"_type": "ClassLabel", "names": [str(9 - d) for d in range(10)]}}}}
    train, test = _random_images(10, 1, 28, seed=3), _random_images(3, 1, 28, seed=4)
    _write_parquet(tmp_path / "train.parquet", train, list(range(10)), image_column="image", metadata=names)
    _write_parquet(tmp_path / "test.parquet", test, [0, 1, 2], image_column="image", metadata=names)
    data = load_image_dataset("mnist", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert data.train_images.shape == (10, 1, 28, 28) and np.array_equal(data.train_images, train)
    assert data.train_labels.tolist() == [9 - d for d in range(10)] and data.test_labels.tolist() == [9, 8, 7]


def test_image_folder_tree_maps_folder_names_to_registry_classes(tmp_path):
    images = _random_images(4, 1, 28, seed=5)
    layout = {("train", "T-shirt_top"): images[0], ("train", "ankle boot"): images[1], ("train", "3"): images[2]}
    layout[("test", "Sandal")] = images[3]
    for (split, folder), image in layout.items():
        (tmp_path / "fashion_mnist" / split / folder).mkdir(parents=True)
        (tmp_path / "fashion_mnist" / split / folder / "a.png").write_bytes(_png(image))
    data = load_image_dataset("fashion_mnist", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    # Folders are read in sorted order: "3", "T-shirt_top", "ankle boot".
    assert data.train_labels.tolist() == [3, 0, 9] and data.test_labels.tolist() == [5]
    assert np.array_equal(data.train_images, images[[2, 0, 1]]) and np.array_equal(data.test_images, images[3:])


def test_image_folder_with_unknown_class_name_is_rejected(tmp_path):
    for split in ("train", "test"):
        (tmp_path / "cifar10" / split / "spaceship").mkdir(parents=True)
        (tmp_path / "cifar10" / split / "spaceship" / "a.png").write_bytes(_png(_random_images(1, 3, 32, 0)[0]))
    message = _user_error(load_image_dataset, "cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert "spaceship" in message and "airplane" in message


def test_unregistered_image_folder_gets_a_measured_spec(tmp_path):
    circle, square = np.full((1, 6, 6), 0, np.uint8), np.full((1, 6, 6), 255, np.uint8)
    for split in ("train", "test"):
        for name, image in (("square", square), ("circle", circle)):
            (tmp_path / "shapes" / split / name).mkdir(parents=True)
            (tmp_path / "shapes" / split / name / "0.png").write_bytes(_png(image))
    data = load_image_dataset("shapes", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert data.classes == ("circle", "square") and data.train_labels.tolist() == [0, 1]
    assert (data.in_channels, data.image_size) == (1, 6)
    assert data.spec.mean == (0.5,) and data.spec.std == (0.5,) and data.spec.augment == ("crop",)


def test_tiny_imagenet_tree_resolves_class_names_from_words(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tEgyptian cat\nn03\tbus, coach\n"
    (root / "words.txt").write_text(words)
    # PNG content under .JPEG names keeps the round trip exact (Pillow reads by content, not by name).
    colour = _random_images(6, 3, 64, seed=6)
    gray = _random_images(1, 1, 64, seed=7)
    expected_train, expected_labels = [], []
    for label, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for index in range(2):
            image = colour[2 * label + index]
            (root / "train" / wnid / "images" / f"{wnid}_{index}.JPEG").write_bytes(_png(image))
            expected_train.append(image)
            expected_labels.append(label)
    (root / "val" / "images" / "val_0.JPEG").write_bytes(_png(gray[0]))
    (root / "val" / "images" / "val_1.JPEG").write_bytes(_png(colour[0]))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn03\t0\t0\t10\t10\nval_1.JPEG\tn02\t1\t1\t5\t5\n")
    data = load_image_dataset("tinyimagenet", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert data.classes == ("Egyptian cat", "goldfish", "bus") and data.num_classes == 3
    assert np.array_equal(data.train_images, np.stack(expected_train)) and data.train_labels.tolist() == expected_labels
    assert data.test_labels.tolist() == [2, 0] and data.test_images.shape == (2, 3, 64, 64)
    assert np.array_equal(data.test_images[0], np.repeat(gray[0], 3, axis=0))  # grayscale expanded to RGB
    assert np.array_equal(data.test_images[1], colour[0])


# ----------------------------------------------------------------------------------------------- bad input


def _valid_cifar10_parquet(folder: Path) -> None:
    _write_parquet(folder / "train.parquet", _random_images(4, 3, 32, 0), [0, 1, 2, 3])
    _write_parquet(folder / "test.parquet", _random_images(2, 3, 32, 1), [4, 5])


def test_truncated_parquet_names_the_file(tmp_path):
    _valid_cifar10_parquet(tmp_path / "cifar10")
    train = tmp_path / "cifar10" / "train.parquet"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    message = _user_error(load_image_dataset, "cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert f"{train} is not a readable parquet file" in message and "SEMANTICFL_DATA" in message


def test_non_image_bytes_name_the_file_and_row(tmp_path):
    images = [_png(image) for image in _random_images(3, 3, 32, 0)]
    images[1] = b"this is not an image"
    _write_parquet(tmp_path / "train.parquet", images, [0, 1, 2])
    _write_parquet(tmp_path / "test.parquet", _random_images(1, 3, 32, 1), [0])
    message = _user_error(load_image_dataset, "cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert f"{tmp_path / 'train.parquet'} row 1 is not a readable image" in message


def test_wrong_image_size_is_rejected(tmp_path):
    _write_parquet(tmp_path / "train.parquet", _random_images(2, 3, 30, 0), [0, 1])
    _write_parquet(tmp_path / "test.parquet", _random_images(1, 3, 30, 1), [0])
    message = _user_error(load_image_dataset, "cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert "30×30" in message and "32×32" in message


def test_labels_out_of_range_are_rejected(tmp_path):
    _write_parquet(tmp_path / "p" / "train.parquet", _random_images(2, 3, 32, 0), [3, 10])
    _write_parquet(tmp_path / "p" / "test.parquet", _random_images(1, 3, 32, 1), [0])
    message = _user_error(load_image_dataset, "cifar10", root=str(tmp_path / "p"), cache_dir=str(tmp_path / "c"))
    assert "[0, 10)" in message and "10" in message and "train.parquet" in message
    _write_mnist_style(tmp_path / "m" / "mnist", gz=True, train_labels=[1] * 11 + [12])
    message = _user_error(load_image_dataset, "mnist", root=str(tmp_path / "m"), cache_dir=str(tmp_path / "c"))
    assert "include 12" in message


def test_corrupt_idx_is_rejected(tmp_path):
    _write_mnist_style(tmp_path / "mnist", gz=True)
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])
    message = _user_error(load_image_dataset, "mnist", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert str(images) in message


def test_missing_everything_lists_every_place_looked(tmp_path):
    root, cache = tmp_path / "empty", tmp_path / "cache"
    root.mkdir()
    message = _user_error(load_image_dataset, "cifar100", root=str(root), cache_dir=str(cache))
    places = datasets._candidate_layouts("cifar100", root.resolve(), cache.resolve())
    assert len(places) >= 6 and all(place.description in message for place in places)
    expected = (root / "cifar-100-python", root / "cifar100" / "train.parquet", root / "cifar100", cache / "downloads")
    assert all(str(path) in message for path in expected)
    assert "SEMANTICFL_DATA" in message and "download=True" in message


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "not-installed")
    message = _user_error(load_image_dataset, "fashion_mnist", cache_dir=str(tmp_path / "cache"))
    assert "dataset-fashion-mnist" in message and str(tmp_path / "not-installed") in message


def test_missing_data_root_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTICFL_DATA", str(tmp_path / "nowhere"))
    message = _user_error(load_image_dataset, "cifar10", cache_dir=str(tmp_path / "cache"))
    assert str(tmp_path / "nowhere") in message and "SEMANTICFL_DATA" in message


def test_image_dataset_validates_arrays():
    spec = get_spec("mnist")
    images, labels = np.zeros((2, 1, 28, 28), np.uint8), np.array([0, 1])
    ImageDataset(spec, images, labels, images, labels, "test")
    with pytest.raises(UserError, match="uint8 N×1×28×28"):
        ImageDataset(spec, np.zeros((2, 3, 28, 28), np.uint8), labels, images, labels, "test")
    with pytest.raises(UserError, match="int64"):
        ImageDataset(spec, images, labels.astype(np.int32), images, labels, "test")
    with pytest.raises(UserError, match=r"\[0, 10\)"):
        ImageDataset(spec, images, np.array([0, 10]), images, labels, "test")


# --------------------------------------------------------------------------------------------------- cache


def _load_idx_dataset(tmp_path):
    return load_image_dataset("mnist", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))


def test_second_load_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    arrays = _write_mnist_style(tmp_path / "data" / "mnist", gz=True)
    first = _load_idx_dataset(tmp_path)
    assert isinstance(first.train_images, np.memmap)

    def fail(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(IdxLayout, "decode", fail)
    second = _load_idx_dataset(tmp_path)
    assert isinstance(second.train_images, np.memmap) and np.array_equal(second.train_images[:, 0], arrays[0])
    folder = _cache_folders(tmp_path / "cache", "mnist")[0]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["arrays"]["train_images"]["shape"] == [12, 1, 28, 28]
    assert meta["arrays"]["train_labels"]["sha256"] == hashlib.sha256(arrays[1].astype(np.int64).tobytes()).hexdigest()


def test_truncated_cache_file_is_rebuilt(tmp_path):
    arrays = _write_mnist_style(tmp_path / "data" / "mnist", gz=False)
    _load_idx_dataset(tmp_path)
    (folder,) = _cache_folders(tmp_path / "cache", "mnist")
    cached = folder / "train_images.npy"
    full_size = cached.stat().st_size
    cached.write_bytes(cached.read_bytes()[: full_size // 2])
    data = _load_idx_dataset(tmp_path)
    assert cached.stat().st_size == full_size
    assert np.array_equal(data.train_images[:, 0], arrays[0])


def test_cache_with_altered_labels_is_rebuilt(tmp_path):
    arrays = _write_mnist_style(tmp_path / "data" / "mnist", gz=False)
    _load_idx_dataset(tmp_path)
    (folder,) = _cache_folders(tmp_path / "cache", "mnist")
    np.save(folder / "test_labels.npy", (arrays[3].astype(np.int64) + 1) % 10)  # same shape and dtype
    assert np.array_equal(_load_idx_dataset(tmp_path).test_labels, arrays[3])


def test_changed_source_gets_a_new_fingerprint_and_cache(tmp_path):
    _write_mnist_style(tmp_path / "data" / "mnist", gz=False, train_labels=[0] * 12)
    assert _load_idx_dataset(tmp_path).train_labels.tolist() == [0] * 12
    labels_file = tmp_path / "data" / "mnist" / "train-labels-idx1-ubyte"
    before = fingerprint("mnist", [labels_file])
    _write_idx(labels_file, np.full(12, 7, np.uint8))
    os.utime(labels_file, ns=(time.time_ns() + 10**9,) * 2)  # a later mtime even on coarse-clock filesystems
    assert fingerprint("mnist", [labels_file]) != before
    assert _load_idx_dataset(tmp_path).train_labels.tolist() == [7] * 12
    assert len(_cache_folders(tmp_path / "cache", "mnist")) == 2


# ----------------------------------------------------------------------------------------------- downloads


def _cifar100_release(tmp_path: Path):
    """A synthetic cifar-100-python.tar.gz; returns (file:// URL, its md5, the arrays inside)."""
    arrays = _write_cifar_pickles(tmp_path / "release" / "cifar-100-python", "cifar100")
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(tmp_path / "release" / "cifar-100-python", arcname="cifar-100-python")
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest(), arrays


def _use_release(monkeypatch, url: str, md5: str) -> None:
    release = (downloads._Download(url, md5, "cifar-100-python"),)
    monkeypatch.setitem(downloads._DOWNLOADS, "cifar100", release)


def test_download_verifies_unpacks_and_is_found_again(tmp_path, monkeypatch):
    url, md5, arrays = _cifar100_release(tmp_path)
    _use_release(monkeypatch, url, md5)
    (tmp_path / "empty").mkdir()
    cache = tmp_path / "cache"
    data = load_image_dataset("cifar100", root=str(tmp_path / "empty"), cache_dir=str(cache), download=True)
    assert np.array_equal(data.train_images, arrays[0]) and np.array_equal(data.test_labels, arrays[3])
    assert sorted(path.name for path in (cache / "downloads").iterdir()) == ["cifar-100-python"]
    again = load_image_dataset("cifar100", root=str(tmp_path / "empty"), cache_dir=str(cache))
    assert np.array_equal(again.train_labels, arrays[1])


def test_download_with_wrong_checksum_is_rejected_and_discarded(tmp_path, monkeypatch):
    url, md5, _ = _cifar100_release(tmp_path)
    _use_release(monkeypatch, url, "0" * 32)
    message = _user_error(load_image_dataset, "cifar100", cache_dir=str(tmp_path / "cache"), download=True)
    assert "MD5" in message and md5 in message and "0" * 32 in message
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_offline_download_is_a_user_error(tmp_path, monkeypatch):
    def offline(*_, **__):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(downloads, "_open_url", offline)
    message = _user_error(load_image_dataset, "mnist", cache_dir=str(tmp_path / "cache"), download=True)
    assert "could not download https://" in message and "name resolution" in message
    assert list((tmp_path / "cache" / "downloads" / "mnist").iterdir()) == []


def test_no_download_unless_asked(tmp_path, monkeypatch):
    def forbidden(*_, **__):
        raise AssertionError("tried to download")

    monkeypatch.setattr(downloads, "_open_url", forbidden)
    message = _user_error(load_image_dataset, "mnist", cache_dir=str(tmp_path / "cache"))
    assert "download=True" in message


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        get_spec("cifar10").name = "x"  # type: ignore[misc]
    assert isinstance(get_spec("cifar10"), DatasetSpec)
