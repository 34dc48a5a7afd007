"""FedAFD (Ding et al., "FedAFD: Multimodal Federated Learning via Adversarial Fusion and
Distillation", CVPR 2026, arXiv 2603.04890).

Clients of three kinds -- image classification, text classification, image-text retrieval --
with their own architectures, all producing L2-normalised features of one dimension ``d``. The
server holds an image-text model trained on a public paired set. **No client parameters leave a
client**: a client uploads only its features of the public set. One round ``t``:

1. *Server → clients*: the global model (its image and text encoders, used frozen) and its
   features of the public set, ``i_g, t_g`` (P×d each) -- :meth:`FedAFD.server_payload`.
2. *Client* (:meth:`FedAFD.local_train`):

   * **BAA**, bi-level adversarial alignment, on the public set. An intra-modal discriminator
     ``D_in`` tells the global feature of a modality from the client's feature of the same
     modality; a cross-modal ``D_cr`` tells the global feature of the *other* modality from the
     client's. With ``D = σ(MLP 256→128→64→1)`` and ``k`` over the discriminators,
     ``L_adv = Σ_k [log D_k(g_k) + log(1 − D_k(f_k))]``; the discriminators ascend it
     (:func:`discriminator_loss` is its negative), the encoders descend ``β · Σ_k log(1 − D_k(f_k))``
     (:func:`encoder_adversarial_loss`), alternating one step each per public batch, β = 0.5.
   * **GFF**, granularity-aware feature fusion, in the local task: with ``i_c`` the local feature
     and ``i_g`` the frozen global encoder's feature of the same private input,
     ``M(x) = σ(T1(x) + T2(x))``, ``h = M(i_c + i_g) ⊙ i_c + (1 − M(i_c + i_g)) ⊙ i_g``,
     ``ĩ = M(h) ⊙ i_c + (1 − M(h)) ⊙ i_g`` (:class:`GranularityFusion`); ``ĩ`` feeds the classifier
     (cross-entropy) or, normalised, the retrieval loss.
   * Upload: the local encoders' features ``i_c,k`` / ``t_c,k`` of every public sample ``k``.
3. *Server* (:meth:`FedAFD.aggregate`): **SED**, similarity-guided ensemble distillation, per
   modality and public sample: ``s_ck = log softmax_j(sim(i_c,k, i_g,j) / τ_s)`` at ``j = k``,
   ``w_ck = softmax_c(s_ck)``, teacher ``i_agg,k = Σ_c w_ck i_c,k`` (:func:`sed_weights`); then one
   epoch on the public pairs minimising the retrieval loss ``+ γ · Σ_m ‖f_m,k − m_agg,k‖²``, γ = 0.4.

Switches for the paper's ablations and baselines (``[algorithm.fedafd]``): ``baa = false``
(no BAA), ``gff = false`` (the local feature alone), ``aggregation = "mean"`` (no SED: the plain
average of client features), ``aggregation = "creamfl"`` (CreamFL-style contrastive ensemble, see
:func:`creamfl_weights`), ``collaborate = false`` (LOCAL: clients train alone, the server on the
public set alone, nothing is exchanged but the engine's model broadcast, which clients ignore).

Data (``benchmark``): ``class_level`` is the offline class-level image-text benchmark (CIFAR-10 +
WordNet sentences, :func:`~semanticfl.data.multimodal.class_level_benchmark`); ``paper`` is the
paper's setup from user paths -- CIFAR-100 image clients, AG_NEWS text clients, Flickr30k image-text
clients, COCO public and server-test pairs (:func:`~semanticfl.data.multimodal.paper_benchmark`),
with image heads of 100 classes and text heads of 4, and retrieval relevance per image.

Deviations (see docs/ALGORITHMS.md): the paper's server uses a PCME loss (ResNet-101 + BERT) and its
image-text clients PCME; here both use a class-level symmetric InfoNCE
(:func:`~semanticfl.algorithms.multimodal.class_level_info_nce`), since the offline benchmark pairs
at class level. On the paper benchmark the labels are pair ids (one per image), so the same loss is
the ordinary image-text InfoNCE: the public set holds each image once (the identity target), and
in an image-text client's batch only captions of the same image are positives. "MSE" is the
per-sample squared distance (summed over the d dims). ``M`` is one gate applied twice, as the
formula writes it. BAA runs ``baa_epochs`` passes over the public set at the start of a round,
then ``train.local_epochs`` epochs of the local task. Client models, optimisers and
discriminators are re-created each round from the client's state (momentum is not kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import (
    Algorithm,
    Arrays,
    ClientTask,
    ClientUpdate,
    ExperimentView,
    LocalSettings,
    load_arrays,
)
from semanticfl.algorithms.multimodal import (
    ClientSpec,
    MultimodalClientData,
    batches,
    class_level_info_nce,
    encode,
    pair_recalls,
    parse_client_spec,
)
from semanticfl.data.multimodal import (
    ModalData,
    MultimodalBenchmark,
    PaperSets,
    WordTokenizer,
    class_level_benchmark,
    load_ag_news,
    load_coco_captions,
    load_flickr30k,
    paper_benchmark,
    split_class_text,
)
from semanticfl.data.wordnet import CLASS_SYNSETS, class_sentences
from semanticfl.errors import UserError
from semanticfl.models import state_to_numpy
from semanticfl.models.multimodal import ImageTextModel, build_image_encoder, build_text_encoder

AGGREGATIONS = ("sed", "mean", "creamfl")
BENCHMARKS = ("class_level", "paper")
PAPER_PATHS = {
    "ag_news_train": ("file", "AG_NEWS train.csv"),
    "ag_news_test": ("file", "AG_NEWS test.csv"),
    "flickr30k_images": ("folder", "the Flickr30k images folder"),
    "flickr30k_captions": ("file", "Flickr30k's results_20130124.token or captions csv"),
    "coco_images": ("folder", "the COCO images folder, e.g. train2017"),
    "coco_annotations": ("file", "COCO's captions json, e.g. captions_train2017.json"),
}
"""The paper benchmark's path parameters: what each must be and hold."""
_SERVER_STREAM = 2038074743  # the server's per-round RNG stream
_CLIENT_INIT_STREAM = 1000003  # a client's model initialisation


