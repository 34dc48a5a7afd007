"""Pieces shared by multimodal, model-heterogeneous algorithms (FedAFD and its baselines).

* :class:`ClientSpec` -- a client's kind (``image`` / ``text`` classification, ``pair`` image-text
  retrieval) and architectures, parsed from entries like ``"image:cnn"``, ``"text:gru"``,
  ``"pair:cnn+bow"``;
* :func:`class_level_info_nce` -- the retrieval loss under class-level pairing;
* :func:`retrieval_recalls` -- R@K in both directions and their sum (rsum);
* :func:`pair_recalls` -- the same on test pairs, class-level or per image;
* :func:`encode` -- batched, gradient-free features of a whole set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semanticfl.data.multimodal import ModalData
from semanticfl.errors import UserError
from semanticfl.models.multimodal import image_architectures, text_architectures

KINDS = ("image", "text", "pair")
RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class ClientSpec:
    """What a client holds and which encoders it trains."""

    kind: str
    image_arch: str = ""
    text_arch: str = ""

    @property
    def has_image(self) -> bool:
        return self.kind in ("image", "pair")

    @property
    def has_text(self) -> bool:
        return self.kind in ("text", "pair")


def parse_client_spec(entry: str, where: str) -> ClientSpec:
    """``"image:cnn"`` / ``"text:gru"`` / ``"pair:cnn+gru"`` → :class:`ClientSpec`, checked."""
    kind, _, archs = entry.partition(":")
    usage = f'{where} = {entry!r}: write "image:<arch>", "text:<arch>" or "pair:<image arch>+<text arch>"'
    if kind not in KINDS or not archs:
        raise UserError(usage)
    if kind == "pair":
        image_arch, plus, text_arch = archs.partition("+")
        if not plus:
            raise UserError(usage)
    else:
        image_arch, text_arch = (archs, "") if kind == "image" else ("", archs)
    if image_arch and image_arch not in image_architectures():
        raise UserError(f"{where}: unknown image architecture {image_arch!r}; choose one of: {', '.join(image_architectures())}")
    if text_arch and text_arch not in text_architectures():
        raise UserError(f"{where}: unknown text architecture {text_arch!r}; choose one of: {', '.join(text_architectures())}")
    return ClientSpec(kind, image_arch, text_arch)


@dataclass
class MultimodalClientData:
    """A client's private data, the shared public set and the test set of its task."""

    partition_id: int
    spec: ClientSpec
    private: ModalData
    public: ModalData
    test: ModalData
    train_transform: Callable[[Tensor, torch.Generator | None], Tensor]
    eval_transform: Callable[[Tensor, torch.Generator | None], Tensor]

    def __len__(self) -> int:
        return len(self.private)


def batches(data: ModalData, batch_size: int, generator: torch.Generator | None) -> list[ModalData]:
    """One pass over ``data`` in minibatches, shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [data.rows(order[start : start + batch_size]) for start in range(0, n, batch_size)]


def class_level_info_nce(image: Tensor, text: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE where every same-class item is a positive (class-level pairing).

    ``S = I Tᵀ / τ`` on unit features; the target of row ``i`` is uniform over ``{j : y_j = y_i}``:
    ``L = ½ [CE(S, P) + CE(Sᵀ, P)]`` with ``P_ij = 1[y_i = y_j] / |{j : y_j = y_i}|``. With one
    sample per class it is CLIP's loss. With pair ids as labels (FedAFD's paper benchmark: the
    row of the image a caption describes), ``P`` is the identity whenever a batch holds each image
    once, so this is the ordinary image-text InfoNCE; two captions of one image in a batch are
    each other's positives with weight ½ (a multi-positive InfoNCE).
    """
    logits = image @ text.T / temperature
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@torch.no_grad()
def retrieval_recalls(
    image: Tensor, text: Tensor, image_labels: Tensor, text_labels: Tensor, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Class-level R@K (%) image→text and text→image, and rsum (their sum over K and directions).

    A query counts as retrieved at K if one of its K most similar items of the other modality has
    its class.
    """
    sims = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    result: dict[str, float] = {}
    for name, scores, query, gallery in (
        ("i2t", sims, image_labels, text_labels),
        ("t2i", sims.T, text_labels, image_labels),
    ):
        top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
        hits = gallery[top] == query[:, None]
        for k in ks:
            result[f"r{k}_{name}"] = 100.0 * hits[:, :k].any(dim=1).float().mean().item()
    result["rsum"] = sum(result.values())
    return result


@torch.no_grad()
def pair_recalls(
    image: Tensor, text: Tensor, labels: Tensor, relevance: str, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """R@K both ways and rsum on test pairs (one row per (image, text) pair, ``labels`` per row).

    ``relevance="class"``: class-level, every row is a query (:func:`retrieval_recalls`).
    ``relevance="image"``: ``labels`` are pair ids (the image's row, shared by its captions); each
    image enters once, with its first row's feature, so image→text asks for any of the image's
    captions in the top K and text→image for its own image among the distinct images (the
    Flickr30k / COCO protocol).
    """
    if relevance == "class":
        return retrieval_recalls(image, text, labels, labels, ks)
    _, first = np.unique(labels.cpu().numpy(), return_index=True)
    first = torch.from_numpy(first).to(labels.device)
    return retrieval_recalls(image[first], text, labels[first], labels, ks)


@torch.no_grad()
def encode(encoder: nn.Module, inputs: Tensor, batch_size: int, transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Features of all of ``inputs`` (eval mode, no gradient), concatenated."""
    was_training = encoder.training
    encoder.eval()
    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        outputs.append(encoder(transform(chunk) if transform is not None else chunk))
    encoder.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0)
