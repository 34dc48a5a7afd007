"""SemanticFL: every loss term on known tensors, the modes' requests, payload and local objective."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semanticfl.algorithms import build_algorithm
from semanticfl.algorithms.base import AlgorithmSetup, Batch, ClientTask, LocalSettings
from semanticfl.algorithms.contrastive import candidate_info_nce
from semanticfl.algorithms.semanticfl import ANCHORS, GUIDANCE, TARGET, TEXT, consistency_loss
from semanticfl.errors import UserError
from semanticfl.models import build_model
from semanticfl.teachers.base import TeacherShape

SETUP = AlgorithmSetup(num_classes=3, class_names=("cat", "dog", "ship"), num_clients=2, seed=0)
SMALL = {"layer_dims": [4, 4, 4, 4], "text_dim": 8}


def test_kl_consistency_on_known_vectors():
    # t = e2, z = e1, τ = 1: p_t = softmax(0, 1), log p_z = log softmax(1, 0) → KL = p_t1 − p_t0
    z, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p1 = 1 / (1 + math.exp(-1))
    assert consistency_loss(z, t, "kl", 1.0).item() == pytest.approx(p1 - (1 - p1), rel=1e-6)
    # scale-free (features are unit-normalised first) and zero at the target
    assert consistency_loss(3 * z, t, "kl", 1.0).item() == pytest.approx(p1 - (1 - p1), rel=1e-6)
    assert consistency_loss(t, 2 * t, "kl", 0.05).item() == pytest.approx(0.0, abs=1e-6)


def test_l2_consistency_and_gradient_direction():
    z = torch.tensor([[3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0]])
    loss = consistency_loss(z, t, "l2", 1.0)
    assert loss.item() == pytest.approx(0.6**2 + 0.2**2)  # ‖(0.6, 0.8) − (0, 1)‖²
    loss.backward()
    stepped = z.detach() - 0.5 * z.grad
    assert F.cosine_similarity(stepped, t).item() > F.cosine_similarity(z.detach(), t).item()


def test_modes_ask_for_what_they_use():
    default = build_algorithm("semanticfl", SMALL, SETUP)
    assert (default.params.mode, default.params.lambda_guidance_ce) == ("guidance", 1.0)
    (guidance,) = default.teacher_requests().guidance  # generated from the class names: private
    assert (guidance.name, guidance.source, guidance.per_class) == (GUIDANCE, "generated", 100)
    assert guidance.prompts == ("a photo of a cat", "a photo of a dog", "a photo of a ship")
    assert default.teacher_requests().features == () and default.teacher_requests().offload == ()
    anchors = build_algorithm("semanticfl", {**SMALL, "mode": "anchors"}, SETUP).teacher_requests()
    assert anchors.features == ()  # nothing is extracted from client data
    names = [r.name for r in anchors.anchors]
    assert names == [ANCHORS, TEXT]
    req = anchors.anchors[0].features
    assert req.prompts == ("a photo of a cat", "a photo of a dog", "a photo of a ship")
    assert req.timestep == 150 and req.layers == ("latent", "up-3", "up-2", "up-1") and req.reduction == "gap"
    local = build_algorithm("semanticfl", {**SMALL, "mode": "local"}, SETUP).teacher_requests()
    (target,) = local.features
    assert target.name == TARGET and target.prompts == ("",)  # null prompt: no label needed
    assert [r.name for r in local.anchors] == [TEXT]
    assert local.offload == () and local.guidance == ()
    offload = build_algorithm("semanticfl", {**SMALL, "mode": "offload"}, SETUP)
    assert offload.uploads[-1] == "noised latents (once)"
    assert offload.teacher_requests().features == () and offload.teacher_requests().offload == (target,)


@pytest.mark.parametrize(
    "shape, dims, text_dim",
    [
        (TeacherShape(4, (1280, 1280, 640, 320), 1024), (4, 128, 128, 128), 1024),  # SD 2.1
        (TeacherShape(4, (1280, 1280, 640, 320), 768), (4, 128, 128, 128), 768),  # SD 1.5
        (TeacherShape(32, (128, 128, 64), 384), (32, 128, 128, 64), 384),  # the offline teacher
    ],
)
def test_auto_dims_follow_the_teacher(shape, dims, text_dim):
    """128 per layer capped by the layer's channels; the text projection as wide as the text encoder."""
    setup = dataclasses.replace(SETUP, teacher_shape=lambda: shape)
    algo = build_algorithm("semanticfl", {}, setup)
    assert (algo.params.layer_dims, algo.params.text_dim, algo.teacher_dim) == (dims, text_dim, sum(dims))
    model = algo.extend_model(build_model("cnn", 3, 1, 28))
    assert model.text_projection.out_features == text_dim and model.teacher_projection.out_features == sum(dims)
    half = build_algorithm("semanticfl", {"text_dim": 8}, setup)  # explicit values stay
    assert (half.params.layer_dims, half.params.text_dim) == (dims, 8)


