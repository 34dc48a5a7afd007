"""FedAFD's client side: a client's model, BAA on the public set and the local task with GFF."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import Arrays, LocalSettings
from semanticfl.algorithms.fedafd.optim import load_optimizer_arrays, optimizer_arrays
from semanticfl.algorithms.fedafd.params import FedAFDParams
from semanticfl.algorithms.fedafd.parts import (
    Discriminator,
    GranularityFusion,
    batchnorm_parameters,
    discriminator_loss,
    encoder_adversarial_loss,
)
from semanticfl.algorithms.multimodal import ClientSpec, MultimodalClientData, batches, class_level_info_nce
from semanticfl.data.multimodal import ModalData, WordTokenizer
from semanticfl.models.multimodal import ImageTextModel, build_image_encoder, build_text_encoder

OPTIMIZER_STATE = "optimizer."
"""Prefix of the optimiser state kept in a client's state beside its model's."""
_DISCRIMINATOR_STATE = OPTIMIZER_STATE + "discriminator."
_OTHER = {"image": "text", "text": "image"}

Transform = Callable[..., Tensor]
"""An image transform ``(images, generator or None) -> images``."""

OptimizerFactory = Callable[[nn.Module, LocalSettings], torch.optim.Optimizer]
"""The algorithm's :meth:`~semanticfl.algorithms.base.Algorithm.make_optimizer`: ``[train]``'s SGD of
a module's parameters at a :class:`LocalSettings`' lr, momentum and weight decay."""


class LocalModel(nn.Module):
    """A client's encoders (its kind's), GFF gates, classifier head and BAA discriminators."""

    def __init__(self, spec: ClientSpec, params: FedAFDParams, num_classes: int, tokenizer: WordTokenizer, image_shape: tuple[int, int]) -> None:
        super().__init__()
        d = params.feature_dim
        fuse = params.gff and params.collaborate
        self.image_encoder = build_image_encoder(spec.image_arch, *image_shape, d) if spec.has_image else None
        self.text_encoder = build_text_encoder(spec.text_arch, tokenizer, d) if spec.has_text else None
        gate = lambda: GranularityFusion(d, second_gate=params.gff_second_gate)
        self.fuse_image = gate() if fuse and spec.has_image else None
        self.fuse_text = gate() if fuse and spec.has_text else None
        self.head = nn.Linear(d, num_classes) if spec.kind != "pair" else None
        if params.baa and params.collaborate:
            self.d_intra = Discriminator(d, params.discriminator_output)
            self.d_cross = Discriminator(d, params.discriminator_output)

    def gates(self) -> list[GranularityFusion]:
        return [g for g in (self.fuse_image, self.fuse_text) if g is not None]

    def encoder_parameters(self, with_gates: bool = True) -> list[nn.Parameter]:
        """Everything but the discriminators (and, unless ``with_gates``, the GFF gates)."""
        skip = ("d_intra", "d_cross") if with_gates else ("d_intra", "d_cross", "fuse_image", "fuse_text")
        return [p for name, p in self.named_parameters() if not name.startswith(skip)]

    def feature_encoder_parameters(self) -> list[nn.Parameter]:
        """The image and text encoders' parameters (no head, gates or discriminators)."""
        return [p for encoder in (self.image_encoder, self.text_encoder) if encoder is not None for p in encoder.parameters()]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for gate in self.gates() for p in gate.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.d_intra.parameters(), *self.d_cross.parameters()]

    def reset_gates(self, seed: int) -> None:
        """Fresh GFF gates (weights and BatchNorm statistics), seeded: the code's ``iAFF()`` of each round."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for gate in self.gates():
                for module in gate.modules():
                    if isinstance(module, (nn.Linear, nn.BatchNorm1d)):
                        module.reset_parameters()

    def features(self, batch: ModalData, transform: Transform) -> dict[str, Tensor]:
        """The local encoders' features of a batch, per modality the client has."""
        out = {}
        if self.image_encoder is not None:
            out["image"] = self.image_encoder(transform(batch.images, None))
        if self.text_encoder is not None:
            out["text"] = self.text_encoder(batch.tokens)
        return out

    def task_features(self, global_model: ImageTextModel, batch: ModalData, transform: Transform,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per modality, the feature the task sees: GFF(i_c, i_g) with GFF on, else i_c."""
        images = transform(batch.images, generator) if batch.images is not None else None
        out = {}
        for modality, encoder, fuse, inputs, global_encoder in (
            ("image", self.image_encoder, self.fuse_image, images, global_model.image),
            ("text", self.text_encoder, self.fuse_text, batch.tokens, global_model.text),
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

    def task_loss(self, features: dict[str, Tensor], labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """(loss, number of correct predictions): cross-entropy, or the retrieval loss for pairs
        (correct = the most similar text in the batch has the image's label: its class, or its pair
        id on the paper benchmark)."""
        if self.head is not None:
            logits = self.head(next(iter(features.values())))
            return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()
        image, text = F.normalize(features["image"], dim=-1), F.normalize(features["text"], dim=-1)
        loss = class_level_info_nce(image, text, labels, temperature)
        return loss, (labels[(image @ text.T).argmax(1)] == labels).sum()


class GradientNorms:
    """The mean over steps of the L2 norm of the gradient on some parameters: how hard a loss pushes
    the feature encoders (the ``baa_grad_norm`` / ``task_grad_norm`` diagnostics)."""

    def __init__(self, parameters: list[nn.Parameter]) -> None:
        self.parameters, self.total, self.steps = parameters, 0.0, 0

    def add(self) -> None:
        grads = [p.grad.detach().norm() for p in self.parameters if p.grad is not None]
        self.total += torch.stack(grads).norm().item() if grads else 0.0
        self.steps += 1

    def mean(self) -> float:
        return self.total / max(self.steps, 1)


def _sgd(make_optimizer: OptimizerFactory, parameters: list[nn.Parameter], settings: LocalSettings) -> torch.optim.Optimizer:
    """``make_optimizer`` of some of a model's parameters (in their order, so the optimiser state's
    indices are those of the list), held by a module that owns nothing else."""
    return make_optimizer(nn.ParameterList(parameters), settings)


class AdversarialAlignment:
    """BAA of one client in one round: per public batch, one discriminator step on
    ``discriminator_weight · −L_adv``, then one encoder step on ``β Σ_k ℓ(D_k(f_k))`` (the paper's
    log(1 − D) or the non-saturating −log D), k over the intra- and cross-modal discriminators
    and the client's modalities.

    D's optimiser: ``discriminator_optimizer = "sgd"``: ``make_optimizer`` at ``[train]``'s lr and
    momentum without weight decay; ``"adam"``: Adam at ``discriminator_lr`` -- the public code's D
    optimiser (Adam 1e-4), not ``make_optimizer``, which builds ``[train]``'s SGD. Either is restored
    from and saved to the client state with ``keep_discriminator_optimizer``. The encoders' optimiser
    is ``make_optimizer`` at the round's encoder settings, one for the round.
    """

    def __init__(self, local: LocalModel, params: FedAFDParams, kind: str, payload: Arrays, settings: LocalSettings,
                 encoder_settings: LocalSettings, state: Arrays, *, make_optimizer: OptimizerFactory) -> None:
        self.local, self.params, self.device = local, params, settings.device
        self.global_features = {m: torch.from_numpy(payload[f"public_{m}"]).to(self.device) for m in ("image", "text")}
        if params.discriminator_optimizer == "adam":
            self.d_optimizer: torch.optim.Optimizer = torch.optim.Adam(local.discriminator_parameters(), lr=params.discriminator_lr)
        else:
            no_decay = dataclasses.replace(settings, weight_decay=0.0)
            self.d_optimizer = _sgd(make_optimizer, local.discriminator_parameters(), no_decay)
        if params.keep_discriminator_optimizer:
            load_optimizer_arrays(self.d_optimizer, state, _DISCRIMINATOR_STATE)
        self.e_optimizer = _sgd(make_optimizer, local.encoder_parameters(), encoder_settings)
        self.frozen: list[nn.Parameter] = []
        if kind == "pair" and params.pair_baa_batchnorm_only:
            moved = {id(p) for p in batchnorm_parameters(local)}
            self.frozen = [p for p in local.encoder_parameters() if id(p) not in moved]
        self.loss_sum, self.steps = 0.0, 0
        self.grad_norms = GradientNorms(local.feature_encoder_parameters())

    def run_pass(self, data: MultimodalClientData, batch_size: int, generator: torch.Generator) -> None:
        """One pass over the public set in shuffled batches."""
        p, local = self.params, self.local
        local.train()
        order = torch.randperm(len(data.public), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = data.public.rows(index).to(self.device)
            rows = index.to(self.device)
            features = local.features(batch, data.eval_transform)
            pairs = [(local.d_intra, f, self.global_features[m][rows]) for m, f in features.items()]
            pairs += [(local.d_cross, f, self.global_features[_OTHER[m]][rows]) for m, f in features.items()]
            self.d_optimizer.zero_grad(set_to_none=True)
            sum(discriminator_loss(d(g), d(f.detach()), p.discriminator_weight) for d, f, g in pairs).backward()
            self.d_optimizer.step()
            self.e_optimizer.zero_grad(set_to_none=True)
            loss = sum(encoder_adversarial_loss(d(f), p.beta, p.adversarial_loss) for d, f, _ in pairs)
            loss.backward()
            for parameter in self.frozen:  # the code's apex-O2 image-text clients: no master gradient
                parameter.grad = None
            self.grad_norms.add()
            self.e_optimizer.step()
            self.loss_sum, self.steps = self.loss_sum + loss.item(), self.steps + 1

    def metrics(self) -> dict[str, float]:
        """The mean encoder loss and the mean norm of its gradient on the feature encoders."""
        return {"baa_loss": self.loss_sum / max(self.steps, 1), "baa_grad_norm": self.grad_norms.mean()}

    def state(self) -> Arrays:
        """D's optimiser state to keep in the client state (none unless ``keep_discriminator_optimizer``)."""
        return optimizer_arrays(self.d_optimizer, _DISCRIMINATOR_STATE) if self.params.keep_discriminator_optimizer else {}


