"""What the offline teacher trains on: the server's public split, its TAEF2 latents (scaled) and the class
prompts' MiniLM states, with the provenance that teacher.json records."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from semanticfl.data.datasets import ImageDataset, images_to_tensor, load_image_dataset
from semanticfl.data.splits import stratified_holdout
from semanticfl.errors import UserError
from semanticfl.models.text import MINILM_NAME, MINILM_PACKAGE, MiniLMPromptEncoder
from semanticfl.teachers.base import NULL_PROMPT, class_prompts
from semanticfl.teachers.offline import CHIRAL_DATASETS, indices_sha256, module_sha256, prepare_images
from semanticfl.teachers.taef2 import TAEF2

ENCODE_CHUNK = 500


def public_split(dataset: ImageDataset, holdout_size: int, holdout_seed: int) -> np.ndarray:
    """The server's public split: the stratified holdout that no federated client holds."""
    if holdout_size < 1:
        raise UserError(
            f"holdout_size must be >= 1 (the public split the teacher trains on), got {holdout_size}"
        )
    return stratified_holdout(dataset.train_labels, holdout_size, holdout_seed)


@torch.no_grad()
def encode_latents(
    taef2: TAEF2, images: np.ndarray, indices: np.ndarray, resolution: int, flip: bool
) -> Tensor:
    """Unscaled TAEF2 latents of ``images[indices]``, followed by those of their mirror images if ``flip``."""
    parts, mirrored = [], []
    for start in range(0, len(indices), ENCODE_CHUNK):
        x = prepare_images(images_to_tensor(images, indices[start : start + ENCODE_CHUNK]), resolution)
        parts.append(taef2.encode(x))
        if flip:
            mirrored.append(taef2.encode(x.flip(-1)))
    return torch.cat(parts + mirrored)


def prompt_states(text: MiniLMPromptEncoder, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Token states and masks of the class prompts followed by the null prompt (row ``len(prompts)``)."""
    return text.tokens([*prompts, NULL_PROMPT])


def training_data(
    dataset_name: str,
    holdout_size: int,
    holdout_seed: int,
    resolution: int,
    limit: int | None,
    augment_flip: bool,
    prompt_template: str,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], dict]:
    """Scaled latents, labels and prompt states of the public split, and the provenance for teacher.json."""
    dataset = load_image_dataset(dataset_name)
    split = public_split(dataset, holdout_size, holdout_seed)
    used = split if limit is None else split[:limit]
    flip = augment_flip and dataset_name not in CHIRAL_DATASETS
    taef2 = TAEF2.from_directory()
    raw = encode_latents(taef2, dataset.train_images, used, resolution, flip)
    shift, scale = float(raw.mean()), float(1 / raw.std())
    labels = torch.as_tensor(np.asarray(dataset.train_labels)[used], dtype=torch.long).repeat(
        2 if flip else 1
    )
    text = MiniLMPromptEncoder.load()
    states = prompt_states(text, class_prompts(dataset.classes, prompt_template))
    provenance = {
        "dataset": dataset_name,
        "classes": list(dataset.classes),
        "prompt_template": prompt_template,
        "resolution": resolution,
        "codec": {
            "name": "taef2",
            "shift": shift,
            "scaling_factor": scale,
            "encoder_sha256": module_sha256(taef2.encoder),
        },
        "text": {"name": MINILM_NAME, "package": MINILM_PACKAGE, "fingerprint": text.fingerprint()},
        "trained_on": {
            "dataset": dataset_name,
            "split": "train",
            "holdout_size": holdout_size,
            "holdout_seed": holdout_seed,
            "indices_sha256": indices_sha256(split),
            "samples_used": len(used),
            "flipped_copies": flip,
        },
    }
    return (raw - shift) * scale, labels, states, provenance