@dataclass
class FedAFDParams:
    clients: tuple[str, ...] = (
        "image:cnn", "image:cnn", "image:cnn",
        "text:gru", "text:gru", "text:gru",
        "pair:cnn+gru", "pair:cnn+gru", "pair:cnn+gru", "pair:cnn+gru",
    )
    """One entry per client (``partition.num_clients`` of them): the paper's 3 image, 3 text and 4
    image-text clients by default."""
    server_image: str = "cnn"
    server_text: str = "gru"
    feature_dim: int = 256
    beta: float = 0.5
    """BAA's weight on the encoders' adversarial loss."""
    adversarial_loss: str = "minimax"
    """BAA's encoder loss: ``minimax`` (the paper's log(1 − D)) or ``nonsaturating`` (−log D)."""
    gamma: float = 0.4
    """SED's distillation weight on the server."""
    sed_temperature: float = 1.0
    temperature: float = 0.07
    """Of the retrieval loss (clients and server)."""
    baa: bool = True
    gff: bool = True
    aggregation: str = "sed"
    collaborate: bool = True
    baa_epochs: int = 1
    server_epochs: int = 1
    text_public_fraction: float = 0.2
    text_test_fraction: float = 0.2
    max_sentences_per_class: int = 100
    test_size: int = 2000
    """Test images each client and the server are evaluated on (0 = the whole test split)."""
    target_rsum: float = 0.0
    """If > 0, the summary reports the first round whose server rsum reaches it."""
    benchmark: str = "class_level"
    """``class_level`` (offline: CIFAR-10 + WordNet sentences) or ``paper`` (CIFAR-100, AG_NEWS,
    Flickr30k and COCO from the paths below; needs data.dataset=cifar100)."""
    ag_news_train: str = ""
    ag_news_test: str = ""
    flickr30k_images: str = ""
    flickr30k_captions: str = ""
    coco_images: str = ""
    coco_annotations: str = ""
    public_pairs: int = 10000
    """Paper benchmark: COCO images (first caption each) in the server's public set."""
    server_test_images: int = 1000
    """Paper benchmark: the next COCO images (all captions) the server model is tested on."""
    flickr_test_images: int = 1000
    """Paper benchmark: the first Flickr30k images (all captions), the image-text clients' test set."""
    max_vocabulary: int = 30000
    """Most frequent words kept in the shared word vocabulary (the rest encode as unknown)."""


# --------------------------------------------------------------------------- BAA


