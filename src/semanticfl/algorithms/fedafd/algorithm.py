"""FedAFD's algorithm: its checks, data and models, the client round and the server's SED and
distillation (see the package docstring for the method)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from semanticfl.algorithms.base import (
    AlgorithmSetup,
    Arrays,
    ClientTask,
    ClientUpdate,
    ExperimentView,
    LocalSettings,
    OwnsModelsAndData,
    load_arrays,
)
from semanticfl.algorithms.fedafd.client import OPTIMIZER_STATE, AdversarialAlignment, LocalModel, LocalTask
from semanticfl.algorithms.fedafd.optim import (
    AdamP,
    decayed_lr,
    load_optimizer_arrays,
    optimizer_arrays,
    without,
)
from semanticfl.algorithms.fedafd.params import FedAFDParams
from semanticfl.algorithms.fedafd.parts import creamfl_weights, distillation_loss, ensemble, sed_weights
from semanticfl.algorithms.multimodal import (
    MultimodalClientData,
    batches,
    class_level_info_nce,
    encode,
    pair_recalls,
    parse_client_spec,
)
from semanticfl.config import Config
from semanticfl.data.multimodal import MultimodalBenchmark, class_level_benchmark, split_class_text
from semanticfl.data.paper_sets import (
    PaperSets,
    load_ag_news,
    load_coco_captions,
    load_flickr30k,
    paper_benchmark,
)
from semanticfl.data.wordnet import CLASS_SYNSETS, class_sentences
from semanticfl.errors import UserError
from semanticfl.models import state_to_numpy
from semanticfl.models.multimodal import ImageTextModel, build_image_encoder, build_text_encoder
from semanticfl.seeding import Stream, derive_seed32

PAPER_PATHS = {
    "ag_news_train": ("file", "AG_NEWS train.csv"),
    "ag_news_test": ("file", "AG_NEWS test.csv"),
    "flickr30k_images": ("folder", "the Flickr30k images folder"),
    "flickr30k_captions": ("file", "Flickr30k's results_20130124.token or captions csv"),
    "coco_images": ("folder", "the COCO images folder, e.g. train2017"),
    "coco_annotations": ("file", "COCO's captions json, e.g. captions_train2017.json"),
}
"""The paper benchmark's path parameters: what each must be and hold."""
_DISTILL_STATE = "distill_optimizer."
_DIAGNOSTICS = ("baa_grad_norm", "task_grad_norm")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FedAFDRunSettings:
    """What FedAFD reads of the experiment's config, read once in :meth:`FedAFD.bind` (the rest of
    the config is never kept)."""

    dataset: str
    """``data.dataset``: whose classes' sentences the class-level benchmark pairs."""
    seed: int
    """``experiment.seed``: the benchmark's draws (sentence splits, pairing, test subsets)."""
    train_fraction: float
    """``data.train_fraction``: the share of each client set the paper benchmark keeps."""
    rounds: int
    """``train.rounds``: where the encoder lr decays (``lr_decay_at`` fractions of it)."""
    device: str
    """``engine.device``: where the server model trains and is evaluated."""
    server: LocalSettings
    """The server's training on the public pairs: ``server_epochs`` at ``[train]``'s batch size, lr,
    momentum and weight decay, on ``device`` -- what :meth:`FedAFD.make_optimizer` builds its SGD
    from."""

    @classmethod
    def from_config(cls, config: Config, server_epochs: int) -> FedAFDRunSettings:
        t, device = config.train, config.engine.device
        return cls(
            dataset=config.data.dataset,
            seed=config.experiment.seed,
            train_fraction=config.data.train_fraction,
            rounds=t.rounds,
            device=device,
            server=LocalSettings(server_epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, device),
        )


# --------------------------------------------------------------------------- paths


