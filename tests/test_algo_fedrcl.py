"""FedRCL: the relaxed contrastive loss on known vectors, its levels, one local round."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import striped_local_data

from semanticfl.algorithms.base import AlgorithmSetup, Batch, ClientTask, ClientUpdate, LocalSettings
from semanticfl.algorithms.fedavg import FedAvg
from semanticfl.algorithms.fedrcl import FedRCL, intermediate_levels
from semanticfl.errors import UserError
from semanticfl.models import build_model

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=2, seed=0)
SETTINGS = LocalSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _rcl_by_hand(vectors, labels, tau, lam, w_pen):
    """L_SCL + w_pen · L_pen written out with loops over plain floats."""
    n = len(labels)
    scl = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if pos:
            denom = sum(math.exp(_cos(vectors[i], vectors[a]) / tau) for a in range(n) if a != i)
            scl.append(-sum(_cos(vectors[i], vectors[p]) / tau - math.log(denom) for p in pos) / len(pos))
    pen = []
    for i in range(n):
        same = [j for j in range(n) if j != i and labels[j] == labels[i]]
        close = [j for j in same if _cos(vectors[i], vectors[j]) > lam]
        pen.append(math.log(1 + sum(math.exp((_cos(vectors[i], vectors[j]) - 1) / tau) for j in close)))
    return sum(scl) / len(scl) + w_pen * sum(pen) / n


def test_relaxed_contrastive_loss_on_a_hand_made_batch():
    vectors = [
        [1.0, 0.0, 0.0], [0.9, 0.3, 0.1], [0.2, 1.0, 0.0], [0.0, 0.9, 0.5], [0.1, 0.1, 1.0], [-1.0, 0.2, 0.0]
    ]
    labels = [0, 0, 1, 1, 2, 0]  # pairs (0,1) and (2,3) are above λ = 0.7, (0,5) and (1,5) below
    fedrcl = FedRCL(FedRCL.Params(temperature=0.1, threshold=0.7, penalty_weight=2.0), SETUP)
    x, y = torch.tensor(vectors, dtype=torch.float64), torch.tensor(labels)
    got = fedrcl.relaxed_contrastive_loss(x, y).item()
    assert got == pytest.approx(_rcl_by_hand(vectors, labels, 0.1, 0.7, 2.0), rel=1e-10)
    no_penalty = FedRCL(FedRCL.Params(temperature=0.1, penalty_weight=0.0), SETUP)
    plain = no_penalty.relaxed_contrastive_loss(x, y)
    assert plain.item() == pytest.approx(_rcl_by_hand(vectors, labels, 0.1, 0.7, 0.0), rel=1e-10)
    assert got > plain.item()  # the penalty is active on this batch


def test_penalty_vanishes_when_every_positive_is_below_the_threshold():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])  # same-class cosines 0 and -0.6
    with_penalty = FedRCL(FedRCL.Params(penalty_weight=5.0), SETUP).relaxed_contrastive_loss(vectors, labels)
    without = FedRCL(FedRCL.Params(penalty_weight=0.0), SETUP).relaxed_contrastive_loss(vectors, labels)
    assert with_penalty.item() == without.item()


def test_levels_are_resnet_stem_and_stages_one_to_three_and_final_features_otherwise():
    torch.manual_seed(0)
    resnet = build_model("resnet10", 3, in_channels=1, image_size=8)
    assert intermediate_levels(resnet) == [resnet.stem, *list(resnet.stages)[:3]]
    assert intermediate_levels(build_model("cnn", 3, in_channels=1, image_size=16)) == []


def test_multi_level_loss_averages_the_levels():
    torch.manual_seed(0)
    model = build_model("resnet10", 3, in_channels=1, image_size=8)
    fedrcl = FedRCL(FedRCL.Params(), SETUP)
    images, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    context = fedrcl.begin_local(model, None, ClientTask(1), SETTINGS)
    loss, logits = fedrcl.local_loss(model, Batch(images, labels), context)
    fedrcl.end_local(model, context, ClientTask(1), 1)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    # independent: run the pieces by hand
    x = model.stem(images)
    levels = [F.adaptive_avg_pool2d(x, 1).flatten(1)]
    for stage in list(model.stages)[:3]:
        x = stage(x)
        levels.append(F.adaptive_avg_pool2d(x, 1).flatten(1))
    features, expected_logits = model(images)
    levels.append(features)
    rcl = sum(fedrcl.relaxed_contrastive_loss(z, labels) for z in levels) / 5
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(loss, F.cross_entropy(expected_logits, labels) + rcl)
    single = FedRCL(FedRCL.Params(multi_level=False), SETUP)
    context1 = single.begin_local(model, None, ClientTask(1), SETTINGS)
    loss1, _ = single.local_loss(model, Batch(images, labels), context1)
    final_only = F.cross_entropy(expected_logits, labels) + fedrcl.relaxed_contrastive_loss(features, labels)
    torch.testing.assert_close(loss1, final_only)




def _train(algorithm, seed=1):
    torch.manual_seed(0)
    model = build_model("cnn", 3, in_channels=1, image_size=16)
    model = algorithm.extend_model(model)
    generator = torch.Generator().manual_seed(seed)
    return algorithm.local_train(model, striped_local_data(), ClientTask(1), SETTINGS, generator)


def test_local_round_is_deterministic_and_differs_from_fedavg():
    first, again = _train(FedRCL(FedRCL.Params(), SETUP)), _train(FedRCL(FedRCL.Params(), SETUP))
    fedavg = _train(FedAvg(FedAvg.Params(), SETUP))
    assert first.extra == {} and first.metrics["local_steps"] == 3
    assert set(first.arrays) == set(fedavg.arrays)
    for key in first.arrays:
        np.testing.assert_array_equal(first.arrays[key], again.arrays[key])
    assert any(not np.array_equal(first.arrays[k], fedavg.arrays[k]) for k in first.arrays)
    off = _train(FedRCL(FedRCL.Params(rcl_weight=0.0), SETUP))
    for key in first.arrays:  # w_rcl = 0 is FedAvg exactly
        np.testing.assert_array_equal(off.arrays[key], fedavg.arrays[key])


def test_server_is_fedavg_and_has_no_state():
    fedrcl = FedRCL(FedRCL.Params(), SETUP)
    updates = [ClientUpdate({"w": np.array([2.0])}, 1), ClientUpdate({"w": np.array([6.0])}, 1)]
    assert fedrcl.aggregate({"w": np.zeros(1)}, updates, 1)["w"][0] == pytest.approx(4.0)
    assert fedrcl.server_state() == {} and fedrcl.server_payload({}, 1) == {}
    restored = FedRCL(FedRCL.Params(), SETUP)
    restored.load_server_state(fedrcl.server_state())
    assert restored.aggregate({}, updates, 2)["w"][0] == fedrcl.aggregate({}, updates, 2)["w"][0]


@pytest.mark.parametrize(
    "bad", [{"temperature": 0.0}, {"threshold": 1.5}, {"penalty_weight": -1.0}, {"rcl_weight": -0.1}]
)
def test_impossible_hyperparameters_are_user_errors(bad):
    with pytest.raises(UserError):
        FedRCL.Params(**bad)