class Discriminator(nn.Module):
    """``MLP d→128→64→1`` returning a logit (``D = σ(logit)``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 128), nn.LeakyReLU(0.2), nn.Linear(128, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)


def discriminator_loss(global_logits: Tensor, local_logits: Tensor) -> Tensor:
    """``−[mean log D(g) + mean log(1 − D(f))]``: the negative of L_adv, which D maximises."""
    return F.softplus(-global_logits).mean() + F.softplus(local_logits).mean()


ADVERSARIAL_LOSSES = ("minimax", "nonsaturating")


def encoder_adversarial_loss(local_logits: Tensor, beta: float, kind: str = "minimax") -> Tensor:
    """What the encoder minimises to fool D into calling f global: the paper's ``β · mean log(1 − D(f))``
    (``minimax``), or Goodfellow et al.'s non-saturating ``β · mean(−log D(f))``, which has the same
    fixed point but stops pushing once D is fooled instead of pushing hardest there."""
    if kind == "nonsaturating":
        return beta * F.softplus(-local_logits).mean()
    return -beta * F.softplus(local_logits).mean()


# --------------------------------------------------------------------------- GFF


def _bottleneck(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.BatchNorm1d(dim))


class GranularityFusion(nn.Module):
    """``M(x) = σ(T1(x) + T2(x))``; ``h = M(i_c+i_g)⊙i_c + (1−M(i_c+i_g))⊙i_g``; ``ĩ = M(h)⊙i_c + (1−M(h))⊙i_g``."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.t1 = _bottleneck(dim, hidden)
        self.t2 = _bottleneck(dim, hidden)

    def gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.t1(x) + self.t2(x))

    def forward(self, local: Tensor, global_: Tensor) -> Tensor:
        first = self.gate(local + global_)
        h = first * local + (1 - first) * global_
        second = self.gate(h)
        return second * local + (1 - second) * global_


# --------------------------------------------------------------------------- SED and the CreamFL-style baseline


def sed_weights(client_features: Tensor, global_features: Tensor, temperature: float = 1.0) -> Tensor:
    """SED's weights ``w_ck`` (C×P, each column sums to 1) for C clients' features (C×P×d) of P
    public samples and the global features of the same modality (P×d).

    ``s_ck = log softmax_j(sim(i_c,k, i_g,j)/τ)|_{j=k}``, ``w_ck = exp(s_ck) / Σ_c' exp(s_c'k)``:
    a client weighs more on a sample whose feature picks out that sample's global feature among
    all public samples.
    """
    sims = torch.einsum("cpd,qd->cpq", F.normalize(client_features, dim=-1), F.normalize(global_features, dim=-1))
    scores = torch.log_softmax(sims / temperature, dim=-1).diagonal(dim1=1, dim2=2)
    return torch.softmax(scores, dim=0)


def creamfl_weights(client_features: Tensor, global_other: Tensor, temperature: float = 1.0) -> Tensor:
    """CreamFL-style contrastive-ensemble weights (after Yu et al., ICLR 2023): SED's formula with
    the global features of the *other* modality of each public pair (the inter-modal contrastive
    score of a client's feature), softmax over clients."""
    return sed_weights(client_features, global_other, temperature)


def ensemble(client_features: Tensor, weights: Tensor) -> Tensor:
    """``m_agg,k = Σ_c w_ck m_c,k``: P×d teacher features."""
    return torch.einsum("cp,cpd->pd", weights, client_features)


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


# --------------------------------------------------------------------------- client model


class LocalModel(nn.Module):
    """A client's encoders (its kind's), GFF gates, classifier head and BAA discriminators."""

    def __init__(self, spec: ClientSpec, params: FedAFDParams, num_classes: int, tokenizer: WordTokenizer, image_shape: tuple[int, int]) -> None:
        super().__init__()
        d = params.feature_dim
        fuse = params.gff and params.collaborate
        self.image_encoder = build_image_encoder(spec.image_arch, *image_shape, d) if spec.has_image else None
        self.text_encoder = build_text_encoder(spec.text_arch, tokenizer, d) if spec.has_text else None
        self.fuse_image = GranularityFusion(d) if fuse and spec.has_image else None
        self.fuse_text = GranularityFusion(d) if fuse and spec.has_text else None
        self.head = nn.Linear(d, num_classes) if spec.kind != "pair" else None
        if params.baa and params.collaborate:
            self.d_intra, self.d_cross = Discriminator(d), Discriminator(d)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith(("d_intra", "d_cross"))]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.d_intra.parameters(), *self.d_cross.parameters()]


