"""FedAFD (Ding et al., "FedAFD: Multimodal Federated Learning via Adversarial Fusion and
Distillation", CVPR 2026, arXiv 2603.04890).

Clients of three kinds -- image classification, text classification, image-text retrieval --
with their own architectures, all producing L2-normalised features of one dimension ``d``. The
server holds an image-text model trained on a public paired set. **No client parameters leave a
client**: a client uploads only its features of the public set. One round ``t``:

1. *Server → clients*: the global model (its image and text encoders, used frozen) and its
   features of the public set, ``i_g, t_g`` (P×d each) -- :meth:`FedAFD.server_payload`.
2. *Client* (:meth:`FedAFD.local_train`, :mod:`.client`):

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

**Variants** (``algorithm.fedafd.variant``, :mod:`.params`): ``paper`` runs the formulas above;
``code`` runs what the public code (Chao2433/FedAFD) does -- a double-sigmoid discriminator, the
non-saturating encoder loss, both BAA losses × 0.5, D by Adam 1e-4 with its state kept across
rounds, one BAA pass before each local epoch, the encoder lr decayed ×0.1 at 50 % and 80 % of the
rounds, the code's second GFF gate re-created each round under Adam, and SED's distillation as a
separate pass on a mean-MSE under AdamP 1e-5 with gradient clipping 2. Each difference is one
option of :class:`FedAFDParams`; docs/ALGORITHMS.md tables them.

Switches for the paper's ablations and baselines (``[algorithm.fedafd]``): ``baa = false``
(no BAA), ``gff = false`` (the local feature alone), ``aggregation = "mean"`` (no SED: the plain
average of client features), ``aggregation = "creamfl"`` (CreamFL-style contrastive ensemble, see
:func:`creamfl_weights`), ``collaborate = false`` (LOCAL: clients train alone, the server on the
public set alone, nothing is exchanged but the engine's model broadcast, which clients ignore).

Data (``benchmark``): ``class_level`` is the offline class-level image-text benchmark (CIFAR-10 +
WordNet sentences, :func:`~semanticfl.data.multimodal.class_level_benchmark`); ``paper`` is the
paper's setup from user paths -- CIFAR-100 image clients, AG_NEWS text clients, Flickr30k image-text
clients, COCO public and server-test pairs (:func:`~semanticfl.data.paper_sets.paper_benchmark`),
with image heads of 100 classes and text heads of 4, and retrieval relevance per image.

Deviations (see docs/ALGORITHMS.md): the paper's server uses a PCME loss (ResNet-101 + BERT) and its
image-text clients PCME; here both use a class-level symmetric InfoNCE
(:func:`~semanticfl.algorithms.multimodal.class_level_info_nce`), since the offline benchmark pairs
at class level. On the paper benchmark the labels are pair ids (one per image), so the same loss is
the ordinary image-text InfoNCE: the public set holds each image once (the identity target), and
in an image-text client's batch only captions of the same image are positives. In ``paper``, "MSE"
is the per-sample squared distance (summed over the d dims), ``M`` is one gate applied twice, as
the formula writes it, BAA runs ``baa_epochs`` passes over the public set at the start of a round,
then ``train.local_epochs`` epochs of the local task, and client models, discriminators and gates
persist in the client state while their optimisers are re-created each round.
"""

from semanticfl.algorithms.fedafd.algorithm import PAPER_PATHS, FedAFD, FedAFDRunSettings, check_path
from semanticfl.algorithms.fedafd.client import AdversarialAlignment, LocalModel, LocalTask
from semanticfl.algorithms.fedafd.optim import AdamP, decayed_lr, load_optimizer_arrays, optimizer_arrays
from semanticfl.algorithms.fedafd.params import VARIANTS, FedAFDParams
from semanticfl.algorithms.fedafd.parts import (
    Discriminator,
    GranularityFusion,
    batchnorm_parameters,
    creamfl_weights,
    discriminator_loss,
    distillation_loss,
    encoder_adversarial_loss,
    ensemble,
    sed_weights,
)

__all__ = [
    "PAPER_PATHS", "VARIANTS", "AdamP", "AdversarialAlignment", "Discriminator", "FedAFD", "FedAFDParams",
    "FedAFDRunSettings",
    "GranularityFusion", "LocalModel", "LocalTask", "batchnorm_parameters", "check_path", "creamfl_weights",
    "decayed_lr", "discriminator_loss", "distillation_loss", "encoder_adversarial_loss", "ensemble",
    "load_optimizer_arrays", "optimizer_arrays", "sed_weights",
]
