"""FedRCL (Seo, Kim, Kim and Han, "Relaxed Contrastive Learning for Federated Learning", CVPR 2024).

Local training adds a relaxed supervised contrastive loss to cross-entropy; the server is FedAvg.
For one batch of features ``z`` (cosine similarities ``s_ij``, labels ``y``) the loss implemented is

``L_RCL = L_SCL + w_pen · L_pen``

* ``L_SCL`` -- supervised contrastive learning over the batch (SupCon, L^sup_out form):
  ``−(1/|P_i|) Σ_{p∈P_i} log( exp(s_ip/τ) / Σ_{a≠i} exp(s_ia/τ) )`` with ``P_i`` the other samples
  of ``i``'s class, averaged over the anchors that have a positive. The paper derives it from the
  gradient-deviation analysis (Sec. 4).
* ``L_pen`` -- the divergence penalty that relaxes SCL and prevents representation collapse: with
  ``P_i^λ = {j ∈ P_i : s_ij > λ}``,
  ``−log( exp(1/τ) / (exp(1/τ) + Σ_{j∈P_i^λ} exp(s_ij/τ)) )``, i.e. each anchor is contrasted
  against itself with its too-similar same-class samples as negatives; zero when no same-class
  pair is more similar than λ. Averaged over all anchors.

and the local objective is ``L = CE + w_rcl · mean_l L_RCL^(l)`` over feature levels ``l``
(multi-level RCL, the paper's extension to intermediate representations): for a ResNet the
globally average-pooled outputs of the stem and of stages 1–3, plus the final (pooled stage-4)
features -- five levels, as in the authors' released configuration; for any other model only the
final features (the paper defines the levels for ResNets).

Both terms are pure functions in :mod:`semanticfl.algorithms.contrastive`. Equation numbers are not
cited: the exact forms were reconstructed from the method description and the authors' public
configuration, not checked against a copy of the numbered equations. Deliberate differences from the
authors' public code: the code mines, per anchor, only the hardest positive and the two hardest
negatives and pads the penalty's empty entries with similarity −1; here every pair counts as in
the equations above. The code also takes the intermediate features before the last ReLU and clips
gradient norms at 10; neither is done here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from semanticfl.algorithms.base import Algorithm, Arrays, Batch, ClientTask, LocalData, LocalSettings
from semanticfl.algorithms.contrastive import relaxed_contrastive_penalty, supervised_contrastive
from semanticfl.errors import UserError
from semanticfl.models.resnet import ResNet


@dataclass
class FedRCLParams:
    """FedRCL's hyperparameters; defaults from the authors' released configuration for the paper.

    ``temperature`` τ of both terms (0.05); ``threshold`` λ above which a same-class pair is
    penalised (0.7); ``penalty_weight`` weight of the divergence penalty inside ``L_RCL`` (1);
    ``rcl_weight`` weight of ``L_RCL`` against cross-entropy (1); ``multi_level`` applies the loss
    to intermediate ResNet features too (the paper's full method).
    """

    temperature: float = 0.05
    threshold: float = 0.7
    penalty_weight: float = 1.0
    rcl_weight: float = 1.0
    multi_level: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"algorithm.fedrcl.temperature must be > 0, got {self.temperature}")
        if not -1.0 <= self.threshold <= 1.0:
            raise UserError(
                f"algorithm.fedrcl.threshold is a cosine similarity in [-1, 1], got {self.threshold}"
            )
        if self.penalty_weight < 0:
            raise UserError(f"algorithm.fedrcl.penalty_weight must be >= 0, got {self.penalty_weight}")
        if self.rcl_weight < 0:
            raise UserError(f"algorithm.fedrcl.rcl_weight must be >= 0, got {self.rcl_weight}")


@dataclass
class _Context:
    captured: list[Tensor] = field(default_factory=list)
    """Outputs of the intermediate levels from the latest forward pass."""
    handles: list[RemovableHandle] = field(default_factory=list)


def intermediate_levels(model: nn.Module) -> list[nn.Module]:
    """Modules whose outputs are RCL levels besides the final features (ResNet: stem, stages 1–3)."""
    if isinstance(model, ResNet):
        return [model.stem, *list(model.stages)[:-1]]
    return []


def pooled(output: Tensor) -> Tensor:
    """A level's representation: global average pooling of feature maps, vectors unchanged."""
    if output.dim() == 4:
        return F.adaptive_avg_pool2d(output, 1).flatten(1)
    return output.flatten(1)


class FedRCL(Algorithm):
    """FedRCL: cross-entropy plus the relaxed supervised contrastive loss; FedAvg on the server."""

    name = "fedrcl"
    Params = FedRCLParams
    uploads = ("model",)

    def relaxed_contrastive_loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """``L_RCL = L_SCL + w_pen · L_pen`` on one level's features."""
        p = self.params
        loss = supervised_contrastive(features, labels, p.temperature)
        if p.penalty_weight:
            loss = loss + p.penalty_weight * relaxed_contrastive_penalty(
                features, labels, p.temperature, p.threshold
            )
        return loss

    def begin_local(
        self, model: nn.Module, data: LocalData, task: ClientTask, settings: LocalSettings
    ) -> _Context:
        """Capture the intermediate levels' outputs with forward hooks (removed in ``end_local``)."""
        context = _Context()
        if self.params.multi_level:
            for module in intermediate_levels(model):
                context.handles.append(
                    module.register_forward_hook(lambda _m, _i, out: context.captured.append(out))
                )
        return context

    def local_loss(self, model: nn.Module, batch: Batch, context: _Context) -> tuple[Tensor, Tensor]:
        """``CE + w_rcl · mean_l L_RCL(z^(l))`` over the levels captured in this forward pass."""
        images, labels = batch.images, batch.labels
        context.captured.clear()
        features, logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if self.params.rcl_weight:
            levels = [pooled(out) for out in context.captured] + [features]
            rcl = sum(self.relaxed_contrastive_loss(z, labels) for z in levels) / len(levels)
            loss = loss + self.params.rcl_weight * rcl
        context.captured.clear()
        return loss, logits

    def end_local(self, model: nn.Module, context: _Context, task: ClientTask, steps: int) -> Arrays:
        for handle in context.handles:
            handle.remove()
        context.handles.clear()
        return {}
