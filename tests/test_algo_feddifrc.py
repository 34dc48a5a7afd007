"""FedDifRC: TDCL and NDCR on hand-made tensors, the pairing of anchors, requests and local training."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from semanticfl.algorithms import build_algorithm
from semanticfl.algorithms.base import AlgorithmSetup, Batch, ClientTask, LocalData, LocalSettings
from semanticfl.algorithms.feddifrc import NDCR, TDCL, ndcr_loss, tdcl_loss
from semanticfl.errors import UserError
from semanticfl.models import build_model
from semanticfl.teachers.base import TeacherShape

SETUP = AlgorithmSetup(num_classes=3, class_names=("cat", "dog", "sea_lion"), num_clients=2, seed=0)


def test_tdcl_value_on_a_hand_made_batch():
    # anchor 0 = e1, its candidates (e1, e2): s_pos = 1, s_neg = 0 → log(1 + e^{(0-1)/τ})
    # anchor 1 = e2, its candidates (e1, (e1+e2)/√2), positive = the second: s_pos = 1/√2, s_neg = 0
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]])
    positive = torch.tensor([0, 1])
    tau = 0.5
    expected = (math.log1p(math.exp(-1 / tau)) + math.log1p(math.exp(-(2**-0.5) / tau))) / 2
    assert tdcl_loss(z, candidates, positive, tau, 0).item() == pytest.approx(expected, rel=1e-6)
    # pairing each anchor with the other sample's candidates (the public code's tiling) gives
    # anchor 0: s_pos = 1, s_neg = 1/√2; anchor 1: s_pos = 1, s_neg = 0 -- another value
    swapped = tdcl_loss(z, candidates.flip(0), positive, tau, 0).item()
    tiled = (math.log1p(math.exp((2**-0.5 - 1) / tau)) + math.log1p(math.exp(-1 / tau))) / 2
    assert swapped == pytest.approx(tiled, rel=1e-6)
    assert abs(swapped - expected) > 0.1


def test_tdcl_gradient_moves_the_anchor_towards_its_positive():
    z = torch.tensor([[0.6, 0.8]], requires_grad=True)
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    tdcl_loss(z, candidates, torch.tensor([0]), 0.04, 0).backward()
    stepped = z.detach() - 0.01 * z.grad
    cos = lambda v, c: float(v @ c / v.norm())  # noqa: E731
    assert cos(stepped[0], torch.tensor([1.0, 0.0])) > cos(z.detach()[0], torch.tensor([1.0, 0.0]))


def test_tdcl_with_fewer_negatives_keeps_the_positive():
    torch.manual_seed(0)
    z = torch.randn(4, 5)
    candidates = torch.randn(4, 6, 5)
    positive = torch.tensor([0, 3, 5, 2])
    # with one negative per anchor the loss is log(1 + exp((s_neg - s_pos)/τ)) for some negative j ≠ y
    loss = tdcl_loss(z, candidates, positive, 1.0, 1, torch.Generator().manual_seed(0))
    sims = torch.nn.functional.cosine_similarity(z[:, None], candidates, dim=-1)
    per_anchor = [
        [math.log1p(math.exp(float(sims[i, j] - sims[i, positive[i]]))) for j in range(6) if j != positive[i]]
        for i in range(4)
    ]
    lo = sum(min(v) for v in per_anchor) / 4
    hi = sum(max(v) for v in per_anchor) / 4
    assert lo - 1e-6 <= loss.item() <= hi + 1e-6
    assert loss.item() < tdcl_loss(z, candidates, positive, 1.0, 0).item()


def test_ndcr_is_the_squared_l2_distance_and_pulls_towards_the_target():
    z = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    loss = ndcr_loss(z, target)
    assert loss.item() == pytest.approx((5.0 + 4.0) / 2)
    loss.backward()
    np.testing.assert_allclose(z.grad.numpy(), (z.detach() - target).numpy())  # 2(z−H)/N, N = 2


SD21 = TeacherShape(latent_channels=4, up_channels=(1280, 1280, 640, 320), text_dim=1024)
"""Stable Diffusion 2.1's widths: 4-channel latent, up-blocks 0..3, OpenCLIP-H text."""
SD_SETUP = dataclasses.replace(SETUP, teacher_shape=lambda: SD21)


