"""On-disk layouts of a dataset, the format readers behind them, image decoding and label checks.

A layout (`base.Layout`) knows whether its files are there, which files the decoded arrays depend on (for the
cache fingerprint) and how to decode them into `base.Splits`. One module per format family: `cifar.py` (the
CIFAR python pickles), `idx.py` (MNIST-style IDX files), `tinyimagenet.py` (the tiny-imagenet-200 folder),
`parquet.py` (Hugging Face style parquet files) and `folders.py` (image-folder trees). They share `base.py`
(the interface, `DATA_ENV`, `one_line`), `images.py` (image listing and decoding) and `checks.py` (class
names, labels, the split check, measured specs). `official_layouts` (here) says where the official releases
sit.
"""

from __future__ import annotations

from pathlib import Path

from semanticfl.data.layouts.base import Layout
from semanticfl.data.layouts.cifar import CifarPickleLayout
from semanticfl.data.layouts.idx import IdxLayout
from semanticfl.data.layouts.tinyimagenet import TinyImageNetLayout


def official_layouts(root: Path, name: str) -> list[Layout]:
    """The official release formats of ``name`` as they would sit under ``root``."""
    if name == "cifar10":
        return [CifarPickleLayout(folder / "cifar-10-batches-py", name) for folder in (root, root / name)]
    if name == "cifar100":
        return [CifarPickleLayout(folder / "cifar-100-python", name) for folder in (root, root / name)]
    if name == "tinyimagenet":
        return [TinyImageNetLayout(folder / "tiny-imagenet-200") for folder in (root, root / name)]
    if name == "mnist":
        return [IdxLayout(folder) for folder in (root / name, root / "MNIST" / "raw", root)]
    if name == "fashion_mnist":
        folders = (root / name, root / "fashion-mnist", root / "FashionMNIST" / "raw", root)
        return [IdxLayout(folder) for folder in folders]
    return []
