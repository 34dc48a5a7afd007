"""An experiment's teacher targets: load the teacher, fit the reducers, fill the feature store.

An algorithm declares :class:`~semanticfl.teachers.base.FeatureRequest` s; :class:`TeacherTargets` turns
each into a feature-store entry over the client pool (every training sample some client holds) and
hands each client a reader of its own rows. A sample's features depend only on the sample, the
teacher, the request and the seed, so one extraction over the pool equals every client extracting its
own data (FedDifRC's deployment), without running the teacher once per client process.

The per-layer PCA of a request is fitted once on the server's public split (``data.server_holdout``),
never on client data, and cached beside the features. The engine calls this module with plain inputs
(:class:`TeacherInputs`, the requests, sample indices); nothing here knows the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from semanticfl.config import TeacherConfig
from semanticfl.data.datasets import ImageDataset, images_to_tensor
from semanticfl.data.transforms import BatchTransform
from semanticfl.errors import UserError
from semanticfl.teachers.base import AnchorRequest, ExtractionSettings, FeatureRequest, resolve_layer_names
from semanticfl.teachers.diffusion import DiffusionTeacher
from semanticfl.teachers.loading import load_teacher, prebuilt_entries
from semanticfl.teachers.reduction import FeatureReducer
from semanticfl.teachers.store import CachedFeatures, FeatureStore, store_key

log = logging.getLogger(__name__)

FUSED = "fused"
NOISED = ".noised"
"""Suffix of a request's noised latents on the wire (SemanticFL ``offload``)."""

TargetReader = Callable[[np.ndarray], dict[str, torch.Tensor]]
"""Local row positions → per-sample targets for those rows."""
ConditionedExtractor = Callable[[str, nn.Module], torch.Tensor]
"""(request name, client model) → model-conditioned teacher features of every local sample."""


@dataclass(frozen=True)
class TeacherInputs:
    """What the teacher side is given of an experiment: its ``[teacher]`` section and plain data."""

    config: TeacherConfig
    dataset: ImageDataset
    client_pool: np.ndarray
    """Sorted training-set indices the clients share out."""
    public: np.ndarray
    """The server's public split (``data.server_holdout``), withheld from every client."""
    public_seed: int
    """``data.holdout_seed``: seeds every choice among the public samples."""
    device: str = "cpu"


def with_settings(teacher: DiffusionTeacher, settings: ExtractionSettings) -> DiffusionTeacher:
    """The same frozen components under other extraction settings."""
    return DiffusionTeacher(
        teacher.codec,
        teacher.text,
        teacher.unet,
        teacher.scheduler,
        settings,
        teacher.fingerprint,
        device=str(teacher.device),
    )