def check_path(name: str, value: str, kind: str, what: str) -> None:
    """A one-line ``UserError`` unless ``algorithm.fedafd.<name>`` names an existing ``kind``
    ("file" or "folder")."""
    if not value.strip():
        raise UserError(f"algorithm.fedafd.benchmark=paper needs {what}: set algorithm.fedafd.{name}=<path>")
    path = Path(value).expanduser()
    exists = path.is_file() if kind == "file" else path.is_dir()
    if not exists:
        if path.is_dir():
            found = "is a folder, not a file"
        else:
            found = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"algorithm.fedafd.{name}={value!r} {found} (expected {what})")


class FedAFD(OwnsModelsAndData):
    """FedAFD on the class-level image-text benchmark or the paper's sets; see the package docstring.

    Its clients hold image, text or image-text models around an image-text server model, so it
    builds the models and the client data itself (:class:`OwnsModelsAndData`).

    Every SGD of ``[train]``'s settings -- the server's retrieval epochs (and a separate distillation
    pass with ``distill_optimizer = "train"``), a client's encoders in BAA and in its task, and its
    discriminators with ``discriminator_optimizer = "sgd"`` -- is built by :meth:`make_optimizer`
    from a :class:`LocalSettings`. Three optimisers are not, since the public code specifies other
    optimisers with their own hyperparameters: the discriminators' Adam (``discriminator_lr``), the
    GFF gates' Adam (``gff_lr`` / ``gff_weight_decay``) and the distillation pass's AdamP
    (``distill_lr``); see docs/ALGORITHMS.md."""

    name = "fedafd"
    Params = FedAFDParams
    uploads = ("public image features", "public text features")

    def __init__(self, params: FedAFDParams, setup: AlgorithmSetup) -> None:
        super().__init__(params, setup)
        self.distill_state: Arrays = {}
        """The separate distillation pass's AdamP state (server state, in every checkpoint)."""

    def bind(self, experiment: ExperimentView) -> None:
        """Check the config, parse the client layout and read the settings FedAFD needs into
        :attr:`run`; ``experiment`` is kept for its data (dataset, partitions, transforms), built
        lazily on first use, and its config is not read again."""
        p, config = self.params, experiment.config
        if p.benchmark == "paper":
            self._check_paper_settings(config)
        else:
            self._check_class_level_settings(config)
        if len(p.clients) != config.partition.num_clients:
            raise UserError(f"algorithm.fedafd.clients lists {len(p.clients)} clients but partition.num_clients is {config.partition.num_clients}")
        if config.eval.federated:
            raise UserError("fedafd evaluates every client on its own task each round; set eval.federated=false")
        self.specs = [parse_client_spec(entry, f"algorithm.fedafd.clients[{i}]") for i, entry in enumerate(p.clients)]
        parse_client_spec(f"image:{p.server_image}", "algorithm.fedafd.server_image")
        parse_client_spec(f"text:{p.server_text}", "algorithm.fedafd.server_text")
        self.run = FedAFDRunSettings.from_config(config, p.server_epochs)
        self.experiment = experiment

    @staticmethod
    def _check_class_level_settings(config: Config) -> None:
        if config.data.dataset not in CLASS_SYNSETS:
            raise UserError(
                f"fedafd runs on the class-level image-text benchmark of: {', '.join(CLASS_SYNSETS)} "
                "(or set algorithm.fedafd.benchmark=paper with data.dataset=cifar100); "
                f"got data.dataset={config.data.dataset!r}"
            )
        if config.data.server_holdout <= 0:
            raise UserError("fedafd needs a public paired set: set data.server_holdout > 0 (public images)")

    def _check_paper_settings(self, config: Config) -> None:
        """The paper benchmark's dataset, split sizes and paths, before anything is loaded."""
        p = self.params
        if config.data.dataset != "cifar100":
            raise UserError(
                "algorithm.fedafd.benchmark=paper has CIFAR-100 image clients: set data.dataset=cifar100 "
                f"(and data.root=<folder with cifar-100-python/>); got data.dataset={config.data.dataset!r}"
            )
        for name, (kind, what) in PAPER_PATHS.items():
            check_path(name, getattr(p, name), kind, what)

    @cached_property
    def benchmark(self) -> MultimodalBenchmark:
        """The clients', public and test data of the chosen ``benchmark`` (built once, on first use)."""
        return self._paper_benchmark() if self.params.benchmark == "paper" else self._class_level_benchmark()

    def _class_level_benchmark(self) -> MultimodalBenchmark:
        e, p, run = self.experiment, self.params, self.run
        text = split_class_text(
            class_sentences(run.dataset, tuple(e.dataset.classes)),
            p.text_public_fraction, p.text_test_fraction, p.max_sentences_per_class, run.seed,
        )
        return class_level_benchmark(
            e.dataset, e.partitions, e.holdout_indices, [s.kind for s in self.specs], text,
            seed=run.seed, test_size=p.test_size, max_vocabulary=p.max_vocabulary,
        )

    def _paper_benchmark(self) -> MultimodalBenchmark:
        """CIFAR-100 (the experiment's dataset), AG_NEWS, Flickr30k and COCO from the path
        parameters; see :func:`~semanticfl.data.paper_sets.paper_benchmark` for the splits."""
        e, p = self.experiment, self.params
        size = e.dataset.image_size
        sets = PaperSets(
            cifar100=e.dataset,
            ag_news_train=load_ag_news(p.ag_news_train),
            ag_news_test=load_ag_news(p.ag_news_test),
            flickr30k=load_flickr30k(p.flickr30k_images, p.flickr30k_captions, size=size),
            coco=load_coco_captions(
                p.coco_images, p.coco_annotations, size=size, limit=p.public_pairs + p.server_test_images
            ),
        )
        return paper_benchmark(
            sets, [s.kind for s in self.specs], e.partition_spec,
            public_pairs=p.public_pairs,
            server_test_images=p.server_test_images,
            flickr_test_images=p.flickr_test_images,
            seed=self.run.seed, train_fraction=self.run.train_fraction, test_size=p.test_size,
            max_vocabulary=p.max_vocabulary,
        )

    # ------------------------------------------------------------------ models and data

    def _image_shape(self) -> tuple[int, int]:
        return self.experiment.dataset.in_channels, self.experiment.dataset.image_size

    def global_model(self) -> nn.Module:
        p = self.params
        return ImageTextModel(
            build_image_encoder(p.server_image, *self._image_shape(), p.feature_dim),
            build_text_encoder(p.server_text, self.benchmark.tokenizer, p.feature_dim),
        )

    def local_model(self, partition_id: int) -> LocalModel:
        """Client ``partition_id``'s fresh model, initialised from (seed, client) only."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed32(self.setup.seed, partition_id, Stream.FEDAFD_CLIENT_INIT))
            spec = self.specs[partition_id]
            return LocalModel(spec, self.params, self.benchmark.num_classes.get(spec.kind, 0),
                              self.benchmark.tokenizer, self._image_shape())

    def client_data(self, partition_id: int) -> MultimodalClientData:
        b, spec = self.benchmark, self.specs[partition_id]
        test = {"image": b.test_images, "text": b.test_text, "pair": b.test_pairs}[spec.kind]
        return MultimodalClientData(partition_id, spec, b.clients[partition_id], b.public, test,
                                    self.experiment.train_transform(), self.experiment.eval_transform())

    # ------------------------------------------------------------------ client half

    def local_train(
        self,
        model: nn.Module,
        data: MultimodalClientData,
        task: ClientTask,
        settings: LocalSettings,
        generator: torch.Generator,
    ) -> ClientUpdate:
        """BAA on the public set (``baa_epochs`` passes at the start of the round, or before each local
        epoch with ``baa_every_epoch``) and ``train.local_epochs`` of the local task with GFF; uploads
        public features only.

        ``model`` is the global image-text model (used frozen); the client's own model, and the
        optimiser state it keeps, live in ``task.state`` between rounds.
        """
        p, kind = self.params, self.specs[data.partition_id].kind
        local = self.local_model(data.partition_id).to(settings.device)
        if task.state:
            load_arrays(local, without(task.state, OPTIMIZER_STATE))
        if p.gff_fresh_each_round:
            local.reset_gates(derive_seed32(self.setup.seed, data.partition_id, task.round, Stream.FEDAFD_GATES))
        global_model = model.eval().requires_grad_(False)
        encoder_settings = self.encoder_settings(settings, task.round, kind)
        baa = (AdversarialAlignment(local, p, kind, task.payload, settings, encoder_settings, task.state,
                                    make_optimizer=self.make_optimizer)
               if p.collaborate and p.baa else None)
        local_task = LocalTask(local, p, kind, encoder_settings, make_optimizer=self.make_optimizer)
        for epoch in range(settings.epochs):
            if baa is not None and (p.baa_every_epoch or epoch == 0):
                for _ in range(p.baa_epochs):
                    baa.run_pass(data, settings.batch_size, generator)
            local_task.run_epoch(global_model, data, generator)
        metrics = {**(baa.metrics() if baa is not None else {"baa_loss": 0.0}), **local_task.metrics()}
        metrics.update(self.client_test(local, global_model, data, settings))
        extra = self.public_features(local, data, settings) if p.collaborate else {}
        task.state.clear()
        task.state.update(state_to_numpy(local))
        task.state.update(baa.state() if baa is not None else {})
        return ClientUpdate(arrays={}, num_examples=len(data), metrics=metrics, extra=extra)

    def encoder_settings(self, settings: LocalSettings, round_number: int, kind: str) -> LocalSettings:
        """The round's settings for the encoders: ``train.lr`` decayed at ``lr_decay_at`` for image and
        text clients (:func:`~semanticfl.algorithms.fedafd.optim.decayed_lr`); image-text clients keep
        it, as the code's never step their scheduler."""
        if kind == "pair":
            return settings
        p = self.params
        lr = decayed_lr(settings.lr, round_number, self.run.rounds, p.lr_decay_at, p.lr_decay_factor)
        return dataclasses.replace(settings, lr=lr)

    @torch.no_grad()
    def client_test(
        self, local: LocalModel, global_model: ImageTextModel, data: MultimodalClientData, settings: LocalSettings
    ) -> dict[str, float]:
        """The client's own task on its test set: top-1 (%) or class-level R@K and rsum."""
        local.eval()
        features: dict[str, list[Tensor]] = {}
        for batch in batches(data.test, 500, None):
            for modality, feature in local.task_features(global_model, batch.to(settings.device), data.eval_transform).items():
                features.setdefault(modality, []).append(feature)
        joined = {m: torch.cat(f) for m, f in features.items()}
        labels = data.test.labels.to(settings.device)
        if local.head is not None:
            logits = local.head(next(iter(joined.values())))
            return {"test_top1": 100.0 * (logits.argmax(1) == labels).float().mean().item()}
        recalls = pair_recalls(joined["image"], joined["text"], labels, self.benchmark.relevance)
        return {f"test_{k}": v for k, v in recalls.items()}

    @torch.no_grad()
    def public_features(self, local: LocalModel, data: MultimodalClientData, settings: LocalSettings) -> Arrays:
        """What the client uploads: its local encoders' features of every public sample (float32)."""
        out = {}
        transform = lambda x: data.eval_transform(x, None).to(settings.device)
        if local.image_encoder is not None:
            out["public_image"] = encode(local.image_encoder, data.public.images, 500, transform).cpu().numpy()
        if local.text_encoder is not None:
            tokens = data.public.tokens.to(settings.device)
            out["public_text"] = encode(local.text_encoder, tokens, 500).cpu().numpy()
        return {k: v.astype(np.float32) for k, v in out.items()}

    # ------------------------------------------------------------------ server half

    def _server_model(self, global_arrays: Arrays) -> ImageTextModel:
        model = self.global_model()
        load_arrays(model, global_arrays)
        return model.to(self.run.device)

    def global_public_features(self, model: ImageTextModel) -> dict[str, Tensor]:
        """``i_g, t_g``: the global model's features of the public set (P×d each)."""
        public, device = self.benchmark.public, self.run.device
        transform = self.experiment.eval_transform()
        return {
            "image": encode(model.image, public.images, 500, lambda x: transform(x, None).to(device)),
            "text": encode(model.text, public.tokens.to(device), 500),
        }

    def server_payload(self, global_arrays: Arrays, round_number: int) -> Arrays:
        if not self.params.collaborate:
            return {}
        features = self.global_public_features(self._server_model(global_arrays))
        return {f"public_{m}": f.cpu().numpy().astype(np.float32) for m, f in features.items()}

    def teacher_features(self, global_features: dict[str, Tensor], updates: Sequence[ClientUpdate]) -> dict[str, Tensor]:
        """Per modality, the ensemble of the clients' public features (SED, mean or CreamFL-style)."""
        p, other = self.params, {"image": "text", "text": "image"}
        teachers = {}
        for modality in ("image", "text"):
            uploaded = [torch.from_numpy(u.extra[f"public_{modality}"]) for u in updates if f"public_{modality}" in u.extra]
            if not uploaded:
                continue
            stacked = torch.stack(uploaded).to(global_features[modality].device)
            if p.aggregation == "sed":
                weights = sed_weights(stacked, global_features[modality], p.sed_temperature)
            elif p.aggregation == "creamfl":
                weights = creamfl_weights(stacked, global_features[other[modality]], p.sed_temperature)
            else:
                weights = torch.full(stacked.shape[:2], 1.0 / len(uploaded), device=stacked.device)
            teachers[modality] = ensemble(stacked, weights)
        return teachers

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """SED on the uploaded public features; then ``server_epochs`` on the public pairs with the
        retrieval loss ``+ γ Σ_m MSE(f_m, m_agg)`` (``distill_pass = "joint"``), or first one
        distillation pass on ``γ Σ_m MSE(f_m, m_agg)`` alone and then the retrieval epochs
        (``"separate"``, the code's ``MMFL.distill``)."""
        p = self.params
        model = self._server_model(global_arrays)
        teachers = self.teacher_features(self.global_public_features(model), updates) if p.collaborate else {}
        generator = torch.Generator().manual_seed(derive_seed32(self.setup.seed, round_number, Stream.FEDAFD_SERVER))
        model.train()
        if p.distill_pass == "separate" and teachers:
            self.distill(model, teachers, generator)
        self.retrieval_epochs(model, teachers if p.distill_pass == "joint" else {}, generator)
        return state_to_numpy(model)

    def _public_batches(self, model: ImageTextModel, generator: torch.Generator):
        """One shuffled pass over the public pairs: (rows, labels, the server model's features)."""
        public, settings = self.benchmark.public, self.run.server
        transform = self.experiment.train_transform()
        order = torch.randperm(len(public), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = public.rows(index).to(settings.device)
            features = {"image": model.image(transform(batch.images, generator)), "text": model.text(batch.tokens)}
            yield index.to(settings.device), batch.labels, features

    def _distillation(self, features: dict[str, Tensor], teachers: dict[str, Tensor], rows: Tensor) -> Tensor:
        """``γ Σ_m MSE(f_m, m_agg)`` on a batch, with ``distill_mse``'s reduction."""
        p = self.params
        return sum(p.gamma * distillation_loss(features[m], target[rows], p.distill_mse) for m, target in teachers.items())

    def retrieval_epochs(self, model: ImageTextModel, teachers: dict[str, Tensor], generator: torch.Generator) -> None:
        """``server_epochs`` of the retrieval loss (+ the distillation term when ``teachers`` are given),
        by the shared SGD of ``[train]`` (:meth:`Algorithm.make_optimizer` of :attr:`FedAFDRunSettings.server`)."""
        optimizer = self.make_optimizer(model, self.run.server)
        for _ in range(self.params.server_epochs):
            for rows, labels, features in self._public_batches(model, generator):
                loss = class_level_info_nce(features["image"], features["text"], labels, self.params.temperature)
                loss = loss + self._distillation(features, teachers, rows) if teachers else loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    def distill(self, model: ImageTextModel, teachers: dict[str, Tensor], generator: torch.Generator) -> None:
        """One pass over the public set on the distillation loss alone, by ``distill_optimizer``, the
        gradient's norm clipped to ``distill_grad_clip`` (0: not clipped).

        ``"train"``: ``[train]``'s SGD by :meth:`Algorithm.make_optimizer`, fresh each round.
        ``"adamp"``: AdamP at ``distill_lr`` with its state kept across rounds (server state) -- the
        public code's server optimiser (AdamP 1e-5), not :meth:`make_optimizer`, which builds
        ``[train]``'s SGD: it is another optimiser with its own lr, as the code has it."""
        p = self.params
        if p.distill_optimizer == "adamp":
            optimizer: torch.optim.Optimizer = AdamP(model.parameters(), lr=p.distill_lr)
            load_optimizer_arrays(optimizer, self.distill_state, _DISTILL_STATE)
        else:
            optimizer = self.make_optimizer(model, self.run.server)
        for rows, _, features in self._public_batches(model, generator):
            loss = self._distillation(features, teachers, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.distill_grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), p.distill_grad_clip)
            optimizer.step()
        if p.distill_optimizer == "adamp":
            self.distill_state = optimizer_arrays(optimizer, _DISTILL_STATE)

    def server_state(self) -> Arrays:
        """AdamP's state of the separate distillation pass (empty otherwise), for exact resumes."""
        return dict(self.distill_state)

    def load_server_state(self, state: Arrays) -> None:
        self.distill_state = {k: v for k, v in state.items() if k.startswith(_DISTILL_STATE)}

    def central_evaluation(self, model: nn.Module) -> dict[str, Any]:
        """The server model's R@1/5/10 both ways and rsum on the server's test pairs (class-level,
        or per image in the paper benchmark)."""
        test, device = self.benchmark.server_test_pairs, self.run.device
        transform = self.experiment.eval_transform()
        image = encode(model.image, test.images, 500, lambda x: transform(x, None).to(device))
        text = encode(model.text, test.tokens.to(device), 500)
        labels = test.labels.to(device)
        recalls = pair_recalls(image, text, labels, self.benchmark.relevance)
        return {f"server_{k}": v for k, v in recalls.items()}

    def round_metrics(self, updates: Sequence[ClientUpdate]) -> dict[str, Any]:
        """Each client's test metrics, and per kind their means and those of the gradient diagnostics
        (``baa_grad_norm``, ``task_grad_norm``: the mean norm per step of each loss's gradient on the
        feature encoders)."""
        per_kind: dict[str, list[dict[str, float]]] = {}
        tests = {}
        for update in updates:
            kind = self.specs[update.client_id].kind
            result = {k[len("test_"):]: v for k, v in update.metrics.items() if k.startswith("test_")}
            diagnostics = {k: update.metrics[k] for k in _DIAGNOSTICS if k in update.metrics}
            per_kind.setdefault(kind, []).append({**result, **diagnostics})
            tests[str(update.client_id)] = {"kind": kind, **result}
        means = {
            f"client_{kind}_{key}": float(np.mean([r[key] for r in results]))
            for kind, results in per_kind.items()
            for key in results[0]
        }
        return {**means, "client_tests": tests}

    def summary(self, rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Final and best server rsum, rounds to ``target_rsum``, final client means per kind."""
        evaluated = [r for r in rounds if r.get("server_rsum") is not None]
        target = self.params.target_rsum
        last = rounds[-1] if rounds else {}
        return {
            "final_server_rsum": evaluated[-1]["server_rsum"] if evaluated else None,
            "best_server_rsum": max((r["server_rsum"] for r in evaluated), default=None),
            "target_rsum": target or None,
            "rounds_to_target_rsum": next((r["round"] for r in evaluated if target and r["server_rsum"] >= target), None),
            **{k: v for k, v in last.items() if k.startswith(("server_r", "client_image_", "client_text_", "client_pair_"))},
        }
