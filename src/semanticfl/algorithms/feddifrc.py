"""FedDifRC (Wang et al., "FedDifRC: Unlocking the Potential of Text-to-Image Diffusion Models in
Heterogeneous Federated Learning", ICCV 2025, arXiv 2507.06482).

A frozen text-to-image diffusion model is a representation source: one U-Net pass on the noised
VAE latent of an image (timestep ``t``, no denoising loop) and the outputs of decoder up-blocks,
each reduced by PCA and fused into one vector. Each client adds two terms to cross-entropy:

* **TDCL** (text-driven diffusion contrastive learning): for sample ``i`` the teacher features of
  the image conditioned on every class prompt ``"a photo of a {class}"`` are candidates
  ``F_1 … F_C``; the true class is the positive, the others the negatives:
  ``L_TDCL = log(1 + Σ_{j≠y_i} exp(s(z_i, F_j)/τ) / exp(s(z_i, F_{y_i})/τ))``,
  ``s`` the cosine similarity (= the cross-entropy of the logits ``s(z_i, F_j)/τ`` with target
  ``y_i``).
* **NDCR** (noise-driven diffusion consistency regularisation): ``H_i`` = teacher features of the
  noised image under the null prompt; ``L_NDCR = Σ_q (z_iq − H_iq)²`` (squared L2).
* ``L = L_CE + λ_TDCL · L_TDCL + λ_NDCR · L_NDCR``; both λ default to 1 (the paper's sum).

``z_i`` is the client feature mapped into the teacher space by ``teacher_projection`` (identity
when the dimensions agree, e.g. ResNet-10's 512 = 256+128+128). The server half is FedAvg.

Where the teacher runs: on each client, over its own data, once before training (the paper's
deployment, nothing but weights leaves a client). The engine computes the same per-sample
features through the feature store; a sample's features depend only on the sample, the teacher
and the seed, so this equals per-client extraction. Its cost (one U-Net pass per sample for
NDCR plus one per sample and class for TDCL) is reported by ``semanticfl features``.

Deviations from the public code (hwang52/FedDifRC), following the paper instead:

1. NDCR is the paper's squared L2, not a KL between softmaxes over feature dimensions.
2. TDCL contrasts each anchor with *its own* positive and negatives; the public code tiles the
   batch so anchors meet other samples' negatives.
3. The diffusion input is the image in [0, 1] resized to ``teacher.resolution`` (the public code
   divides by 255 twice); the feature extraction is part of this project, not opaque cached files.
4. Each up-block's PCA is fitted on that block's own features (the public code builds one from
   the wrong block), on the server's public split.
5. No device is hard-coded.

The self-supervised variant (``self_supervised = true``) uses no labels in the teacher prompts:
the positive is "a photo of a similar object", ``num_negatives`` negatives are drawn from the
class-name prompts, and NDCR's prompt is "a photo of a visual object".

Conditional injection (``inject_encoding = true``): the paper injects the sample's encoding
``c_i = h_k(x_i)`` into the teacher beside the prompt ``P_{y_i}``. Here the client encodes its
data with the model it received (eval mode, un-augmented view) at the start of every round; each
encoding becomes one extra cross-attention token appended to every class prompt
(:meth:`~semanticfl.teachers.diffusion.DiffusionTeacher.condition_tokens`: a fixed seeded
projection to the token width, rescaled to a word token's norm -- the paper does not say how the
widths are matched) and the TDCL candidates are re-extracted. Because they depend on the model,
they cannot be cached: the client runs the teacher, ``N_k × C`` U-Net passes per round, which is
why it is off by default (the PCA is the one fitted without a condition).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.algorithms.base import AlgorithmSetup, Batch, ClientTask, LocalData, LocalSettings
from semanticfl.algorithms.contrastive import candidate_info_nce
from semanticfl.algorithms.teacher_guided import (
    TeacherFeatureParams,
    TeacherGuided,
    require_all,
    resolve_auto_dims,
    teacher_param_checks,
    up_block_layers,
)
from semanticfl.teachers.base import NULL_PROMPT, TeacherRequests, class_prompts

TDCL = "feddifrc.tdcl"
NDCR = "feddifrc.ndcr"
DIM_CAPS = (256, 128, 128)
"""``layer_dims = "auto"``: at most these dims per layer (the public code's PCA dims, → 512 for SD; the
offline teacher's channels cap them to 128/128/64)."""
SIMILAR_PROMPT = "a photo of a similar object"
VISUAL_PROMPT = "a photo of a visual object"


@dataclass
class FedDifRCParams(TeacherFeatureParams):
    # The shared teacher settings with FedDifRC's defaults (SemanticFL's differ).
    timestep: int = 300
    """Noise level of the U-Net pass; the paper reports t = 300 best (t = 999: inseparable)."""
    layers: tuple[str, ...] = up_block_layers(3)
    """Fused layers: the last three up-blocks (SD: blocks 1, 2, 3, as in the paper)."""
    reduction: str = "spatial_norm"

    lambda_tdcl: float = 1.0
    lambda_ndcr: float = 1.0
    temperature: float = 0.04
    """τ of TDCL (the public code's 0.04)."""
    num_negatives: int = 0
    """Negatives per anchor in TDCL; 0 = every other class."""
    self_supervised: bool = False
    inject_encoding: bool = False
    """Inject each sample's encoding by the received model into the TDCL conditioning (per round)."""


def tdcl_loss(
    z: Tensor,
    candidates: Tensor,
    positive: Tensor,
    temperature: float,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean TDCL over the batch: anchor ``z_i`` (N×D) against its own candidates (N×P×D).

    ``positive[i]`` indexes the positive candidate of anchor ``i``; the others are its
    negatives. With ``num_negatives = K > 0`` each anchor keeps K random negatives (seeded).
    """
    if num_negatives and num_negatives < candidates.shape[1] - 1:
        candidates, positive = _sample_negatives(candidates, positive, num_negatives, generator)
    return candidate_info_nce(z, candidates, positive, temperature).mean()


def _sample_negatives(
    candidates: Tensor, positive: Tensor, k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Keep, per anchor, its positive (moved to column 0) and ``k`` of its other candidates."""
    n, p = candidates.shape[:2]
    scores = torch.rand(n, p, generator=generator).to(candidates.device)
    scores[torch.arange(n), positive] = -1.0  # the positive sorts first
    keep = scores.argsort(dim=1)[:, : k + 1]
    chosen = torch.gather(candidates, 1, keep[..., None].expand(-1, -1, candidates.shape[2]))
    return chosen, torch.zeros(n, dtype=torch.long, device=candidates.device)


def ndcr_loss(z: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``Σ_q (z_iq − H_iq)²`` (the paper's NDCR)."""
    return (z - target).pow(2).sum(dim=1).mean()


class FedDifRC(TeacherGuided):
    name = "feddifrc"
    Params = FedDifRCParams
    uploads = ("model",)

    def __init__(self, params: FedDifRCParams, setup: AlgorithmSetup) -> None:
        _validate(params, setup)
        super().__init__(resolve_auto_dims(params, setup, DIM_CAPS, self.name), setup)

    def teacher_requests(self) -> TeacherRequests:
        """TDCL's class-conditioned candidates and NDCR's null-prompt target, per client sample."""
        p = self.params
        requests = []
        if p.lambda_tdcl:
            requests.append(self.feature_request(TDCL, self.tdcl_prompts(), conditioned=p.inject_encoding))
        if p.lambda_ndcr:
            requests.append(
                self.feature_request(NDCR, (VISUAL_PROMPT if p.self_supervised else NULL_PROMPT,))
            )
        return TeacherRequests(features=tuple(requests))

    def tdcl_prompts(self) -> tuple[str, ...]:
        """Class prompts; the self-supervised variant puts "a similar object" first."""
        names = class_prompts(self.setup.class_names, self.params.template)
        return (SIMILAR_PROMPT, *names) if self.params.self_supervised else tuple(names)

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> Tensor | None:
        """With ``inject_encoding``: this round's TDCL candidates of every local sample, conditioned
        on the received model's encodings (N×C×D); otherwise nothing (they come with the batch)."""
        if not (self.params.lambda_tdcl and self.params.inject_encoding):
            return None
        return data.conditioned_targets(TDCL, model)

    def local_loss(self, model: nn.Module, batch: Batch, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``L_CE + λ_TDCL · L_TDCL + λ_NDCR · L_NDCR``."""
        p = self.params
        features, logits = model(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        z = self.project(model, features)
        if p.lambda_tdcl:
            tdcl_targets = batch.targets[TDCL] if context is None else context[batch.rows].to(z.device)
            candidates = tdcl_targets.float()
            positive = torch.zeros_like(batch.labels) if p.self_supervised else batch.labels
            loss = loss + p.lambda_tdcl * tdcl_loss(z, candidates, positive, p.temperature, p.num_negatives)
        if p.lambda_ndcr:
            loss = loss + p.lambda_ndcr * ndcr_loss(z, batch.targets[NDCR].float())
        return loss, logits


def _validate(p: FedDifRCParams, setup: AlgorithmSetup) -> None:
    max_negatives = setup.num_classes if p.self_supervised else setup.num_classes - 1
    checks = [
        (p.lambda_tdcl >= 0 and p.lambda_ndcr >= 0, "lambda_tdcl and lambda_ndcr must be >= 0"),
        (p.temperature > 0, f"temperature must be > 0, got {p.temperature}"),
        (
            0 <= p.num_negatives <= max_negatives,
            f"num_negatives must be in [0, {max_negatives}], got {p.num_negatives}",
        ),
    ]
    require_all(checks + teacher_param_checks(p), FedDifRC.name)
