"""Downloads of the official releases, each file checked against its known MD5 before it is used."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from semanticfl.data.cache import CACHE_ENV
from semanticfl.data.layouts import official_layouts
from semanticfl.data.layouts.base import DATA_ENV, Layout, one_line
from semanticfl.errors import UserError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class _Download:
    """One file of an official release: where to get it, its MD5, and where it goes under the downloads folder.

    Archives (``.tar.gz``, ``.zip``) are unpacked and removed; ``target`` is then the folder they create.
    """

    url: str
    md5: str
    target: str


_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MNIST_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

_DOWNLOADS: dict[str, tuple[_Download, ...]] = {
    "cifar10": (
        _Download(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-batches-py",
        ),
    ),
    "cifar100": (
        _Download(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python",
        ),
    ),
    "tinyimagenet": (
        _Download(
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200"
        ),
    ),
    "mnist": tuple(
        _Download(_MNIST_BASE + file, md5, f"mnist/{file}")
        for file, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    "fashion_mnist": tuple(
        _Download(_FASHION_MNIST_BASE + file, md5, f"fashion_mnist/{file}")
        for file, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
}

_open_url = urllib.request.urlopen


def download_official(name: str, downloads: Path) -> Layout:
    """Fetch (and unpack) the official release of ``name`` into ``downloads``; return the layout it forms."""
    for item in _DOWNLOADS[name]:
        target = downloads / item.target
        if target.exists():
            continue
        archive_suffix = next((suffix for suffix in (".tar.gz", ".zip") if item.url.endswith(suffix)), None)
        if archive_suffix is None:
            _fetch(item, target)
        else:
            archive = downloads / f"{item.target}{archive_suffix}"
            _fetch(item, archive)
            _unpack(archive, downloads, item.target)
    layout = next((layout for layout in official_layouts(downloads, name) if layout.present()), None)
    if layout is None:
        raise UserError(f"the downloaded {name} release in {downloads} is incomplete; delete that folder and retry")
    return layout


def _fetch(item: _Download, destination: Path) -> None:
    """Download ``item.url`` to ``destination`` via a temporary file, verifying its MD5 before the rename."""
    log.info("downloading %s", item.url)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    except OSError as error:
        raise UserError(f"cannot write to {destination.parent}: {one_line(error)}; set ${CACHE_ENV}") from None
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(descriptor, "wb") as output, _open_url(item.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                output.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(
            f"could not download {item.url}: {one_line(error)}; check the network, or fetch it yourself and "
            f"point ${DATA_ENV} at the folder holding it"
        ) from None
    if digest.hexdigest() != item.md5:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(
            f"{item.url} downloaded with MD5 {digest.hexdigest()} but {item.md5} was expected; "
            "the transfer was corrupted or the file changed upstream, so retry later or fetch it yourself"
        )
    os.replace(temporary, destination)


def _unpack(archive: Path, downloads: Path, folder_name: str) -> None:
    """Unpack an archive into a scratch folder, move its ``folder_name`` into place, and delete the rest."""
    scratch = Path(tempfile.mkdtemp(dir=downloads, prefix=".unpack-"))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(scratch)
        else:
            with tarfile.open(archive) as bundle:
                bundle.extractall(scratch, filter="data")
        if not (scratch / folder_name).is_dir():
            raise UserError(f"{archive} does not contain {folder_name}/; delete it and retry the download")
        os.replace(scratch / folder_name, downloads / folder_name)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot unpack {archive}: {one_line(error)}; delete it and retry the download") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    archive.unlink()