class LocalTask:
    """The client's task on its private data, one epoch per :meth:`run_epoch`: the encoders (and head)
    by ``make_optimizer`` at the round's encoder settings; the GFF gates with them (``gff_optimizer =
    "encoder"``) or by their own Adam (``"adam"``: ``gff_lr`` / ``gff_weight_decay``, image-text clients
    ``pair_gff_lr`` / ``pair_gff_weight_decay``), both created once per round. The gates' Adam is the
    public code's optimiser for its re-created ``iAFF`` (Adam 5e-3, weight decay 0.01 by default), not
    ``make_optimizer``, which builds ``[train]``'s SGD."""

    def __init__(self, local: LocalModel, params: FedAFDParams, kind: str, settings: LocalSettings, *,
                 make_optimizer: OptimizerFactory) -> None:
        self.local, self.params, self.settings = local, params, settings
        separate = params.gff_optimizer == "adam" and bool(local.gates())
        self.optimizers: list[torch.optim.Optimizer] = [
            _sgd(make_optimizer, local.encoder_parameters(with_gates=not separate), settings)
        ]
        if separate:
            pair = kind == "pair"
            self.optimizers.append(torch.optim.Adam(
                local.gate_parameters(),
                lr=params.pair_gff_lr if pair else params.gff_lr,
                weight_decay=params.pair_gff_weight_decay if pair else params.gff_weight_decay,
            ))
        self.loss_sum, self.correct, self.seen, self.steps = 0.0, 0, 0, 0
        self.grad_norms = GradientNorms(local.feature_encoder_parameters())

    def run_epoch(self, global_model: ImageTextModel, data: MultimodalClientData, generator: torch.Generator) -> None:
        local, device = self.local, self.settings.device
        local.train()
        for batch in batches(data.private, self.settings.batch_size, generator):
            if len(batch) < 2:  # BatchNorm in the gates needs two samples
                continue
            batch = batch.to(device)
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            features = local.task_features(global_model, batch, data.train_transform, generator)
            loss, hits = local.task_loss(features, batch.labels, self.params.temperature)
            loss.backward()
            self.grad_norms.add()
            for optimizer in self.optimizers:
                optimizer.step()
            self.loss_sum, self.correct = self.loss_sum + loss.item() * len(batch), self.correct + int(hits)
            self.seen, self.steps = self.seen + len(batch), self.steps + 1

    def metrics(self) -> dict[str, float]:
        return {"train_loss": self.loss_sum / max(self.seen, 1), "train_accuracy": 100.0 * self.correct / max(self.seen, 1),
                "local_steps": float(self.steps), "task_grad_norm": self.grad_norms.mean()}
