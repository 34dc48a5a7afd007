"""SemanticFL's ``guidance`` mode and the ``datashare`` control on known tensors: what they request,
their loss terms recomputed by hand, and that a guidance set is used and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import striped_local_data

from semanticfl.algorithms import build_algorithm
from semanticfl.algorithms.base import AlgorithmSetup, ClientTask, LocalSettings
from semanticfl.algorithms.guidance import DataShare, GuidanceStream
from semanticfl.algorithms.semanticfl import GUIDANCE, TEXT, class_means, consistency_loss
from semanticfl.errors import UserError
from semanticfl.models import build_model
from semanticfl.teachers.base import GuidanceSet

SETUP = AlgorithmSetup(num_classes=3, class_names=("cat", "dog", "ship"), num_clients=2, seed=0)
GUIDED = {
    "mode": "guidance",
    "layer_dims": [4, 4, 4, 4],
    "text_dim": 8,
    "lambda_con": 0.0,
    "consistency": "l2",
}
SETTINGS = LocalSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.0, weight_decay=0.0)


def guidance_set(with_features: bool = True, n: int = 9, dim: int = 16) -> GuidanceSet:
    data = striped_local_data(n=n, seed=5)
    features = F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(1)), dim=1)
    return GuidanceSet(
        data.images.numpy(), data.labels.numpy(), features.half().numpy() if with_features else None
    )


def local_data(guidance: dict) -> object:
    data = striped_local_data(n=16)
    data.guidance = guidance
    return data


def test_guidance_mode_requests_the_set_with_null_prompt_features_and_only_text_anchors():
    algo = build_algorithm(
        "semanticfl", {**GUIDED, "guidance_per_class": 7, "guidance_source": "public"}, SETUP
    )
    requests = algo.teacher_requests()
    (request,) = requests.guidance
    assert (request.name, request.per_class, request.source) == (GUIDANCE, 7, "public")
    assert request.prompts == ("a photo of a cat", "a photo of a dog", "a photo of a ship")
    assert request.features.prompts == ("",) and request.features.dim == 16
    assert [r.name for r in requests.anchors] == [TEXT]
    assert requests.features == () and requests.offload == ()
    assert build_algorithm("semanticfl", {**GUIDED, "mode": "local"}, SETUP).teacher_requests().guidance == ()
    (shared,) = build_algorithm("datashare", {"per_class": 4}, SETUP).teacher_requests().guidance
    assert shared.features is None


@pytest.mark.parametrize(
    "bad", [{"guidance_source": "web"}, {"guidance_per_class": 0}, {"lambda_guidance_ce": -1.0}]
)
def test_bad_guidance_settings_are_user_errors(bad):
    with pytest.raises(UserError, match="algorithm.semanticfl"):
        build_algorithm("semanticfl", {**GUIDED, **bad}, SETUP)


def guided_context(algo, model, data):
    text = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=1).numpy()
    return algo.begin_local(model, data, ClientTask(round=1, payload={TEXT: text}), SETTINGS)


@pytest.mark.parametrize("ce_weight, anchors", [(0.0, False), (0.7, False), (0.5, True)])
def test_the_guided_loss_is_ce_plus_consistency_on_the_guidance_batch(ce_weight, anchors):
    params = {**GUIDED, "lambda_kd": 2.0, "lambda_guidance_ce": ce_weight, "guidance_anchors": anchors}
    algo = build_algorithm("semanticfl", params, SETUP)
    model = algo.extend_model(build_model("cnn", 3, 1, 16))
    guidance = guidance_set()
    data = local_data({GUIDANCE: guidance})
    torch.manual_seed(0)
    context = guided_context(algo, model, data)
    batch = next(data.batches(8, torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    replay = guided_context(algo, model, data).guidance.next()  # the guidance batch local_loss draws
    loss, logits = algo.local_loss(model, batch, context)

    features, own_logits = model(torch.cat([batch.images, replay.images]))
    own, theirs = features[:8], features[8:]
    expected = F.cross_entropy(own_logits[:8], batch.labels)
    expected = expected + 2.0 * consistency_loss(
        algo.project(model, theirs), replay.targets["features"], "l2", 0.05
    )
    if anchors:
        means = torch.from_numpy(class_means(guidance.features, guidance.labels, 3))
        expected = expected + 2.0 * consistency_loss(
            algo.project(model, own), means[batch.labels], "l2", 0.05
        )
    expected = expected + ce_weight * F.cross_entropy(own_logits[8:], replay.labels)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, own_logits[:8])


def test_class_means_are_unit_per_class_averages():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], dtype=np.float16)
    means = class_means(features, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(means, [[2**-0.5, 2**-0.5], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)


def test_the_guidance_stream_cycles_every_image_and_is_seeded_by_the_global_rng():
    guidance = guidance_set(n=9)
    data = local_data({})
    torch.manual_seed(3)
    stream = GuidanceStream(guidance, data, 4, "cpu")
    seen = torch.cat([stream.next().rows for _ in range(2)])
    assert len(set(seen.tolist())) == 8  # one shuffled pass without repeats, the ninth row left for later
    torch.manual_seed(3)
    again = GuidanceStream(guidance, data, 4, "cpu")
    assert torch.equal(torch.cat([again.next().rows for _ in range(2)]), seen)


def test_datashare_minimises_ce_over_own_and_shared_rows_together():
    algo = build_algorithm("datashare", {"per_class": 3, "batch_size": 5}, SETUP)
    model = algo.extend_model(build_model("cnn", 3, 1, 16))
    data = local_data({DataShare.SHARED: guidance_set(with_features=False)})
    torch.manual_seed(0)
    context = algo.begin_local(model, data, ClientTask(round=1), SETTINGS)
    torch.manual_seed(0)
    shared = algo.begin_local(model, data, ClientTask(round=1), SETTINGS).next()
    batch = next(data.batches(8, torch.Generator().manual_seed(0)))
    loss, _ = algo.local_loss(model, batch, context)
    _, logits = model(torch.cat([batch.images, shared.images]))
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.cat([batch.labels, shared.labels])))
    assert len(shared.labels) == 5


def test_training_with_a_guidance_set_is_reproducible_and_uses_it():
    algo = build_algorithm("semanticfl", {**GUIDED, "lambda_guidance_ce": 1.0}, SETUP)

    def train(guidance):
        model = algo.extend_model(build_model("cnn", 3, 1, 16))
        torch.manual_seed(0)
        update = algo.local_train(
            model, local_data({GUIDANCE: guidance}), guided_task(), SETTINGS, torch.Generator().manual_seed(0)
        )
        return update.arrays

    def guided_task():
        text = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=1).numpy()
        return ClientTask(round=1, payload={TEXT: text})

    first, again = train(guidance_set()), train(guidance_set())
    assert all(np.array_equal(first[k], again[k]) for k in first)
    other = guidance_set()
    other = GuidanceSet(other.images[::-1].copy(), other.labels[::-1].copy(), other.features[::-1].copy())
    changed = train(other)
    assert any(not np.array_equal(first[k], changed[k]) for k in first)
