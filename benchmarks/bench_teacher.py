"""Benchmarks of the teacher subsystem (issue: frozen semantic teachers). Each prints a JSON record
and appends it to ``benchmarks/results/teacher.jsonl``.

    python benchmarks/bench_teacher.py throughput   # images/s of the offline teacher and the tiny SD path
    python benchmarks/bench_teacher.py epoch        # local epoch: FedAvg vs FedDifRC (cached / in-RAM targets)

The CIFAR-10 extraction time is the wall time of ``semanticfl features`` (see BENCHMARKS.md).
Times are compared as ratios measured in the same invocation; absolute numbers vary.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import bench_core  # benchmarks/ is on sys.path when run as a script
import numpy as np
import torch

from semanticfl.algorithms.base import ClientTask, LocalData
from semanticfl.config import load_config
from semanticfl.data.datasets import images_to_tensor, load_image_dataset
from semanticfl.engine.experiment import Experiment
from semanticfl.teachers.base import ExtractionSettings, class_prompts
from semanticfl.teachers.offline import load_offline_teacher, shipped_teacher_dir
from semanticfl.teachers.sd import build_tiny_stable_diffusion, load_stable_diffusion

RESULTS = Path(__file__).parent / "results" / "teacher.jsonl"


def record(name: str, values: dict) -> None:
    bench_core.record(name, values, RESULTS)


def rate(teacher, images: torch.Tensor, prompts: list[str]) -> float:
    """U-Net passes per second: every image under every prompt (one warm-up batch first)."""
    ids = torch.arange(len(images))
    run = teacher.features if len(prompts) == 1 else teacher.features_per_prompt
    run(images[:32], ids[:32], prompts)
    started = time.perf_counter()
    run(images, ids, prompts)
    return len(images) * len(prompts) / (time.perf_counter() - started)


def throughput(args: argparse.Namespace) -> None:
    """Null-prompt features and all-class features on CIFAR-10 test images, batch 256, all cores."""
    cifar = load_image_dataset("cifar10")
    images = images_to_tensor(cifar.test_images, np.arange(args.images))
    prompts = class_prompts(cifar.classes)
    settings = ExtractionSettings(resolution=32, timestep=300, batch_size=256)
    offline_dir = shipped_teacher_dir("fashion_mnist")
    offline = load_offline_teacher(offline_dir, dataclasses.replace(settings, up_blocks=(0, 1, 2)))
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_stable_diffusion(str(build_tiny_stable_diffusion(Path(tmp) / "sd")), settings)
        rows = {
            "offline_null_images_per_s": rate(offline, images, [""]),
            "offline_all_classes_passes_per_s": rate(offline, images, prompts),
            "tiny_sd_null_images_per_s": rate(tiny, images, [""]),
            "tiny_sd_all_classes_passes_per_s": rate(tiny, images, prompts),
        }
    record("teacher_throughput", {"images": args.images, "threads": torch.get_num_threads(), **rows})


def epoch_seconds(experiment: Experiment, data: LocalData, repeats: int) -> float:
    """Best of ``repeats`` local epochs (one warm-up) of the experiment's algorithm on ``data``."""
    algorithm, settings = experiment.algorithm, experiment.local_settings()
    if algorithm.anchor_requests():
        algorithm.receive_anchors(experiment.teacher_targets.anchors())
    task = ClientTask(round=1, payload=algorithm.server_payload({}, 1))
    times = []
    for attempt in range(repeats + 1):
        model = experiment.build_model()
        started = time.perf_counter()
        algorithm.local_train(model, data, task, settings, torch.Generator().manual_seed(attempt))
        times.append(time.perf_counter() - started)
    return min(times[1:])


def epoch(args: argparse.Namespace) -> None:
    """One client's epoch: FedAvg, FedDifRC reading the memory-mapped store, FedDifRC with the same
    targets already in RAM, SemanticFL in ``anchors`` and ``local`` mode. Ratios isolate the cost of
    the cache reads and of the extra loss terms."""
    torch.set_num_threads(1)  # one client per core, as in simulation
    common = [
        "data.server_holdout=10000", f"teacher.path={args.teacher}", "partition.num_clients=10",
        "partition.scheme=iid", f"data.train_fraction={args.fraction}", f"teacher.cache_dir={args.cache}",
        "algorithm.feddifrc.layer_dims=[128,128,64]", "algorithm.semanticfl.layer_dims=[32,128,128,64]",
    ]

    def experiment(*overrides: str) -> Experiment:
        return Experiment(load_config("cifar10_cnn", [*common, *overrides]))

    difrc = experiment("algorithm.name=feddifrc")
    fedavg = experiment("algorithm.name=fedavg")
    cached = difrc.client_data(0)
    rows = np.arange(len(cached))
    in_ram = dataclasses.replace(cached, targets=_in_memory(cached.targets(rows)))
    t_fedavg = epoch_seconds(fedavg, fedavg.client_data(0), args.repeats)
    t_cached = epoch_seconds(difrc, cached, args.repeats)
    t_ram = epoch_seconds(difrc, in_ram, args.repeats)
    semanticfl = {}
    for mode in ("anchors", "local"):
        run = experiment("algorithm.name=semanticfl", f"algorithm.semanticfl.mode={mode}")
        semanticfl[f"semanticfl_{mode}_s"] = epoch_seconds(run, run.client_data(0), args.repeats)
    record("teacher_epoch", {
        "samples": len(cached),
        "train_fraction": args.fraction,
        "fedavg_s": t_fedavg,
        "feddifrc_cached_s": t_cached,
        "feddifrc_in_ram_s": t_ram,
        **semanticfl,
        "cached_over_in_ram": t_cached / t_ram,
        "feddifrc_cached_over_fedavg": t_cached / t_fedavg,
        **{name.replace("_s", "_over_fedavg"): value / t_fedavg for name, value in semanticfl.items()},
    })


def _in_memory(targets: dict[str, torch.Tensor]):
    def read(rows: np.ndarray) -> dict[str, torch.Tensor]:
        index = torch.from_numpy(np.asarray(rows))
        return {name: value[index] for name, value in targets.items()}

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=1024)
    e = sub.add_parser("epoch")
    e.add_argument("--teacher", required=True, help="an offline teacher folder")
    e.add_argument("--cache", required=True, help="feature store root holding the CIFAR-10 features")
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--fraction", type=float, default=0.25, help="data.train_fraction (sizes the extraction)")
    args = parser.parse_args()
    {"throughput": throughput, "epoch": epoch}[args.which](args)


if __name__ == "__main__":
    main()