def test_auto_dims_without_a_teacher_are_a_user_error():
    assert build_algorithm("semanticfl", SMALL, SETUP).teacher_dim == 16  # explicit: no teacher read
    with pytest.raises(UserError, match="algorithm.semanticfl: layer_dims and text_dim = 'auto'"):
        build_algorithm("semanticfl", {}, SETUP)


@pytest.mark.parametrize(
    "params",
    [{"mode": "server"}, {"consistency": "cos"}, {"kd_temperature": 0.0}, {"timestep": -1},
     {"layers": ["latent"], "layer_dims": [1, 2]}, {"warmup_rounds": -1}, {"text_dim": 0}, {"layers": []}],
)
def test_bad_hyperparameters_are_user_errors(params):
    with pytest.raises(UserError, match="algorithm.semanticfl"):
        build_algorithm("semanticfl", params, SETUP)


def _anchors_algorithm(**params):
    algo = build_algorithm("semanticfl", {**SMALL, "mode": "anchors", **params}, SETUP)
    rng = np.random.default_rng(0)
    algo.receive_anchors({
        ANCHORS: rng.normal(size=(3, 16)).astype(np.float32),
        TEXT: rng.normal(size=(3, 8)).astype(np.float32),
    })
    return algo


def test_payload_carries_anchors_and_text_and_wrong_text_dim_is_explained():
    algo = _anchors_algorithm()
    payload = algo.server_payload({}, 1)
    assert set(payload) == {ANCHORS, TEXT} and payload[ANCHORS].shape == (3, 16)
    with pytest.raises(UserError, match="text_dim=5"):
        algo.receive_anchors({ANCHORS: np.zeros((3, 16)), TEXT: np.zeros((3, 5))})


@pytest.mark.parametrize("round_number, ramp", [(1, 0.25), (4, 1.0), (9, 1.0)])
def test_local_loss_is_ce_plus_weighted_consistency_and_contrast(round_number, ramp):
    algo = _anchors_algorithm(lambda_kd=2.0, lambda_con=0.5, warmup_rounds=4)
    model = algo.extend_model(build_model("cnn", 3, 1, 28)).eval()
    task = ClientTask(round=round_number, payload=algo.server_payload({}, round_number))
    settings = LocalSettings(epochs=1, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0)
    context = algo.begin_local(model, None, task, settings)
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 1])
    loss, _ = algo.local_loss(model, Batch(images, labels), context)
    features, logits = model(images)
    anchors, text = torch.tensor(task.payload[ANCHORS]), torch.tensor(task.payload[TEXT])
    expected = F.cross_entropy(logits, labels) + ramp * (
        2.0 * consistency_loss(model.teacher_projection(features), anchors[labels], "kl", 0.05)
        + 0.5 * candidate_info_nce(model.text_projection(features), text, labels, 0.05).mean()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_local_mode_reads_per_sample_targets():
    algo = build_algorithm("semanticfl", {**SMALL, "mode": "local", "lambda_con": 0.0}, SETUP)
    algo.receive_anchors({TEXT: np.ones((3, 8), dtype=np.float32)})
    model = algo.extend_model(build_model("cnn", 3, 1, 28)).eval()
    settings = LocalSettings(epochs=1, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0)
    context = algo.begin_local(model, None, ClientTask(round=1, payload=algo.server_payload({}, 1)), settings)
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    targets = torch.randn(2, 16).half()
    loss, logits = algo.local_loss(model, Batch(images, labels, {TARGET: targets}), context)
    features, _ = model(images)
    expected = F.cross_entropy(logits, labels) + consistency_loss(
        model.teacher_projection(features), targets.float(), "kl", 0.05
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
