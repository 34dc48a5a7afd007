"""FedAFD's hyperparameters (``[algorithm.fedafd]``) and its two variants.

``variant = "paper"`` runs the formulas as the paper writes them; ``variant = "code"`` runs what the public
code (Chao2433/FedAFD) does instead. Each difference between the two is one named option below, whose
default is the variant's (:data:`VARIANTS`); an option set explicitly wins over its variant's value, so
``variant = "code"`` with ``distill_mse = "sum"`` is the code with the paper's distillation loss.
docs/ALGORITHMS.md has the table of differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semanticfl.errors import UserError


class _FromVariant:
    """The default of an option that its ``variant`` decides (replaced in ``__post_init__``)."""

    def __repr__(self) -> str:
        return "<from variant>"


FROM_VARIANT: Any = _FromVariant()

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {
        "discriminator_output": "logit",
        "adversarial_loss": "minimax",
        "discriminator_weight": 1.0,
        "discriminator_optimizer": "sgd",
        "keep_discriminator_optimizer": False,
        "baa_every_epoch": False,
        "lr_decay_at": (),
        "gff_second_gate": "same",
        "gff_optimizer": "encoder",
        "gff_fresh_each_round": False,
        "distill_pass": "joint",
        "distill_mse": "sum",
        "distill_optimizer": "train",
        "distill_grad_clip": 0.0,
    },
    "code": {
        "discriminator_output": "sigmoid",
        "adversarial_loss": "nonsaturating",
        "discriminator_weight": 0.5,
        "discriminator_optimizer": "adam",
        "keep_discriminator_optimizer": True,
        "baa_every_epoch": True,
        "lr_decay_at": (0.5, 0.8),
        "gff_second_gate": "code",
        "gff_optimizer": "adam",
        "gff_fresh_each_round": True,
        "distill_pass": "separate",
        "distill_mse": "mean",
        "distill_optimizer": "adamp",
        "distill_grad_clip": 2.0,
    },
}
"""Each variant's value of every option it decides."""

