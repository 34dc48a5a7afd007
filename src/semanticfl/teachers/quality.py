"""How good a teacher is: linear probes on its features, and (for generation) the classification
accuracy score of images it generates.

:func:`evaluate_teacher` trains standardised logistic-regression probes on the teacher's null-prompt
features of the public split and tests them on the test set.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from semanticfl.data.datasets import ImageDataset, images_to_tensor
from semanticfl.teachers.base import NULL_PROMPT
from semanticfl.teachers.diffusion import DiffusionTeacher

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PROBE_ITERATIONS = 200
EXTRACT_CHUNK = 1024


def _pooled_features(teacher: DiffusionTeacher, images: np.ndarray, indices: np.ndarray) -> dict[str, Tensor]:
    """Per sample: each up block's output averaged over space and L2-normalised, plus the flat latent."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(indices), EXTRACT_CHUNK):
        chunk = indices[start : start + EXTRACT_CHUNK]
        out = teacher.features(images_to_tensor(images, chunk), torch.as_tensor(chunk), [NULL_PROMPT])
        for key, value in out.items():
            pooled = value.flatten(1) if key == "latent" else F.normalize(value.mean((2, 3)), dim=1)
            parts.setdefault(key, []).append(pooled)
    return {key: torch.cat(value) for key, value in parts.items()}


def _fused(features: dict[str, Tensor]) -> Tensor:
    return torch.cat([value for key, value in sorted(features.items()) if key != "latent"], dim=1)


def _fit_probe(x: Tensor, y: Tensor, classes: int, weight_decay: float) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full-batch L-BFGS, L2 penalty ``weight_decay / 2 · |W|²``."""
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=PROBE_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(probe: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    weight, bias = probe
    return float(((x @ weight + bias).argmax(1) == y).float().mean())


def linear_probe(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, seed: int = 0
) -> dict:
    """Test accuracy of a standardised logistic-regression probe whose weight decay is picked on a
    held-out fifth of the training rows."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    fit, val = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    scores = {
        wd: _accuracy(_fit_probe(train[fit], train_labels[fit], classes, wd), train[val], train_labels[val])
        for wd in WEIGHT_DECAYS
    }
    best = max(scores, key=scores.get)
    probe = _fit_probe(train, train_labels, classes, best)
    return {"accuracy": _accuracy(probe, test, test_labels), "weight_decay": best}


def _pca_plot(features: Tensor, labels: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = features - features.mean(0)
    coords = (centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T).numpy()
    figure, axes = plt.subplots(figsize=(7, 6))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        rows = labels == index
        axes.scatter(coords[rows, 0], coords[rows, 1], s=2, color=colours(index % colours.N), label=name)
    axes.set(title=title, xlabel="PC 1", ylabel="PC 2")
    axes.legend(markerscale=5, fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def evaluate_teacher(
    teacher: DiffusionTeacher,
    dataset: ImageDataset,
    *,
    public_indices: np.ndarray,
    probe_samples: int = 10000,
    test_samples: int | None = None,
    plot_path: Path | None = None,
    seed: int = 0,
) -> dict:
    """Linear-probe quality of the teacher's null-prompt features (at ``teacher.settings``).

    Probes are trained on up to ``probe_samples`` of the public split and tested on the test set (its
    first ``test_samples``): the fused up-block features (global average pooled, L2-normalised per
    block, concatenated), each block alone, the flat VAE latent, and raw pixels as the reference.
    Also reports extraction throughput and, with ``plot_path``, saves a 2-D PCA of the fused test features.
    """
    rng = np.random.default_rng(seed)
    train_rows = np.sort(
        rng.choice(public_indices, size=min(probe_samples, len(public_indices)), replace=False)
    )
    test_rows = np.arange(len(dataset.test_labels) if test_samples is None else test_samples)
    train = _pooled_features(teacher, dataset.train_images, train_rows)
    began = time.perf_counter()
    test = _pooled_features(teacher, dataset.test_images, test_rows)
    seconds = time.perf_counter() - began
    train["teacher"], test["teacher"] = _fused(train), _fused(test)
    train["pixels"] = images_to_tensor(dataset.train_images, train_rows).flatten(1).float() / 255
    test["pixels"] = images_to_tensor(dataset.test_images, test_rows).flatten(1).float() / 255
    y_train = torch.as_tensor(np.asarray(dataset.train_labels)[train_rows], dtype=torch.long)
    y_test = torch.as_tensor(np.asarray(dataset.test_labels)[test_rows], dtype=torch.long)
    probes = {key: linear_probe(train[key], y_train, test[key], y_test, seed) for key in sorted(train)}
    report = {
        "probe_accuracy": {key: probe["accuracy"] for key, probe in probes.items()},
        "probe_weight_decay": {key: probe["weight_decay"] for key, probe in probes.items()},
        "feature_dims": {key: int(value.shape[1]) for key, value in train.items()},
        "probe_train_samples": len(train_rows),
        "test_samples": len(test_rows),
        "timestep": teacher.settings.timestep,
        "up_blocks": list(teacher.settings.up_blocks),
        "extract_images_per_s": len(test_rows) / seconds,
        "extract_batch_size": teacher.settings.batch_size,
    }
    if plot_path is not None:
        accuracy = report["probe_accuracy"]["teacher"]
        title = f"{dataset.name} test set, teacher at t={teacher.settings.timestep} (probe {accuracy:.1%})"
        _pca_plot(test["teacher"], y_test.numpy(), dataset.classes, Path(plot_path), title)
        report["plot"] = str(plot_path)
    return report
