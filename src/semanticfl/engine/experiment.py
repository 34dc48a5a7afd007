"""An experiment's ingredients, built from its config the same way on server and clients.

Both halves of a run (server and every client, in whatever process or machine) build an
:class:`Experiment` from the same config text, so they agree on the dataset, the server's
holdout, every client's partition and the initial model without shipping any of it. Within
one process, :func:`experiment_for` caches it: a simulation actor decodes and partitions
once, then serves many virtual clients.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from semanticfl.algorithms import Algorithm, AlgorithmSetup, build_algorithm
from semanticfl.algorithms.base import Arrays, LocalData, LocalSettings, OwnsModelsAndData, TargetReader
from semanticfl.config import Config, config_from_dict
from semanticfl.data.cache import cache_root
from semanticfl.data.datasets import ImageDataset, images_to_tensor, load_image_dataset
from semanticfl.data.partition import PartitionSpec, partition_indices
from semanticfl.data.splits import stratified_holdout
from semanticfl.data.transforms import BatchTransform
from semanticfl.errors import UserError
from semanticfl.models import build_model
from semanticfl.seeding import Stream, derive_seed
from semanticfl.teachers.base import GuidanceSet
from semanticfl.teachers.guidance import guidance_set
from semanticfl.teachers.loading import teacher_shape
from semanticfl.teachers.targets import TeacherInputs, TeacherTargets


class Experiment:
    """Dataset, partitions, model factory and algorithm of one config."""

    def __init__(self, config: Config) -> None:
        self.config = config

    # ------------------------------------------------------------------ data

    @cached_property
    def dataset(self) -> ImageDataset:
        data = self.config.data
        return load_image_dataset(data.dataset, root=data.root or None, download=data.download)

    @cached_property
    def holdout_indices(self) -> np.ndarray:
        """Training samples withheld from every client (stratified, seeded)."""
        return stratified_holdout(
            self.dataset.train_labels, self.config.data.server_holdout, self.config.data.holdout_seed
        )

    @cached_property
    def client_pool(self) -> np.ndarray:
        """Indices of the training samples the clients share out (sorted)."""
        mask = np.ones(len(self.dataset.train_labels), dtype=bool)
        mask[self.holdout_indices] = False
        pool = np.flatnonzero(mask)
        fraction = self.config.data.train_fraction
        if fraction < 1:
            rng = np.random.default_rng(derive_seed(self.config.experiment.seed, Stream.TRAIN_FRACTION))
            keep = max(1, int(round(fraction * len(pool))))
            pool = np.sort(rng.choice(pool, size=keep, replace=False))
        return pool

    @cached_property
    def partition_spec(self) -> PartitionSpec:
        """The ``[partition]`` settings, seeded by the experiment seed."""
        return PartitionSpec(**dataclasses.asdict(self.config.partition), seed=self.config.experiment.seed)

    @cached_property
    def partitions(self) -> list[np.ndarray]:
        """Per client, indices into the full training set."""
        pool_labels = np.asarray(self.dataset.train_labels[self.client_pool])
        spec = self.partition_spec
        spec.validate(len(pool_labels), self.dataset.num_classes)
        parts = partition_indices(pool_labels, spec, self.dataset.num_classes, cache_root())
        empty = [i for i, part in enumerate(parts) if len(part) == 0]
        if empty:
            raise UserError(
                f"clients {empty[:5]} received no samples; use fewer clients or a larger "
                "partition.alpha / partition.min_partition_size"
            )
        return [self.client_pool[part] for part in parts]

    def train_transform(self) -> BatchTransform:
        return BatchTransform(self.dataset.spec, self.config.data.augment, self.config.engine.channels_last)

    def eval_transform(self) -> BatchTransform:
        return BatchTransform(self.dataset.spec, False, self.config.engine.channels_last)

    def client_data(
        self, partition_id: int, offloaded: Arrays | None = None, guidance: Arrays | None = None
    ) -> LocalData | Any:
        """Client ``partition_id``'s training data as in-memory tensors (or the algorithm's own form);
        ``offloaded``: the teacher features the server computed for it (``offload`` requests);
        ``guidance``: the guidance set the server sent (``guidance`` requests)."""
        self.check_partition_id(partition_id)
        if isinstance(self.algorithm, OwnsModelsAndData):
            return self.algorithm.client_data(partition_id)
        index = self.partitions[partition_id]
        requests = self.algorithm.teacher_requests()
        return LocalData(
            images=images_to_tensor(self.dataset.train_images, index),
            labels=torch.from_numpy(np.array(self.dataset.train_labels[index], dtype=np.int64)),
            transform=self.train_transform(),
            targets=self.target_reader(index, offloaded),
            conditioned_targets=(
                self.teacher_targets.conditioned_extractor(requests.features, index, self.eval_transform())
                if requests.conditioned
                else None
            ),
            guidance=self.received_guidance(guidance),
        )

    def target_reader(self, index: np.ndarray, offloaded: Arrays | None) -> TargetReader | None:
        """Per-sample teacher targets: from the feature store, or offloaded to the server."""
        requests = self.algorithm.teacher_requests()
        if requests.offload:
            return held_rows_reader(offloaded, "offloaded teacher features", "offload")
        return self.teacher_targets.reader(requests.features, index) if requests.features else None

    def received_guidance(self, guidance: Arrays | None) -> dict[str, GuidanceSet]:
        """The guidance sets the server sent this client, by request name."""
        requests = self.algorithm.teacher_requests().guidance
        if requests and not guidance:
            raise UserError(missing_exchange("guidance set", "guidance"))
        return {request.name: GuidanceSet.from_arrays(guidance, request.name) for request in requests}

    @cached_property
    def teacher_targets(self) -> TeacherTargets:
        """The teacher's answers to the algorithm's requests (feature store entries, anchors, ...)."""
        return TeacherTargets(
            TeacherInputs(
                config=self.config.teacher,
                dataset=self.dataset,
                client_pool=self.client_pool,
                public=self.holdout_indices,
                public_seed=self.config.data.holdout_seed,
                device=self.config.engine.device,
            )
        )

    @cached_property
    def guidance_arrays(self) -> Arrays:
        """Server side: every guidance set of the algorithm, built (or read from the cache) once."""
        arrays: Arrays = {}
        for request in self.algorithm.teacher_requests().guidance:
            arrays.update(guidance_set(self.teacher_targets, request).arrays(request.name))
        return arrays

    def check_partition_id(self, partition_id: int) -> None:
        n = self.config.partition.num_clients
        if not 0 <= partition_id < n:
            raise UserError(
                f"this node has partition-id {partition_id} but the experiment has {n} clients "
                f"(valid ids 0..{n - 1}); fix the SuperNode's --node-config"
            )

    @cached_property
    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            images_to_tensor(self.dataset.test_images),
            torch.from_numpy(np.array(self.dataset.test_labels, dtype=np.int64)),
        )

    @cached_property
    def validation_indices(self) -> np.ndarray:
        """The server split less the images of it that clients receive (a public guidance set), so that
        ``val_accuracy`` is measured on images no client trained on."""
        shared = [
            self.teacher_targets.public_class_samples(request.per_class, self.dataset.num_classes).reshape(-1)
            for request in self.algorithm.teacher_requests().guidance
            if request.source == "public"
        ]
        return np.setdiff1d(self.holdout_indices, np.concatenate(shared)) if shared else self.holdout_indices

    @cached_property
    def validation_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.validation_indices
        return (
            images_to_tensor(self.dataset.train_images, index),
            torch.from_numpy(np.array(self.dataset.train_labels[index], dtype=np.int64)),
        )

    # ------------------------------------------------------------------ model and algorithm

    @cached_property
    def algorithm(self) -> Algorithm:
        c = self.config
        setup = AlgorithmSetup(
            num_classes=self.dataset.num_classes,
            class_names=tuple(self.dataset.classes),
            num_clients=c.partition.num_clients,
            seed=c.experiment.seed,
            teacher_shape=lambda: teacher_shape(c.teacher, self.dataset.name),
        )
        algorithm = build_algorithm(c.algorithm.name, c.algorithm_params(), setup)
        if isinstance(algorithm, OwnsModelsAndData):
            algorithm.bind(self)
        return algorithm

    def build_model(self) -> nn.Module:
        """The client architecture (plus algorithm-owned modules), seeded: identical everywhere."""
        ds = self.dataset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.experiment.seed)
            if isinstance(self.algorithm, OwnsModelsAndData):
                model = self.algorithm.global_model()
            else:
                model = build_model(self.config.model.name, ds.num_classes, ds.in_channels, ds.image_size)
            model = self.algorithm.extend_model(model)
        engine = self.config.engine
        memory_format = torch.channels_last if engine.channels_last else torch.contiguous_format
        return model.to(engine.device, memory_format=memory_format)

    def local_settings(self) -> LocalSettings:
        t = self.config.train
        return LocalSettings(
            epochs=t.local_epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            device=self.config.engine.device,
            precision=self.config.engine.precision,
        )

    def client_generator(self, round_number: int, partition_id: int) -> torch.Generator:
        """The RNG of one client's local round: a function of (seed, round, client) only."""
        seed = derive_seed(self.config.experiment.seed, round_number, partition_id)
        return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=4)
def experiment_for(config_toml: str) -> Experiment:
    """The process-wide :class:`Experiment` of a config text (decoded and partitioned once)."""
    import tomllib

    return Experiment(config_from_dict(tomllib.loads(config_toml)))


def missing_exchange(what: str, exchange: str) -> str:
    return (
        f"this client holds no {what}: the server's {exchange} exchange did not reach it (see the server "
        "log); restart the run with --resume"
    )


def held_rows_reader(arrays: Arrays | None, what: str, exchange: str) -> TargetReader:
    """Local rows → the per-sample arrays the client holds in its node state."""
    if not arrays:
        raise UserError(missing_exchange(what, exchange))

    def read(rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(value[rows])) for name, value in arrays.items()}

    return read