def test_requests_follow_the_paper_and_the_options():
    algo = build_algorithm("feddifrc", {}, SD_SETUP)
    tdcl, ndcr = algo.teacher_requests().features
    assert tdcl.name == TDCL and tdcl.prompts == ("a photo of a cat", "a photo of a dog", "a photo of a sea lion")
    assert ndcr.name == NDCR and ndcr.prompts == ("",)
    assert tdcl.timestep == ndcr.timestep == 300 and tdcl.dim == 512
    assert tdcl.per_sample_shape() == (3, 512) and ndcr.per_sample_shape() == (512,)
    only_ndcr = build_algorithm("feddifrc", {"lambda_tdcl": 0.0, "timestep": 150}, SD_SETUP)
    assert [r.name for r in only_ndcr.teacher_requests().features] == [NDCR]
    assert only_ndcr.teacher_requests().features[0].timestep == 150
    selfsup = build_algorithm("feddifrc", {"self_supervised": True}, SD_SETUP)
    tdcl, ndcr = selfsup.teacher_requests().features
    assert tdcl.prompts[0] == "a photo of a similar object" and len(tdcl.prompts) == 4
    assert ndcr.prompts == ("a photo of a visual object",)


@pytest.mark.parametrize(
    "params",
    [{"temperature": 0.0}, {"timestep": 1000}, {"layers": ["up1"], "layer_dims": [1, 2]},
     {"layers": ["mid"], "layer_dims": [8]}, {"num_negatives": 3}, {"projection": "mlp"}],
)
def test_bad_hyperparameters_are_user_errors(params):
    with pytest.raises(UserError, match="algorithm.feddifrc"):
        build_algorithm("feddifrc", params, SETUP)


def test_auto_layer_dims_are_the_public_codes_capped_by_the_teachers_channels():
    """256/128/128 on SD's 1280/640/320-channel blocks 1, 2, 3; the offline teacher's 128/128/64 cap them."""
    assert build_algorithm("feddifrc", {}, SD_SETUP).params.layer_dims == (256, 128, 128)
    offline = TeacherShape(latent_channels=32, up_channels=(128, 128, 64), text_dim=384)
    algo = build_algorithm("feddifrc", {}, dataclasses.replace(SETUP, teacher_shape=lambda: offline))
    assert algo.params.layer_dims == (128, 128, 64) and algo.teacher_dim == 320
    two = build_algorithm("feddifrc", {"layers": ["up-2", "up-1"]}, SD_SETUP)
    assert two.params.layer_dims == (256, 128)  # the caps go by position
    explicit = build_algorithm("feddifrc", {"layer_dims": [8, 4, 4]}, SETUP)  # no teacher needed
    assert explicit.params.layer_dims == (8, 4, 4)
    with pytest.raises(UserError, match="algorithm.feddifrc: layer_dims = 'auto'.*explicit values"):
        build_algorithm("feddifrc", {}, SETUP)
    with pytest.raises(UserError, match="layer 'up-5' of algorithm.feddifrc.layers does not exist"):
        build_algorithm("feddifrc", {"layers": ["up-5"]}, SD_SETUP)


def test_projection_is_identity_when_dimensions_agree_and_linear_otherwise():
    algo = build_algorithm("feddifrc", {"layer_dims": [8, 4, 4]}, SETUP)
    model = algo.extend_model(build_model("cnn", 3, 1, 28))
    assert isinstance(model.teacher_projection, torch.nn.Linear) and model.teacher_projection.out_features == 16
    assert "teacher_projection.weight" in algo.trainable_parameter_names()
    same = build_algorithm("feddifrc", {"layer_dims": [64, 10, 10]}, SETUP)  # the CNN's 84-d features
    assert isinstance(same.extend_model(build_model("cnn", 3, 1, 28)).teacher_projection, torch.nn.Identity)


