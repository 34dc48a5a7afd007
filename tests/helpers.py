"""Helpers for the end-to-end tests: run the real ``semanticfl`` command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# A small real run: Fashion-MNIST, 3 clients, 10 % of the training set.
SMALL_RUN = [
    "experiment.name=small",
    "partition.num_clients=3",
    "partition.alpha=0.5",
    "data.train_fraction=0.1",
    "train.rounds=3",
    "train.lr=0.05",
    "engine.parallel_clients=2",
]

# Fields of a round record that measure time, not learning.
TIMING_KEYS = {"round_time_s", "elapsed_s", "fit_time_s"}


def semanticfl(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m semanticfl.cli.main ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "semanticfl.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_semanticfl(*args: str, cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``semanticfl ARGS`` in its own session (so a SIGKILL reaches its children too);
    stdout and stderr go to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "semanticfl.cli.main", *args],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_run_dir(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The one run directory a started run creates in ``folder``."""
    deadline = time.monotonic() + timeout
    while not run_dirs(folder):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no run directory in {folder} (exit code {proc.poll()})")
        time.sleep(0.2)
    (run_dir,) = run_dirs(folder)
    return run_dir


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(value):
    """A round record with every wall-clock field removed (recursively)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def striped_local_data(labels=None, n: int = 24, seed: int = 0):
    """Noisy 1×16×16 images whose label is written in which third of the rows is bright
    (labels 0..2); default labels ``arange(n) % 3``. Learnable in a few local steps."""
    import torch

    from semanticfl.algorithms.base import LocalData

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3 if labels is None else torch.as_tensor(labels)
    images = torch.randint(0, 96, (len(labels), 1, 16, 16), dtype=torch.uint8, generator=g)
    for i, label in enumerate(labels.tolist()):
        images[i, :, 5 * label : 5 * label + 6] += 150
    return LocalData(images=images, labels=labels, transform=lambda x, gen: x.float() / 255.0)


def softmax_ce_gradient(weight, bias, x, y):
    """Hand-derived ∇ of mean cross-entropy for a linear softmax (numpy)."""
    import numpy as np

    z = x @ weight.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    residual = p - np.eye(weight.shape[0])[y]
    return residual.T @ x / len(y), residual.mean(axis=0)


# --------------------------------------------------------------------------- Flower processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Processes:
    """Long-running Flower processes, each in its own session so children go too."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *command: str) -> subprocess.Popen:
        home = self.folder / f"{name}-home"
        home.mkdir()
        log = open(self.folder / f"{name}.log", "w")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "FLWR_HOME": str(home)},
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 30) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, the last started first (SuperNodes before the SuperLink)."""
        for name in reversed(self.procs):
            self.stop(name)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its children at once (a crash, not a shutdown)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()[-3000:]


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until ``path`` exists; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the file at ``path`` contains ``text``; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {path} said {text!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not say {text!r} within {timeout} s")
        time.sleep(0.5)


def start_insecure_federation(procs: Processes, supernodes: int) -> int:
    """A SuperLink and ``supernodes`` SuperNodes (partition ids 0..n-1) on 127.0.0.1, without TLS, as
    ``procs`` "superlink" and "supernode<i>"; returns the SuperLink's port."""
    link_port = free_port()
    procs.start("superlink", "flower-superlink", "--insecure", "--port", str(link_port))
    wait_for_port(link_port)
    for i in range(supernodes):
        procs.start(
            f"supernode{i}", "flower-supernode", "--insecure",
            "--superlink", f"127.0.0.1:{link_port}", "--port", str(free_port()),
            "--node-config", f"partition-id={i} num-partitions={supernodes}",
        )
    return link_port