class FedAFD(Algorithm):
    """FedAFD on the class-level image-text benchmark or the paper's sets; see the module docstring."""

    name = "fedafd"
    Params = FedAFDParams
    uploads = ("public image features", "public text features")

    def bind(self, experiment: ExperimentView) -> None:
        p, config = self.params, experiment.config
        if p.benchmark not in BENCHMARKS:
            raise UserError(
                f"algorithm.fedafd.benchmark must be one of {', '.join(BENCHMARKS)}, got {p.benchmark!r}"
            )
        if p.benchmark == "paper":
            self._check_paper_settings(config)
        else:
            self._check_class_level_settings(config)
        if len(p.clients) != config.partition.num_clients:
            raise UserError(f"algorithm.fedafd.clients lists {len(p.clients)} clients but partition.num_clients is {config.partition.num_clients}")
        if config.eval.federated:
            raise UserError("fedafd evaluates every client on its own task each round; set eval.federated=false")
        if p.adversarial_loss not in ADVERSARIAL_LOSSES:
            raise UserError(f"algorithm.fedafd.adversarial_loss must be one of {', '.join(ADVERSARIAL_LOSSES)}, got {p.adversarial_loss!r}")
        if p.aggregation not in AGGREGATIONS:
            raise UserError(f"algorithm.fedafd.aggregation must be one of {', '.join(AGGREGATIONS)}, got {p.aggregation!r}")
        at_least_one = ("feature_dim", "baa_epochs", "server_epochs", "max_sentences_per_class",
                        "max_vocabulary", "public_pairs", "server_test_images", "flickr_test_images")
        for name in at_least_one:
            if getattr(p, name) < 1:
                raise UserError(f"algorithm.fedafd.{name} must be >= 1, got {getattr(p, name)}")
        for name in ("beta", "gamma", "test_size", "target_rsum"):
            if getattr(p, name) < 0:
                raise UserError(f"algorithm.fedafd.{name} must be >= 0, got {getattr(p, name)}")
        for name in ("sed_temperature", "temperature"):
            if getattr(p, name) <= 0:
                raise UserError(f"algorithm.fedafd.{name} must be > 0, got {getattr(p, name)}")
        for name in ("text_public_fraction", "text_test_fraction"):
            if not 0 < getattr(p, name) < 0.5:
                raise UserError(f"algorithm.fedafd.{name} must be in (0, 0.5), got {getattr(p, name)}")
        self.specs = [parse_client_spec(entry, f"algorithm.fedafd.clients[{i}]") for i, entry in enumerate(p.clients)]
        parse_client_spec(f"image:{p.server_image}", "algorithm.fedafd.server_image")
        parse_client_spec(f"text:{p.server_text}", "algorithm.fedafd.server_text")
        self.experiment = experiment

    @staticmethod
    def _check_class_level_settings(config: Any) -> None:
        if config.data.dataset not in CLASS_SYNSETS:
            raise UserError(
                f"fedafd runs on the class-level image-text benchmark of: {', '.join(CLASS_SYNSETS)} "
                "(or set algorithm.fedafd.benchmark=paper with data.dataset=cifar100); "
                f"got data.dataset={config.data.dataset!r}"
            )
        if config.data.server_holdout <= 0:
            raise UserError("fedafd needs a public paired set: set data.server_holdout > 0 (public images)")

    def _check_paper_settings(self, config: Any) -> None:
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
        e, p = self.experiment, self.params
        text = split_class_text(
            class_sentences(e.config.data.dataset, tuple(e.dataset.classes)),
            p.text_public_fraction, p.text_test_fraction, p.max_sentences_per_class, e.config.experiment.seed,
        )
        return class_level_benchmark(
            e.dataset, e.partitions, e.holdout_indices, [s.kind for s in self.specs], text,
            seed=e.config.experiment.seed, test_size=p.test_size, max_vocabulary=p.max_vocabulary,
        )

    def _paper_benchmark(self) -> MultimodalBenchmark:
        """CIFAR-100 (the experiment's dataset), AG_NEWS, Flickr30k and COCO from the path
        parameters; see :func:`~semanticfl.data.multimodal.paper_benchmark` for the splits."""
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
            seed=e.config.experiment.seed, train_fraction=e.config.data.train_fraction, test_size=p.test_size,
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
        seed = int(np.random.SeedSequence([self.setup.seed, partition_id, _CLIENT_INIT_STREAM]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
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
        """BAA on the public set, then the local task with GFF; uploads public features only.

        ``model`` is the global image-text model (used frozen); the client's own model lives in
        ``task.state`` between rounds.
        """
        p = self.params
        local = self.local_model(data.partition_id).to(settings.device)
        if task.state:
            load_arrays(local, task.state)
        global_model = model.eval().requires_grad_(False)
        metrics = {"baa_loss": 0.0}
        if p.collaborate and p.baa:
            metrics["baa_loss"] = self.bi_level_adversarial_alignment(local, data, task.payload, settings, generator)
        metrics.update(self.local_task(local, global_model, data, settings, generator))
        metrics.update(self.client_test(local, global_model, data, settings))
        extra = self.public_features(local, data, settings) if p.collaborate else {}
        task.state.clear()
        task.state.update(state_to_numpy(local))
        return ClientUpdate(arrays={}, num_examples=len(data), metrics=metrics, extra=extra)

    def _features(self, local: LocalModel, batch: ModalData, transform) -> dict[str, Tensor]:
        """The local encoders' features of a batch, per modality the client has."""
        out = {}
        if local.image_encoder is not None:
            out["image"] = local.image_encoder(transform(batch.images, None))
        if local.text_encoder is not None:
            out["text"] = local.text_encoder(batch.tokens)
        return out

    def bi_level_adversarial_alignment(
        self, local: LocalModel, data: MultimodalClientData, payload: Arrays, settings: LocalSettings, generator: torch.Generator
    ) -> float:
        """BAA: per public batch, one discriminator step on −L_adv, then one encoder step on
        ``β Σ_k log(1 − D_k(f_k))``; returns the mean encoder loss."""
        p, device = self.params, settings.device
        global_features = {m: torch.from_numpy(payload[f"public_{m}"]).to(device) for m in ("image", "text")}
        other = {"image": "text", "text": "image"}
        d_optimizer = torch.optim.SGD(local.discriminator_parameters(), lr=settings.lr, momentum=settings.momentum)
        e_optimizer = torch.optim.SGD(local.encoder_parameters(), lr=settings.lr, momentum=settings.momentum,
                                      weight_decay=settings.weight_decay)
        local.train()
        total, steps = 0.0, 0
        for _ in range(p.baa_epochs):
            order = torch.randperm(len(data.public), generator=generator)
            for start in range(0, len(order), settings.batch_size):
                index = order[start : start + settings.batch_size]
                batch = data.public.rows(index).to(device)
                features = self._features(local, batch, data.eval_transform)
                pairs = [(local.d_intra, f, global_features[m][index.to(device)]) for m, f in features.items()]
                pairs += [(local.d_cross, f, global_features[other[m]][index.to(device)]) for m, f in features.items()]
                d_optimizer.zero_grad(set_to_none=True)
                sum(discriminator_loss(d(g), d(f.detach())) for d, f, g in pairs).backward()
                d_optimizer.step()
                e_optimizer.zero_grad(set_to_none=True)
                loss = sum(encoder_adversarial_loss(d(f), p.beta, p.adversarial_loss) for d, f, _ in pairs)
                loss.backward()
                e_optimizer.step()
                total, steps = total + loss.item(), steps + 1
        return total / max(steps, 1)

    def _task_features(self, local: LocalModel, global_model: ImageTextModel, batch: ModalData, transform, generator=None) -> dict[str, Tensor]:
        """Per modality, the feature the task sees: GFF(i_c, i_g) with GFF on, else i_c."""
        images = transform(batch.images, generator) if batch.images is not None else None
        out = {}
        for modality, encoder, fuse, inputs, global_encoder in (
            ("image", local.image_encoder, local.fuse_image, images, global_model.image),
            ("text", local.text_encoder, local.fuse_text, batch.tokens, global_model.text),
        ):
            if encoder is None:
                continue
            feature = encoder(inputs)
            if fuse is not None:
                with torch.no_grad():
                    global_feature = global_encoder(inputs)
                feature = fuse(feature, global_feature)
            out[modality] = feature
        return out

    def _task_loss(self, local: LocalModel, features: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, number of correct predictions): cross-entropy, or the retrieval loss for pairs
        (correct = the most similar text in the batch has the image's label: its class, or its pair
        id on the paper benchmark)."""
        if local.head is not None:
            logits = local.head(next(iter(features.values())))
            return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()
        image, text = F.normalize(features["image"], dim=-1), F.normalize(features["text"], dim=-1)
        loss = class_level_info_nce(image, text, labels, self.params.temperature)
        return loss, (labels[(image @ text.T).argmax(1)] == labels).sum()

    def local_task(
        self, local: LocalModel, global_model: ImageTextModel, data: MultimodalClientData, settings: LocalSettings, generator: torch.Generator
    ) -> dict[str, float]:
        """``train.local_epochs`` epochs of the client's task on its private data."""
        optimizer = torch.optim.SGD(local.encoder_parameters(), lr=settings.lr, momentum=settings.momentum,
                                    weight_decay=settings.weight_decay)
        local.train()
        loss_sum, correct, seen, steps = 0.0, 0, 0, 0
        for _ in range(settings.epochs):
            for batch in batches(data.private, settings.batch_size, generator):
                if len(batch) < 2:  # BatchNorm in the gates needs two samples
                    continue
                batch = batch.to(settings.device)
                optimizer.zero_grad(set_to_none=True)
                loss, hits = self._task_loss(local, self._task_features(local, global_model, batch, data.train_transform, generator), batch.labels)
                loss.backward()
                optimizer.step()
                loss_sum, correct = loss_sum + loss.item() * len(batch), correct + int(hits)
                seen, steps = seen + len(batch), steps + 1
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": 100.0 * correct / max(seen, 1), "local_steps": float(steps)}

    @torch.no_grad()
    def client_test(
        self, local: LocalModel, global_model: ImageTextModel, data: MultimodalClientData, settings: LocalSettings
    ) -> dict[str, float]:
        """The client's own task on its test set: top-1 (%) or class-level R@K and rsum."""
        local.eval()
        features: dict[str, list[Tensor]] = {}
        for batch in batches(data.test, 500, None):
            for modality, feature in self._task_features(local, global_model, batch.to(settings.device), data.eval_transform).items():
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
        return model.to(self.experiment.config.engine.device)

    def global_public_features(self, model: ImageTextModel) -> dict[str, Tensor]:
        """``i_g, t_g``: the global model's features of the public set (P×d each)."""
        public, device = self.benchmark.public, self.experiment.config.engine.device
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
        """SED on the uploaded public features, then ``server_epochs`` on the public pairs with the
        retrieval loss ``+ γ Σ_m ‖f_m − m_agg‖²``."""
        p, config = self.params, self.experiment.config
        model = self._server_model(global_arrays)
        teachers = self.teacher_features(self.global_public_features(model), updates) if p.collaborate else {}
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.setup.seed, round_number, _SERVER_STREAM]).generate_state(1)[0])
        )
        transform, device = self.experiment.train_transform(), config.engine.device
        optimizer = torch.optim.SGD(model.parameters(), lr=config.train.lr, momentum=config.train.momentum,
                                    weight_decay=config.train.weight_decay)
        model.train()
        public = self.benchmark.public
        for _ in range(p.server_epochs):
            order = torch.randperm(len(public), generator=generator)
            for start in range(0, len(order), config.train.batch_size):
                index = order[start : start + config.train.batch_size]
                batch = public.rows(index).to(device)
                features = {"image": model.image(transform(batch.images, generator)), "text": model.text(batch.tokens)}
                loss = class_level_info_nce(features["image"], features["text"], batch.labels, p.temperature)
                for modality, target in teachers.items():
                    loss = loss + p.gamma * (features[modality] - target[index.to(device)]).pow(2).sum(1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return state_to_numpy(model)

    def central_evaluation(self, model: nn.Module) -> dict[str, Any]:
        """The server model's R@1/5/10 both ways and rsum on the server's test pairs (class-level,
        or per image in the paper benchmark)."""
        test, device = self.benchmark.server_test_pairs, self.experiment.config.engine.device
        transform = self.experiment.eval_transform()
        image = encode(model.image, test.images, 500, lambda x: transform(x, None).to(device))
        text = encode(model.text, test.tokens.to(device), 500)
        labels = test.labels.to(device)
        recalls = pair_recalls(image, text, labels, self.benchmark.relevance)
        return {f"server_{k}": v for k, v in recalls.items()}

    def round_metrics(self, updates: Sequence[ClientUpdate]) -> dict[str, Any]:
        """Each client's test metrics and their means per kind."""
        per_kind: dict[str, list[dict[str, float]]] = {}
        tests = {}
        for update in updates:
            kind = self.specs[update.client_id].kind
            result = {k[len("test_"):]: v for k, v in update.metrics.items() if k.startswith("test_")}
            per_kind.setdefault(kind, []).append(result)
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