@pytest.mark.parametrize("term", ["tdcl", "ndcr"])
def test_local_training_reads_each_samples_own_targets_and_lowers_its_term(term):
    torch.manual_seed(0)
    n, dim = 48, 16
    labels = torch.arange(n) % 3
    # images and targets that a small CNN can relate: brightness and targets both follow the class
    images = (labels[:, None, None, None] * 80 + torch.randint(0, 30, (n, 1, 28, 28))).to(torch.uint8)
    class_vectors = torch.randn(3, dim)
    tdcl_targets = torch.nn.functional.normalize(torch.randn(n, 3, dim) + 2 * class_vectors, dim=-1)
    ndcr_targets = torch.nn.functional.normalize(class_vectors[labels] + 0.3 * torch.randn(n, dim), dim=-1)
    seen = []

    def targets(rows):
        seen.append(rows.copy())
        both = {TDCL: tdcl_targets[rows].half(), NDCR: ndcr_targets[rows].half()}
        return {name: both[name] for name in (r.name for r in algo.teacher_requests().features)}

    data = LocalData(images, labels, lambda x, g: x.float() / 255.0, targets=targets)
    other = "lambda_ndcr" if term == "tdcl" else "lambda_tdcl"
    algo = build_algorithm("feddifrc", {"layer_dims": [8, 4, 4], other: 0.0}, SETUP)
    model = algo.extend_model(build_model("cnn", 3, 1, 28))
    settings = LocalSettings(epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0)

    def terms():
        model.eval()
        with torch.no_grad():
            z = model.teacher_projection(model(images.float() / 255.0)[0])
        if term == "tdcl":
            return tdcl_loss(z, tdcl_targets, labels, 0.04, 0).item()
        return ndcr_loss(z, ndcr_targets).item()

    before = terms()
    for _ in range(15):
        algo.local_train(model, data, ClientTask(round=1), settings, torch.Generator().manual_seed(1))
    after = terms()
    assert sorted(np.concatenate(seen[:3]).tolist()) == list(range(n))  # one epoch = every row once
    assert after < 0.8 * before


def test_local_loss_is_ce_plus_both_terms():
    algo = build_algorithm("feddifrc", {"layer_dims": [8, 4, 4], "lambda_tdcl": 0.5, "lambda_ndcr": 2.0}, SETUP)
    model = algo.extend_model(build_model("cnn", 3, 1, 28)).eval()
    images = torch.rand(4, 1, 28, 28)
    labels = torch.tensor([0, 1, 2, 0])
    targets = {TDCL: torch.randn(4, 3, 16), NDCR: torch.randn(4, 16)}
    loss, logits = algo.local_loss(model, Batch(images, labels, targets), None)
    feats, logits2 = model(images)
    z = model.teacher_projection(feats)
    expected = (
        torch.nn.functional.cross_entropy(logits2, labels)
        + 0.5 * tdcl_loss(z, targets[TDCL], labels, 0.04, 0)
        + 2.0 * ndcr_loss(z, targets[NDCR])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_injected_encoding_targets_are_extracted_per_round_from_the_received_model():
    algo = build_algorithm("feddifrc", {"layer_dims": [8, 4, 4], "lambda_ndcr": 0.0, "inject_encoding": True}, SETUP)
    (tdcl,) = algo.teacher_requests().features
    assert tdcl.conditioned and tdcl.per_sample_shape() == (3, 16)
    model = algo.extend_model(build_model("cnn", 3, 1, 28))
    n = 8
    labels, images = torch.arange(n) % 3, torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8)
    candidates = torch.randn(n, 3, 16, generator=torch.Generator().manual_seed(3))
    calls = []

    def conditioned_targets(name, received):
        calls.append((name, received))
        return candidates

    data = LocalData(images, labels, lambda x, g: x.float() / 255.0, conditioned_targets=conditioned_targets)
    settings = LocalSettings(epochs=1, batch_size=3, lr=0.0, momentum=0.0, weight_decay=0.0)
    context = algo.begin_local(model, data, ClientTask(round=1), settings)
    assert calls == [(TDCL, model)] and context is candidates
    rows = torch.tensor([5, 1, 6])
    batch = Batch(images[rows].float() / 255.0, labels[rows], {}, rows)
    from_context, _ = algo.local_loss(model, batch, context)
    from_batch, _ = algo.local_loss(model, Batch(batch.images, batch.labels, {TDCL: candidates[rows]}), None)
    assert from_context.item() == pytest.approx(from_batch.item(), rel=1e-6)
