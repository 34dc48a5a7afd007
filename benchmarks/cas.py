"""Classification accuracy score (CAS) of a teacher's generations (issue 15, item 2).

The config's client CNN is trained centrally, with the engine's own local training (FedAvg's
cross-entropy, SGD, the dataset's augmentation), on ``N`` images per class, and tested on the real
test set. Three training sets per N:

- ``generated``: the teacher's class-prompt samples (the sampler settings of ``[teacher]``; the same
  cached images the guidance mode sends when N = ``guidance_per_class``);
- ``real``: N real images per class of the server's public split (the teacher's training data);
- the two are trained for the same number of SGD steps (``--steps``, whatever N is).

A row per (dataset, teacher, N, source) is appended to ``benchmarks/results/cas.jsonl`` as it
finishes; a row already there is skipped, so the script can be stopped and started again.

    python benchmarks/cas.py quickstart --per-class 100 1000 [--seeds 0 1 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from semanticfl.algorithms.base import LocalData
from semanticfl.config import load_config
from semanticfl.engine.experiment import Experiment
from semanticfl.models import build_model
from semanticfl.teachers.base import class_prompts
from semanticfl.teachers.guidance import balanced_labels, generated_images

RESULTS = Path(__file__).parent / "results" / "cas.jsonl"


def training_set(experiment: Experiment, source: str, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of ``per_class`` generated or real public-split images of every class."""
    targets = experiment.teacher_targets
    num_classes = experiment.dataset.num_classes
    if source == "generated":
        labels = balanced_labels(num_classes, per_class)
        prompts = tuple(class_prompts(experiment.dataset.classes))
        images = generated_images(targets, prompts, labels)
    else:
        chosen = targets.public_class_samples(per_class, num_classes).reshape(-1)
        images = targets.train_images(chosen).numpy()
        labels = np.asarray(experiment.dataset.train_labels)[chosen]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def train_and_test(experiment: Experiment, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> float:
    """Test accuracy (%) of the client CNN after ``steps`` SGD steps on (images, labels)."""
    ds, settings = experiment.dataset, experiment.local_settings()
    epochs = max(1, math.ceil(steps / math.ceil(len(labels) / settings.batch_size)))
    torch.manual_seed(seed)
    model = build_model(experiment.config.model.name, ds.num_classes, ds.in_channels, ds.image_size)
    data = LocalData(images, labels, experiment.train_transform())
    algorithm = experiment.algorithm
    algorithm.local_train(model, data, None, dataclasses.replace(settings, epochs=epochs), torch.Generator().manual_seed(seed))
    test_images, test_labels = experiment.test_tensors
    return algorithm.evaluate(model, test_images, test_labels, experiment.eval_transform(), 1000)["accuracy"]


def finished_rows() -> set[tuple]:
    if not RESULTS.exists():
        return set()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["teacher"], r["per_class"], r["source"], r["seed"], r["steps"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--per-class", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--sources", nargs="+", default=["real", "generated"], choices=["real", "generated"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1600, help="SGD steps of every training (default 1600)")
    args = parser.parse_args()
    config = load_config(args.config, ["algorithm.name=fedavg", *args.overrides])
    experiment = Experiment(config)
    experiment.teacher_targets.progress = True
    teacher = config.teacher.path or "shipped"
    done = finished_rows()
    for per_class in args.per_class:
        for source in args.sources:
            todo = [s for s in args.seeds if (config.data.dataset, teacher, per_class, source, s, args.steps) not in done]
            if not todo:
                continue
            started = time.perf_counter()
            images, labels = training_set(experiment, source, per_class)
            built_s = time.perf_counter() - started
            for seed in todo:
                started = time.perf_counter()
                accuracy = train_and_test(experiment, images, labels, args.steps, seed)
                row = {
                    "dataset": config.data.dataset, "teacher": teacher, "per_class": per_class, "source": source,
                    "seed": seed, "steps": args.steps, "test_accuracy": round(accuracy, 2),
                    "sampler": {"steps": config.teacher.sample_steps, "guidance_scale": config.teacher.guidance_scale,
                                "scheduler": config.teacher.sampler},
                    "build_s": round(built_s, 1), "train_s": round(time.perf_counter() - started, 1),
                }
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