CHOICES: dict[str, tuple[str, ...]] = {
    "variant": tuple(VARIANTS),
    "discriminator_output": ("logit", "sigmoid"),
    "adversarial_loss": ("minimax", "nonsaturating"),
    "discriminator_optimizer": ("sgd", "adam"),
    "gff_second_gate": ("same", "code"),
    "gff_optimizer": ("encoder", "adam"),
    "distill_pass": ("joint", "separate"),
    "distill_mse": ("sum", "mean"),
    "distill_optimizer": ("train", "adamp"),
    "aggregation": ("sed", "mean", "creamfl"),
    "benchmark": ("class_level", "paper"),
}
"""The allowed values of each string option."""


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
    variant: str = "paper"
    """``paper`` (the formulas as written) or ``code`` (what the public code runs); sets the defaults of
    the options marked *variant* below."""

    # ---- BAA
    beta: float = 0.5
    """BAA's weight on the encoders' adversarial loss (the code's ``interintra_weight``)."""
    discriminator_output: str = FROM_VARIANT
    """*variant*. ``logit``: D's last layer is its logit, D = σ(logit) (the paper's D). ``sigmoid``: the
    code's D ends in ``Sigmoid()`` and its losses are BCE-with-logits *on that output*, so D's
    probability is σ(σ(z)) ∈ (0.5, 0.731)."""
    adversarial_loss: str = FROM_VARIANT
    """*variant*. The encoder's loss: ``minimax`` (the paper's log(1 − D)) or ``nonsaturating`` (−log D:
    the code's BCE of D(f) against the "real" label)."""
    discriminator_weight: float = FROM_VARIANT
    """*variant*. D's loss weight: 1 (paper, D maximises L_adv) or 0.5 (the code's ``interintra_weight``
    on D's loss too)."""
    discriminator_optimizer: str = FROM_VARIANT
    """*variant*. ``sgd`` (``[train]``'s lr and momentum) or ``adam`` (lr ``discriminator_lr``, the code's
    ``optim.Adam(D.parameters(), lr=0.0001)``)."""
    discriminator_lr: float = 1e-4
    """Adam's lr for the discriminators (used with ``discriminator_optimizer = "adam"``)."""
    keep_discriminator_optimizer: bool = FROM_VARIANT
    """*variant*. Keep D's optimiser state (Adam's moments, SGD's momentum) in the client state across
    rounds, as the code's long-lived trainer objects do; otherwise it is re-created each round."""
    baa_epochs: int = 1
    """BAA passes over the public set: at the start of the round, or before each local epoch."""
    baa_every_epoch: bool = FROM_VARIANT
    """*variant*. ``false``: ``baa_epochs`` passes at the start of the round; ``true``: before each of
    the ``train.local_epochs`` epochs (the code's ``tra`` runs BAA, then one epoch of the task)."""
    pair_baa_batchnorm_only: bool = False
    """The code's bug, kept only as this switch (off in both variants): its image-text clients run under
    apex O2, and their BAA backward bypasses ``amp.scale_loss``, so the encoders' fp32 master weights
    get no BAA gradient and the step moves only BatchNorm parameters. ``true`` drops every other
    encoder gradient of an image-text client's BAA step."""

    # ---- local task
    lr_decay_at: tuple[float, ...] = FROM_VARIANT
    """*variant*. Fractions of ``train.rounds`` at which image and text clients' encoder lr is multiplied
    by ``lr_decay_factor``: the code's ``lr_scheduler`` (×0.1 at 50 % and 80 % of the rounds; its
    image-text clients never step theirs, so they keep ``train.lr``). Empty: constant lr."""
    lr_decay_factor: float = 0.1

    # ---- GFF
    gff_second_gate: str = FROM_VARIANT
    """*variant*. ``same``: the paper's M applied twice, M(x) = σ(T1(x) + T2(x)). ``code``: the second
    stage's gate is σ(T1'(h) + T2(h)), a second T1' with the first stage's T2 (the code's
    ``local_att2`` + ``global_att``; its ``global_att2`` is built and never used, so it is not built
    here)."""
    gff_optimizer: str = FROM_VARIANT
    """*variant*. ``encoder``: the gates train with the encoders (one SGD); ``adam``: by their own Adam
    (``gff_lr``, ``gff_weight_decay``; image-text clients ``pair_gff_lr``, ``pair_gff_weight_decay``),
    re-created each round as the code's ``optim.Adam(self.iaff.parameters(), ...)`` is."""
    gff_lr: float = 5e-3
    gff_weight_decay: float = 0.01
    pair_gff_lr: float = 1e-4
    pair_gff_weight_decay: float = 0.1
    gff_fresh_each_round: bool = FROM_VARIANT
    """*variant*. Re-initialise the gates at the start of every round (the code builds a new ``iAFF()``
    in each ``run``), seeded by (seed, client, round); otherwise they persist in the client state."""
    gff: bool = True

    # ---- SED and the server
    gamma: float = 0.4
    """SED's distillation weight on the server (the code's ``kd_weight``)."""
    distill_pass: str = FROM_VARIANT
    """*variant*. ``joint``: γ·MSE is added to the retrieval loss in the server's epoch (the paper's one
    objective); ``separate``: one distillation pass over the public set first (the code's
    ``MMFL.distill``), then ``server_epochs`` of the retrieval loss."""
    distill_mse: str = FROM_VARIANT
    """*variant*. ``sum``: the squared distance summed over the d dims (averaged over samples); ``mean``:
    ``nn.MSELoss()``, averaged over samples and dims (1/d of it)."""
    distill_optimizer: str = FROM_VARIANT
    """*variant*. ``train``: SGD with ``[train]``'s settings; ``adamp``: AdamP (Heo et al., ICLR 2021) at
    ``distill_lr``, its state kept across rounds in the server state (the code's server optimiser).
    Used by the separate pass only; the joint pass has the retrieval loss's SGD."""
    distill_lr: float = 1e-5
    distill_grad_clip: float = FROM_VARIANT
    """*variant*. Max gradient norm in the separate distillation pass (0 = no clipping; the code: 2)."""
    sed_temperature: float = 1.0
    aggregation: str = "sed"
    server_epochs: int = 1
    temperature: float = 0.07
    """Of the retrieval loss (clients and server)."""
    baa: bool = True
    collaborate: bool = True

    # ---- data
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

    def __post_init__(self) -> None:
        """Fill the options left to the variant, then check every choice and range."""
        if self.variant not in VARIANTS:
            raise UserError(f"algorithm.fedafd.variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name, value in VARIANTS[self.variant].items():
            if getattr(self, name) is FROM_VARIANT:
                setattr(self, name, value)
        check(self)


_AT_LEAST_ONE = ("feature_dim", "baa_epochs", "server_epochs", "max_sentences_per_class",
                 "max_vocabulary", "public_pairs", "server_test_images", "flickr_test_images")
_NON_NEGATIVE = ("beta", "gamma", "test_size", "target_rsum", "discriminator_weight", "gff_weight_decay",
                 "pair_gff_weight_decay", "distill_grad_clip")
_POSITIVE = ("sed_temperature", "temperature", "discriminator_lr", "gff_lr", "pair_gff_lr", "distill_lr",
             "lr_decay_factor")


def check(p: FedAFDParams) -> None:
    """A one-line ``UserError`` for the first option out of its choices or range."""
    for name, allowed in CHOICES.items():
        if getattr(p, name) not in allowed:
            raise UserError(f"algorithm.fedafd.{name} must be one of {', '.join(allowed)}, got {getattr(p, name)!r}")
    for names, ok, what in ((_AT_LEAST_ONE, lambda v: v >= 1, ">= 1"), (_NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
                            (_POSITIVE, lambda v: v > 0, "> 0")):
        for name in names:
            if not ok(getattr(p, name)):
                raise UserError(f"algorithm.fedafd.{name} must be {what}, got {getattr(p, name)}")
    for name in ("text_public_fraction", "text_test_fraction"):
        if not 0 < getattr(p, name) < 0.5:
            raise UserError(f"algorithm.fedafd.{name} must be in (0, 0.5), got {getattr(p, name)}")
    if not all(0 <= f <= 1 for f in p.lr_decay_at):
        raise UserError(f"algorithm.fedafd.lr_decay_at must hold fractions of the rounds in [0, 1], got {list(p.lr_decay_at)}")

