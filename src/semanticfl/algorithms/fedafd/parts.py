"""FedAFD's parts as functions of tensors: BAA's discriminator and losses, GFF's gates, SED's weights and
distillation loss. Each takes the option (:mod:`~semanticfl.algorithms.fedafd.params`) that tells the
paper's form from the public code's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- BAA


class Discriminator(nn.Module):
    """``MLP d→128→64→1``. With ``output = "logit"`` it returns the logit z (D = σ(z), the paper's D);
    with ``"sigmoid"`` it ends in ``Sigmoid()`` as the code's does and returns σ(z), which the losses
    below then read as a logit, as the code's ``binary_cross_entropy_with_logits`` does: D = σ(σ(z)).
    Sigmoid has no parameters, so both have the same state keys."""

    def __init__(self, dim: int, output: str = "logit") -> None:
        super().__init__()
        layers = [nn.Linear(dim, 128), nn.LeakyReLU(0.2), nn.Linear(128, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)]
        self.net = nn.Sequential(*layers, *([nn.Sigmoid()] if output == "sigmoid" else []))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)


def discriminator_loss(global_logits: Tensor, local_logits: Tensor, weight: float = 1.0) -> Tensor:
    """``−weight · [mean log D(g) + mean log(1 − D(f))]``, D = σ(logit): the negative of L_adv, which D
    maximises (weight 1), or the code's ``(BCE(D(g), 1) + BCE(D(f), 0)) · interintra_weight``
    (weight 0.5), the same expression."""
    return weight * (F.softplus(-global_logits).mean() + F.softplus(local_logits).mean())


def encoder_adversarial_loss(local_logits: Tensor, beta: float, kind: str = "minimax") -> Tensor:
    """What the encoder minimises to fool D into calling f global: the paper's ``β · mean log(1 − D(f))``
    (``minimax``), or the non-saturating ``β · mean(−log D(f))`` (Goodfellow et al.; the code's BCE
    of D(f) against the "real" label), which has the same fixed point but stops pushing once D is
    fooled instead of pushing hardest there."""
    if kind == "nonsaturating":
        return beta * F.softplus(-local_logits).mean()
    return -beta * F.softplus(local_logits).mean()


def batchnorm_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of ``module``'s BatchNorm layers: all that the code's apex-O2 image-text
    clients move in a BAA step (``pair_baa_batchnorm_only``)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return [p for m in norms for p in m.parameters()]


# --------------------------------------------------------------------------- GFF


def _bottleneck(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.BatchNorm1d(dim))


class GranularityFusion(nn.Module):
    """``h = M1(i_c+i_g)⊙i_c + (1−M1(i_c+i_g))⊙i_g``; ``ĩ = M2(h)⊙i_c + (1−M2(h))⊙i_g``.

    ``second_gate = "same"``: the paper's one gate, M1 = M2 = σ(T1(x) + T2(x)). ``"code"``: the code's
    ``iAFF``, M1 = σ(T1(x) + T2(x)) and M2 = σ(T1'(x) + T2(x)) (``local_att2`` with the first stage's
    ``global_att``). The bottlenecks are 256→64→256 with BatchNorm (the code's kernel-1 Conv1d and
    its average pool over a length-1 axis are these Linear layers).
    """

    def __init__(self, dim: int, hidden: int = 64, second_gate: str = "same") -> None:
        super().__init__()
        self.t1 = _bottleneck(dim, hidden)
        self.t2 = _bottleneck(dim, hidden)
        self.t1_second = _bottleneck(dim, hidden) if second_gate == "code" else None

    def gate(self, x: Tensor, second: bool = False) -> Tensor:
        t1 = self.t1_second if second and self.t1_second is not None else self.t1
        return torch.sigmoid(t1(x) + self.t2(x))

    def forward(self, local: Tensor, global_: Tensor) -> Tensor:
        first = self.gate(local + global_)
        h = first * local + (1 - first) * global_
        second = self.gate(h, second=True)
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


def distillation_loss(features: Tensor, teacher: Tensor, reduction: str = "sum") -> Tensor:
    """SED's ``MSE(f, m_agg)`` over a batch (N×d): ``sum`` = ``mean_k ‖f_k − m_agg,k‖²`` (summed over the
    d dims), ``mean`` = the code's ``nn.MSELoss()``, also averaged over the dims (1/d of ``sum``)."""
    squared = (features - teacher).pow(2)
    return squared.mean() if reduction == "mean" else squared.sum(1).mean()
