"""Benchmarks of the teacher subsystem (issue: frozen semantic teachers). Each prints a JSON record
and appends it to ``benchmarks/results/teacher.jsonl``.

    python benchmarks/bench_teacher.py throughput   # images/s of the offline teacher and the tiny SD path
    python benchmarks/bench_teacher.py epoch        # local epoch: FedAvg vs FedDifRC (cached / in-RAM targets)
    python benchmarks/bench_teacher.py targets      # how much class information the teacher's targets carry

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
from semanticfl.engine.checkpoint import load_latest_checkpoint
from semanticfl.engine.experiment import Experiment
from semanticfl.teachers.base import ExtractionSettings, class_prompts
from semanticfl.teachers.offline import load_offline_teacher, shipped_teacher_dir
from semanticfl.teachers.sd import build_tiny_stable_diffusion, load_stable_diffusion
from semanticfl.teachers.targets import FUSED

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
    if algorithm.teacher_requests().anchors:
        algorithm.receive_anchors(experiment.teacher_targets.anchors(algorithm.teacher_requests().anchors))
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


def target_statistics(features: np.ndarray, labels: np.ndarray) -> dict:
    """Of N unit vectors (N×D) with labels: the norm of their mean (1 = all equal), the mean cosine
    within and across classes, and the accuracy of a nearest-class-mean rule fitted on one half and
    tested on the other (how much class information a target carries, with no training)."""
    x = features.astype(np.float32)
    cos = x @ x.T
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(x), dtype=bool)
    fit, test = np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 2 == 1
    means = np.stack([x[fit & (labels == c)].mean(0) for c in np.unique(labels)])
    return {
        "mean_vector_norm": float(np.linalg.norm(x.mean(0))),
        "cos_same_class": float(cos[same & off].mean()),
        "cos_other_class": float(cos[~same].mean()),
        "nearest_class_mean_accuracy": float(((x[test] @ means.T).argmax(1) == labels[test]).mean()),
    }


def per_sample_targets(experiment: Experiment, rows: np.ndarray) -> dict:
    """Statistics of every cached per-sample request of the experiment's algorithm, on pool ``rows``."""
    labels = np.asarray(experiment.dataset.train_labels)[experiment.client_pool[rows]]
    out = {}
    for name, entry in experiment.teacher_targets.pool_entries(experiment.algorithm.teacher_requests().features).items():
        values = entry.take(FUSED, rows)
        if values.ndim == 3:  # TDCL: N×C candidates; the true class's, and how alike an image's are
            candidates = values.astype(np.float32)
            cos = np.einsum("npd,nqd->npq", candidates, candidates)
            out[f"{name}.candidate_cos"] = float(cos[:, ~np.eye(cos.shape[1], dtype=bool)].mean())
            values = candidates[np.arange(len(rows)), labels]
        out.update({f"{name}.{k}": v for k, v in target_statistics(values, labels).items()})
    return out


def anchor_cosines(experiment: Experiment) -> dict:
    """Mean and largest cosine between two classes' SemanticFL anchors."""
    anchors = experiment.teacher_targets.anchors(experiment.algorithm.teacher_requests().anchors)["semanticfl.anchors"]
    cos = anchors @ anchors.T
    off = cos[~np.eye(len(cos), dtype=bool)]
    return {"mean": float(off.mean()), "max": float(off.max())}


def global_model_outputs(run_dir: Path) -> dict:
    """The final global model of a run on the test set: accuracy, the spread of its logits (mean
    per-class std over images) and the share of images given its most frequent prediction."""
    experiment = Experiment(load_config(str(run_dir / "config.toml")))
    model = experiment.build_model()
    state = load_latest_checkpoint(run_dir / "checkpoints").global_arrays
    model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state.items()})
    model.eval()
    images = images_to_tensor(experiment.dataset.test_images, np.arange(len(experiment.dataset.test_labels)))
    with torch.no_grad():
        logits = torch.cat([model(experiment.eval_transform()(images[i : i + 1000], None))[1]
                            for i in range(0, len(images), 1000)])
    predicted = logits.argmax(1).numpy()
    return {
        "accuracy": float((predicted == np.asarray(experiment.dataset.test_labels)).mean()),
        "logit_std": float(logits.std(0).mean()),
        "top_prediction_share": float(np.bincount(predicted).max() / len(predicted)),
    }


def targets(args: argparse.Namespace) -> None:
    """Class information in the cached teacher targets of FedDifRC (both reductions) and SemanticFL
    (local mode), SemanticFL's anchors from prompts alone and with public samples, and the final
    global models of the runs in ``--runs`` (reads the feature store; extracts what is missing)."""
    common = ["data.server_holdout=10000", f"teacher.path={args.teacher}",
              "algorithm.feddifrc.layer_dims=[128,128,64]", "algorithm.semanticfl.layer_dims=[32,128,128,64]"]

    def experiment(*overrides: str) -> Experiment:
        return Experiment(load_config("cifar10_cnn", [*common, *overrides]))

    rows = np.sort(np.random.default_rng(0).choice(len(experiment().client_pool), args.samples, replace=False))
    result = {"samples": args.samples}
    for label, overrides in {
        "feddifrc_spatial_norm": ["algorithm.name=feddifrc"],
        "feddifrc_gap": ["algorithm.name=feddifrc", "algorithm.feddifrc.reduction=gap"],
        "semanticfl_local": ["algorithm.name=semanticfl", "algorithm.semanticfl.mode=local"],
    }.items():
        result[label] = per_sample_targets(experiment(*overrides), rows)
    for k in (0, 100):
        anchors = experiment("algorithm.name=semanticfl", f"algorithm.semanticfl.anchor_public_per_class={k}")
        result[f"anchor_cos_public_per_class_{k}"] = anchor_cosines(anchors)
    for run_dir in sorted(Path(args.runs).glob("dir0.1-*-s0-2*")):
        if (run_dir / "summary.json").exists():
            result[f"global_model.{run_dir.name.rsplit('-', 2)[0]}"] = global_model_outputs(run_dir)
    record("teacher_targets", result)


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
    g = sub.add_parser("targets")
    g.add_argument("--teacher", required=True, help="the CIFAR-10 offline teacher folder")
    g.add_argument("--runs", default="benchmarks/out/headline", help="headline run directories")
    g.add_argument("--samples", type=int, default=3000, help="client-pool samples the statistics use")
    args = parser.parse_args()
    {"throughput": throughput, "epoch": epoch, "targets": targets}[args.which](args)


if __name__ == "__main__":
    main()
