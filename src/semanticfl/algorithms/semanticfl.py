"""SemanticFL (ICME 2026, arXiv 2603.19337): multi-layer diffusion semantics as a shared space.

A frozen latent diffusion model gives multi-layer representations -- the VAE latents AND several
U-Net decoder up-blocks at timestep ``t`` (default 150) -- each reduced (pooling + PCA) and fused
into one shared semantic space (default 128 dims a layer, fewer where the layer has fewer channels:
4 × 128 = 512 at most, 4 + 3 × 128 = 388 with SD's 4-channel latent). Client features are projected into
it (``teacher_projection``) and into the text encoder's space (``text_projection``), and each
client minimises the *unified consistency objective*::

    L = L_CE + λ_kd · consistency(ẑ_i, T_i) + λ_con · InfoNCE(ĥ_i, {e_c}, y_i; τ)

* ``consistency`` = ``KL(softmax(T_i/τ_kd) ‖ softmax(ẑ_i/τ_kd))`` over the unit-normalised feature
  vectors (default), or the squared L2 distance between them;
* ``InfoNCE`` = cross-modal contrast of the client's text-space feature ``ĥ_i`` with the text
  embeddings ``e_c`` of all class prompts "a photo of a {class}", positive = its own class
  (:func:`~semanticfl.algorithms.contrastive.candidate_info_nce`);
* defaults λ_kd = 1, λ_con = 0.01, τ = 0.05 (third-party summaries of the paper; the paper's own
  values are unknown); an optional linear warm-up of both weights over ``warmup_rounds``.

The server half is FedAvg. Clients never run the diffusion U-Net unless ``mode = "local"``.
``T_i``, the teacher target of sample ``i``, depends on ``mode`` -- the paper leaves open which
images the server encodes, so the choice is explicit:

* ``anchors`` (nothing but weights leaves a client): the server computes once, from the
  class prompts (and, with ``anchor_public_per_class > 0``, its own public split), one anchor per
  class; ``T_i`` = the anchor of ``y_i``. Anchors and class text embeddings travel with the model
  (``C × (512 + d_text)`` floats a round).
* ``local``: every client runs the teacher on its own data once (FedDifRC's deployment); ``T_i`` =
  the sample's own fused features under the null prompt.
* ``offload``: like ``local``, but the client runs only the VAE encoder, adds noise at ``t`` and
  sends the noised latents once (float16, ``draws × N × latent size``); the server runs the U-Net
  and returns the per-sample fused features (engine/exchanges.py). The clean latent never leaves
  the client, so the ``latent`` layer of ``T_i`` is the noised latent -- the one difference from
  ``local``.
* ``guidance`` (default; nothing but weights leaves a client): the server builds a class-balanced *guidance
  set* once -- ``guidance_per_class`` images per class the teacher generates from the class prompt
  alone (``guidance_source = "generated"``), or draws from its own public split (``"public"``) --
  with each image's fused teacher features ``T_g`` in the shared space, and sends it once. Beside
  each own minibatch a client draws a guidance minibatch and adds
  ``λ_kd · consistency(ẑ_g, T_g)`` on it and ``lambda_guidance_ce`` (default 1) times the
  cross-entropy on the guidance labels; with ``guidance_anchors`` its own samples are also held
  to the class anchors ``A_c`` = the unit mean of the guidance features of class ``c``:
  ``λ_kd · consistency(ẑ_i, A_{y_i})``. Its control is ``datashare`` with the same set. It is the
  default because it is the mode the validation split chose (BENCHMARKS.md, *SemanticFL's guidance
  set*): generated images keep it private -- nothing but the class names goes into them -- and without
  the CE on their labels the consistency term alone did not beat FedAvg.

Choices made where the paper is silent, all configurable: KL over unit-normalised features with
``τ_kd = 0.05`` (a softmax over a raw unit vector is near-uniform and gives a vanishing KL); GAP +
PCA per layer (``reduction``); equal 128-d shares for latents and three up-blocks, each capped by
the layer's channels (``layer_dims = "auto"``). Ablations:
``layers = ["latent"]`` (no U-Net), ``layers`` without ``latent`` (no latents), ``lambda_kd = 0``
(no consistency), ``lambda_con = 0`` (no contrast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import AlgorithmSetup, Arrays, Batch, ClientTask, LocalData, LocalSettings
from semanticfl.algorithms.contrastive import candidate_info_nce
from semanticfl.algorithms.guidance import FEATURES, GuidanceStream, guidance_batch_size, joint_forward
from semanticfl.algorithms.teacher_guided import (
    AUTO,
    TeacherFeatureParams,
    TeacherGuided,
    require_all,
    resolve_auto_dims,
    teacher_param_checks,
    up_block_layers,
)
from semanticfl.errors import UserError
from semanticfl.teachers.base import (
    GUIDANCE_SOURCES,
    NULL_PROMPT,
    AnchorRequest,
    FeatureRequest,
    GuidanceRequest,
    TeacherRequests,
    class_prompts,
)

MODES = ("anchors", "offload", "local", "guidance")
TARGET = "semanticfl.target"
ANCHORS = "semanticfl.anchors"
TEXT = "semanticfl.text"
GUIDANCE = "semanticfl.guidance"
TEXT_PROJECTION = "text_projection"
DIM_CAPS = (128,)
"""``layer_dims = "auto"``: at most 128 dims per layer (the 512-d space as four equal shares); SD's
4-channel latent keeps 4 (388 dims), the offline teacher 32/128/128/64 (352)."""


@dataclass
class SemanticFLParams(TeacherFeatureParams):
    # The shared teacher settings with SemanticFL's defaults (FedDifRC's differ).
    timestep: int = 150
    layers: tuple[str, ...] = ("latent", *up_block_layers(3))
    reduction: str = "gap"

    mode: str = "guidance"
    lambda_kd: float = 1.0
    consistency: str = "kl"
    """``kl`` (KL over softmax-normalised features) or ``l2``."""
    kd_temperature: float = 0.05
    lambda_con: float = 0.01
    temperature: float = 0.05
    """τ of the cross-modal InfoNCE."""
    warmup_rounds: int = 0
    """Both weights ramp linearly from 0 over these rounds (0 = full weight from round 1)."""
    anchor_public_per_class: int = 0
    """Anchors mode: public samples per class averaged into its anchor (0 = prompts alone)."""
    guidance_source: str = "generated"
    """Guidance mode: ``generated`` (the teacher's samples of the class prompts) or ``public`` (the
    server's own public split)."""
    guidance_per_class: int = 100
    """Guidance mode: images per class in the guidance set."""
    guidance_batch_size: int = 0
    """Guidance mode: guidance images per local step (0 = ``train.batch_size``)."""
    lambda_guidance_ce: float = 1.0
    """Guidance mode: weight of the cross-entropy on the guidance labels (0 = off)."""
    guidance_anchors: bool = False
    """Guidance mode: also hold each own sample to its class's mean guidance feature."""
    text_dim: int | Literal["auto"] = "auto"
    """Dimension of the teacher's text embeddings; ``auto``: the teacher's text encoder's (MiniLM 384;
    SD 1.x's CLIP ViT-L 768, SD 2.x's OpenCLIP-H 1024)."""


def consistency_loss(z: Tensor, target: Tensor, kind: str, temperature: float) -> Tensor:
    """Mean over the batch of ``KL(softmax(t/τ) ‖ softmax(z/τ))`` or ``‖z − t‖²``, on unit vectors."""
    z, target = F.normalize(z, dim=1), F.normalize(target, dim=1)
    if kind == "l2":
        return (z - target).pow(2).sum(dim=1).mean()
    log_p_client = F.log_softmax(z / temperature, dim=1)
    log_p_teacher = F.log_softmax(target / temperature, dim=1)
    return F.kl_div(log_p_client, log_p_teacher, log_target=True, reduction="batchmean")


class SemanticFL(TeacherGuided):
    name = "semanticfl"
    Params = SemanticFLParams

    def __init__(self, params: SemanticFLParams, setup: AlgorithmSetup) -> None:
        _validate(params)
        super().__init__(resolve_auto_dims(params, setup, DIM_CAPS, self.name), setup)
        self.uploads = ("model", "noised latents (once)") if params.mode == "offload" else ("model",)
        self.anchors: Arrays = {}

    # ------------------------------------------------------------------ teacher

    def class_prompts(self) -> tuple[str, ...]:
        return tuple(class_prompts(self.setup.class_names, self.params.template))

    def per_sample_request(self, mode: str) -> tuple[FeatureRequest, ...]:
        """The per-sample target (null prompt: no label leaves the client) if ``mode`` is the mode."""
        if self.params.mode != mode or not self.params.lambda_kd:
            return ()
        return (self.feature_request(TARGET, (NULL_PROMPT,)),)

    def teacher_requests(self) -> TeacherRequests:
        """``local``: each sample's teacher features, extracted from the client's own data;
        ``offload``: the same target, from the client's noised latents through the server's U-Net;
        ``guidance``: the server's guidance set; class text embeddings (and anchors) in every mode."""
        return TeacherRequests(
            features=self.per_sample_request("local"),
            offload=self.per_sample_request("offload"),
            anchors=self.class_requests(),
            guidance=self.guidance_request(),
        )

    def class_requests(self) -> tuple[AnchorRequest, ...]:
        """Class text embeddings always; class anchors in ``anchors`` mode."""
        prompts = self.class_prompts()
        text = AnchorRequest(TEXT, self.feature_request(TEXT, prompts), text=True)
        if self.params.mode != "anchors":
            return (text,)
        anchors = AnchorRequest(
            ANCHORS, self.feature_request(ANCHORS, prompts), self.params.anchor_public_per_class
        )
        return (anchors, text)

    def guidance_request(self) -> tuple[GuidanceRequest, ...]:
        """``guidance``: the server's class-balanced set with each image's null-prompt teacher features."""
        p = self.params
        if p.mode != "guidance":
            return ()
        features = self.feature_request(GUIDANCE, (NULL_PROMPT,))
        return (GuidanceRequest(GUIDANCE, p.guidance_per_class, self.class_prompts(), p.guidance_source, features),)

    def receive_anchors(self, anchors: Arrays) -> None:
        if anchors[TEXT].shape[1] != self.params.text_dim:
            raise UserError(
                f"the teacher's text embeddings have {anchors[TEXT].shape[1]} dims; set "
                f"algorithm.semanticfl.text_dim={anchors[TEXT].shape[1]}"
            )
        self.anchors = {name: np.asarray(value, dtype=np.float32) for name, value in anchors.items()}

    def extend_model(self, model: nn.Module) -> nn.Module:
        """``teacher_projection`` into the semantic space, ``text_projection`` into the text space."""
        model.add_module(TEXT_PROJECTION, nn.Linear(model.feature_dim, self.params.text_dim))
        return super().extend_model(model)

    # ------------------------------------------------------------------ server half

    def server_payload(self, global_arrays: Arrays, round_number: int) -> Arrays:
        """The class text embeddings (and anchors) travel with the model every round."""
        return dict(self.anchors)

    # ------------------------------------------------------------------ client half

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> Any:
        ramp = min(1.0, task.round / self.params.warmup_rounds) if self.params.warmup_rounds else 1.0
        device = settings.device
        anchors = task.payload.get(ANCHORS)
        stream = None
        if self.params.mode == "guidance":
            guidance = data.guidance[GUIDANCE]
            size = guidance_batch_size(self.params.guidance_batch_size, settings, len(guidance.labels))
            stream = GuidanceStream(guidance, data, size, device)
            if self.params.guidance_anchors:
                anchors = class_means(guidance.features, guidance.labels, self.setup.num_classes)
        return _Context(
            ramp=ramp,
            text=torch.as_tensor(task.payload[TEXT], device=device),
            anchors=None if anchors is None else torch.as_tensor(anchors, device=device),
            guidance=stream,
        )

    def local_loss(self, model: nn.Module, batch: Batch, context: Any) -> tuple[Tensor, Tensor]:
        """``L_CE + λ_kd · consistency + λ_con · InfoNCE`` (weights × the warm-up ramp); in ``guidance``
        mode the consistency is on a guidance minibatch (plus ``λ_gce · CE`` on its labels)."""
        p = self.params
        if context.guidance is not None:
            return self.guided_loss(model, batch, context)
        features, logits = model(batch.images)
        loss = F.cross_entropy(logits, batch.labels) + self.contrast(model, features, batch, context)
        if p.lambda_kd:
            target = self.teacher_target(batch, context)
            kd = consistency_loss(self.project(model, features), target, p.consistency, p.kd_temperature)
            loss = loss + context.ramp * p.lambda_kd * kd
        return loss, logits

    def guided_loss(self, model: nn.Module, batch: Batch, context: Any) -> tuple[Tensor, Tensor]:
        """Own minibatch: CE, InfoNCE (and the class-anchor consistency); guidance minibatch: the
        consistency with its teacher features and, if weighted, CE on its labels."""
        p, guidance = self.params, context.guidance.next()
        features, logits, g_features, g_logits = joint_forward(model, batch.images, guidance.images)
        loss = F.cross_entropy(logits, batch.labels) + self.contrast(model, features, batch, context)
        weight = context.ramp * p.lambda_kd
        if weight:
            targets = guidance.targets[FEATURES]
            loss = loss + weight * consistency_loss(
                self.project(model, g_features), targets, p.consistency, p.kd_temperature
            )
            if context.anchors is not None:
                anchors = context.anchors[batch.labels]
                loss = loss + weight * consistency_loss(
                    self.project(model, features), anchors, p.consistency, p.kd_temperature
                )
        if p.lambda_guidance_ce:
            loss = loss + p.lambda_guidance_ce * F.cross_entropy(g_logits, guidance.labels)
        return loss, logits

    def contrast(self, model: nn.Module, features: Tensor, batch: Batch, context: Any) -> Tensor | float:
        """``λ_con · InfoNCE`` of the own samples' text-space features with the class text embeddings."""
        p = self.params
        if not p.lambda_con:
            return 0.0
        text_features = getattr(model, TEXT_PROJECTION)(features)
        con = candidate_info_nce(text_features, context.text, batch.labels, p.temperature).mean()
        return context.ramp * p.lambda_con * con

    def teacher_target(self, batch: Batch, context: Any) -> Tensor:
        """The anchor of each sample's class, or the sample's own teacher features."""
        if context.anchors is not None:
            return context.anchors[batch.labels]
        return batch.targets[TARGET].float()


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C×D: the unit-normalised mean feature of each class (zero for a class with no rows)."""
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float32)
    np.add.at(sums, labels, features.astype(np.float32))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, 1e-12)


@dataclass
class _Context:
    ramp: float
    text: Tensor
    anchors: Tensor | None
    guidance: GuidanceStream | None = None


def _validate(p: SemanticFLParams) -> None:
    checks = [
        (p.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {p.mode!r}"),
        (p.lambda_kd >= 0 and p.lambda_con >= 0, "lambda_kd and lambda_con must be >= 0"),
        (p.consistency in ("kl", "l2"), f"consistency must be 'kl' or 'l2', got {p.consistency!r}"),
        (p.kd_temperature > 0 and p.temperature > 0, "kd_temperature and temperature must be > 0"),
        (p.warmup_rounds >= 0, f"warmup_rounds must be >= 0, got {p.warmup_rounds}"),
        (p.anchor_public_per_class >= 0, "anchor_public_per_class must be >= 0"),
        (p.text_dim == AUTO or p.text_dim >= 1, f"text_dim must be >= 1, got {p.text_dim}"),
        (
            p.guidance_source in GUIDANCE_SOURCES,
            f"guidance_source must be one of {', '.join(GUIDANCE_SOURCES)}, got {p.guidance_source!r}",
        ),
        (p.guidance_per_class >= 1, f"guidance_per_class must be >= 1, got {p.guidance_per_class}"),
        (p.guidance_batch_size >= 0, f"guidance_batch_size must be >= 0, got {p.guidance_batch_size}"),
        (p.lambda_guidance_ce >= 0, f"lambda_guidance_ce must be >= 0, got {p.lambda_guidance_ce}"),
    ]
    require_all(checks + teacher_param_checks(p), SemanticFL.name)