@torch.no_grad()
def encode_samples(
    model: nn.Module, images: torch.Tensor, transform: BatchTransform, batch_size: int
) -> torch.Tensor:
    """The model's features (``model(x)[0]``) of uint8 ``images``, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        parts = [
            model(transform(images[start : start + batch_size]).to(device))[0].cpu()
            for start in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def resolve_layers(request: FeatureRequest, num_up_blocks: int) -> tuple[str, ...]:
    """``up-k`` → ``up{num_up_blocks − k}``; checks every index exists."""
    return resolve_layer_names(request.layers, num_up_blocks, request.name)


class RequestExtractor:
    """One request on one teacher: raw multi-layer features → reduced, fused vectors."""

    def __init__(self, teacher: DiffusionTeacher, request: FeatureRequest) -> None:
        self.request = request
        self.layers = resolve_layers(request, len(teacher.unet.up_blocks))
        ups = tuple(sorted({int(name[2:]) for name in self.layers if name != "latent"})) or (0,)
        settings = dataclasses.replace(teacher.settings, timestep=request.timestep, up_blocks=ups)
        self.teacher = with_settings(teacher, settings)
        self.check_dims()
        self.reducer = FeatureReducer(dict(zip(self.layers, request.layer_dims)), mode=request.reduction)

    def check_dims(self) -> None:
        """Each layer's PCA keeps at most as many dims as the layer has channels."""
        shapes = self.teacher.feature_shapes()
        channels = [shapes[name][0] for name in self.layers]
        if any(k > c for k, c in zip(self.request.layer_dims, channels)):
            algorithm = self.request.name.split(".")[0]
            raise UserError(
                f"layer_dims {list(self.request.layer_dims)} exceed the channels {channels} of the teacher's "
                f"layers {list(self.request.layers)}; set algorithm.{algorithm}.layer_dims to at most "
                f"{channels}"
            )

    def description(self) -> dict:
        """Everything the extracted values depend on besides the data and the reducer's fit."""
        return {
            "teacher": self.teacher.fingerprint,
            "dtype": str(self.teacher.dtype),
            "settings": dataclasses.asdict(self.teacher.settings),
            "layers": list(self.layers),
            "layer_dims": list(self.request.layer_dims),
            "prompts": list(self.request.prompts),
            "reduction": self.request.reduction,
        }

    def raw(self, images: torch.Tensor, ids: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-image features with one prompt each (``prompts`` of length 1 or N)."""
        return self.teacher.features(images, ids, prompts)

    def fit(self, images: torch.Tensor, ids: torch.Tensor, chunk: int) -> None:
        """Fit the PCAs on public images, cycling through the request's prompts."""
        prompts = list(self.request.prompts)

        def batches():
            for start in range(0, len(ids), chunk):
                rows = slice(start, start + chunk)
                cycled = [prompts[int(i) % len(prompts)] for i in range(start, start + len(ids[rows]))]
                yield self.raw(images[rows], ids[rows], cycled if len(prompts) > 1 else prompts)

        self.reducer.fit_batches(batches(), fitted_on=f"{len(ids)} public samples")

    def fused(
        self, images: torch.Tensor, ids: torch.Tensor, condition: torch.Tensor | None = None
    ) -> np.ndarray:
        """N×D (one prompt) or N×P×D (several) unit vectors, float16; with ``condition`` (N×D_client
        sample encodings) each image's encoding is injected beside every prompt."""
        prompts = list(self.request.prompts)
        if len(prompts) == 1 and condition is None:
            out = self.reducer.transform(self.raw(images, ids, prompts))[FUSED]
        else:
            tokens = None if condition is None else self.teacher.condition_tokens(condition)
            per_prompt = self.teacher.features_per_prompt(images, ids, prompts, tokens)
            n, p = len(ids), len(prompts)
            flat = {k: v.flatten(0, 1) for k, v in per_prompt.items()}
            if "latent" in self.layers:
                latent = self.teacher.latents(images, ids).float().cpu()
                flat["latent"] = latent.repeat_interleave(p, dim=0)
            out = self.reducer.transform(flat)[FUSED].unflatten(0, (n, p))
            out = out[:, 0] if p == 1 else out
        return out.numpy().astype(np.float16)

    def fused_of_noised(self, noised: torch.Tensor) -> np.ndarray:
        """N×D float16 unit vectors from a client's noised latents (D×N×C×h×w), the request's one prompt."""
        raw = self.teacher.features_of_noised(noised, self.request.prompts[0])
        return self.reducer.transform(raw)[FUSED].numpy().astype(np.float16)


class TeacherTargets:
    """The teacher's answers to an algorithm's requests, cached in the feature store."""

    def __init__(self, inputs: TeacherInputs, progress: bool = False) -> None:
        self.inputs = inputs
        self.config = inputs.config
        self.progress = progress
        self.store = FeatureStore(self.config.cache_dir or None, prebuilt_entries(self.config, inputs.dataset.name))
        self._pool: dict[str, CachedFeatures] = {}

    @cached_property
    def teacher(self) -> DiffusionTeacher:
        i = self.inputs
        return load_teacher(self.config, i.dataset.name, i.dataset.train_labels, i.client_pool, i.device)

    @cached_property
    def dataset_digest(self) -> str:
        """sha256 of the training images and labels: features are tied to these exact pixels."""
        ds = self.inputs.dataset
        digest = hashlib.sha256(ds.name.encode())
        images = np.asarray(ds.train_images).reshape(len(ds.train_labels), -1)
        for start in range(0, len(images), 4096):
            digest.update(np.ascontiguousarray(images[start : start + 4096]).tobytes())
        digest.update(np.ascontiguousarray(ds.train_labels, dtype="<i8").tobytes())
        return digest.hexdigest()

    def train_images(self, indices: np.ndarray) -> torch.Tensor:
        return images_to_tensor(self.inputs.dataset.train_images, indices)

    def public_fit_indices(self) -> np.ndarray:
        """A seeded subset of the server's public split, the PCA's fit set."""
        public = self.inputs.public
        if len(public) == 0:
            raise UserError(
                "teacher features need a server-side public split to fit their PCA on; set "
                "data.server_holdout (e.g. 10000, the split the shipped offline teachers were trained on)"
            )
        count = min(self.config.fit_samples, len(public))
        rng = np.random.default_rng(self.inputs.public_seed)
        return np.sort(rng.choice(public, size=count, replace=False))

    def extractor(self, request: FeatureRequest) -> RequestExtractor:
        """The request's extractor with its reducer fitted (or loaded from the store)."""
        extractor = RequestExtractor(self.teacher, request)
        fit_ids = self.public_fit_indices()
        key = store_key({"reducer": extractor.description(), "data": self.dataset_digest, "fit": fit_ids})
        path = self.store.root / "reducers" / f"{key}.safetensors"
        if path.is_file():
            extractor.reducer = FeatureReducer.load(path, extractor.reducer.layer_dims, request.reduction)
            return extractor
        started = time.perf_counter()
        extractor.fit(self.train_images(fit_ids), torch.from_numpy(fit_ids), self.config.batch_size)
        extractor.reducer.save(path)
        log.info(
            "fitted the PCA of %s on %d public samples in %.1f s",
            request.name,
            len(fit_ids),
            time.perf_counter() - started,
        )
        return extractor

    # ------------------------------------------------------------------ per-sample features

    def entry(self, request: FeatureRequest, indices: np.ndarray) -> CachedFeatures:
        """The request's features of ``indices`` (sorted training-set indices), built if missing."""
        extractor = self.extractor(request)
        key = store_key(
            {
                "request": extractor.description(),
                "reducer": extractor.reducer.fingerprint(),
                "data": self.dataset_digest,
                "indices": indices,
            }
        )

        def compute(rows: slice) -> dict[str, np.ndarray]:
            ids = indices[rows]
            return {FUSED: extractor.fused(self.train_images(ids), torch.from_numpy(ids))}

        return self.store.build(
            key,
            {FUSED: (request.per_sample_shape(), np.float16)},
            len(indices),
            compute,
            chunk=max(64, 8 * self.config.batch_size),
            progress=self.progress,
        )

    def pool_entries(self, requests: tuple[FeatureRequest, ...]) -> dict[str, CachedFeatures]:
        """Every cached request's entry over the whole client pool, opened (or built) once per process."""
        for request in requests:
            if not request.conditioned and request.name not in self._pool:
                self._pool[request.name] = self.entry(request, self.inputs.client_pool)
        return {r.name: self._pool[r.name] for r in requests if not r.conditioned}

    def reader(self, requests: tuple[FeatureRequest, ...], indices: np.ndarray) -> TargetReader:
        """Local rows of a client holding ``indices`` → its per-sample targets, read from the pool entries."""
        entries = self.pool_entries(requests)
        positions = np.searchsorted(self.inputs.client_pool, indices)

        def read(rows: np.ndarray) -> dict[str, torch.Tensor]:
            at = positions[rows]
            return {name: torch.from_numpy(entry.take(FUSED, at)) for name, entry in entries.items()}

        return read

    def conditioned_extractor(
        self, requests: tuple[FeatureRequest, ...], indices: np.ndarray, transform: BatchTransform
    ) -> ConditionedExtractor:
        """For a client holding ``indices``: (request, model) → features of its samples with the
        model's encoding of each sample (its ``transform``-ed view) injected; runs the teacher here."""
        extractors = {r.name: self.extractor(r) for r in requests if r.conditioned}
        images, ids = self.train_images(indices), torch.from_numpy(indices)

        def extract(name: str, model: nn.Module) -> torch.Tensor:
            encodings = encode_samples(model, images, transform, self.config.batch_size)
            return torch.from_numpy(extractors[name].fused(images, ids, condition=encodings))

        return extract

    # ------------------------------------------------------------------ offload (SemanticFL)

    def noised_latents(
        self, requests: tuple[FeatureRequest, ...], indices: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The client half of the offload: per request, its samples' latents noised to the request's
        timestep (D×N×C×h×w float16). Only the VAE encoder runs; no PCA is needed."""
        images, ids = self.train_images(indices), torch.from_numpy(indices)
        return {
            request.name + NOISED: RequestExtractor(self.teacher, request)
            .teacher.noised_latents(images, ids)
            .half()
            .numpy()
            for request in requests
        }

    def features_of_noised(
        self, requests: tuple[FeatureRequest, ...], noised: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The server half of the offload: a client's noised latents → its per-sample fused features."""
        return {
            request.name: self.extractor(request).fused_of_noised(
                torch.from_numpy(noised[request.name + NOISED]).float()
            )
            for request in requests
        }

    # ------------------------------------------------------------------ server-side anchors

    def anchors(self, requests: tuple[AnchorRequest, ...]) -> dict[str, np.ndarray]:
        """Every :class:`AnchorRequest`, computed once on the server (cached)."""
        return {request.name: self.anchor(request) for request in requests}

    def anchor(self, request: AnchorRequest) -> np.ndarray:
        """P×D class anchors (or P×d_text text embeddings) for the request's P prompts."""
        prompts = list(request.features.prompts)
        if request.text:
            return self.teacher.text_embeddings(prompts).numpy().astype(np.float32)
        extractor = self.extractor(request.features)
        public = self.public_class_samples(request.public_per_class, len(prompts))
        key = store_key(
            {
                "anchors": extractor.description(),
                "reducer": extractor.reducer.fingerprint(),
                "data": self.dataset_digest,
                "public": public,
            }
        )

        def compute(rows: slice) -> dict[str, np.ndarray]:
            classes = range(len(prompts))[rows]
            return {FUSED: np.stack([self.class_anchor(extractor, c, public) for c in classes])}

        entry = self.store.build(key, {FUSED: ((extractor.reducer.dim,), np.float32)}, len(prompts), compute)
        return np.asarray(entry.arrays[FUSED])

    def public_class_samples(self, per_class: int, num_classes: int) -> np.ndarray:
        """C×k public-split indices (the first k of each class in a seeded order); C×0 if k = 0."""
        if per_class == 0:
            return np.zeros((num_classes, 0), dtype=np.int64)
        public = self.inputs.public
        labels = np.asarray(self.inputs.dataset.train_labels)[public]
        order = np.random.default_rng(self.inputs.public_seed).permutation(len(public))
        rows = []
        for c in range(num_classes):
            members = public[order[labels[order] == c]][:per_class]
            if len(members) < per_class:
                raise UserError(
                    f"{per_class} public samples of class {c} are needed but the server's public split has "
                    f"{len(members)}; raise data.server_holdout or ask for fewer per class"
                )
            rows.append(members)
        return np.stack(rows)

    def class_anchor(self, extractor: RequestExtractor, c: int, public: np.ndarray) -> np.ndarray:
        """Mean fused feature of class ``c``'s public samples under prompt ``c`` (unit norm); with no
        public samples, of four uniform grey images under different noise (the prompt alone)."""
        prompt = [extractor.request.prompts[c]]
        if public.shape[1]:
            ids = public[c]
            images = self.train_images(ids)
        else:
            ids = np.arange(4)
            size = self.config.resolution
            images = torch.full((len(ids), 3, size, size), 128, dtype=torch.uint8)
        raw = extractor.raw(images, torch.from_numpy(ids), prompt)
        mean = extractor.reducer.transform(raw)[FUSED].mean(dim=0)
        return torch.nn.functional.normalize(mean, dim=0).numpy()
