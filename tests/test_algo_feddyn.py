"""FedDyn: the dynamic regulariser's gradient, the state and server updates on known tensors."""

import numpy as np
import pytest
import torch
from helpers import softmax_ce_gradient, striped_local_data
from torch import nn

from semanticfl.algorithms.base import (
    AlgorithmSetup,
    Batch,
    ClientTask,
    ClientUpdate,
    LocalSettings,
    load_arrays,
)
from semanticfl.algorithms.feddyn import FedDyn
from semanticfl.errors import UserError
from semanticfl.models import build_model, state_to_numpy

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=4, seed=0)
F32 = np.float32


class LinearNet(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor(weight))
            self.classifier.bias.copy_(torch.tensor(bias))

    def forward(self, x):
        return x, self.classifier(x)



def test_local_gradient_is_ce_gradient_minus_g_plus_alpha_distance():
    w_prev, b_prev = np.array([[0.5, -1.0], [0.0, 2.0]]), np.array([0.1, -0.2])
    w, b = np.array([[1.0, -0.5], [0.25, 1.0]]), np.array([0.0, 0.4])
    g_w, g_b = np.array([[0.3, -0.2], [1.0, 0.5]]), np.array([-0.7, 0.2])
    x, y = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0]]), np.array([0, 1, 1])
    alpha = 0.2
    model = LinearNet(w_prev, b_prev)
    feddyn = FedDyn(FedDyn.Params(alpha=alpha), SETUP)
    task = ClientTask(round=2, state={"classifier.weight": g_w, "classifier.bias": g_b})
    context = feddyn.begin_local(model, None, task, None)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(w))
        model.classifier.bias.copy_(torch.tensor(b))
    loss, _ = feddyn.local_loss(model, Batch(torch.tensor(x), torch.tensor(y)), context)
    loss.backward()
    ce_w, ce_b = softmax_ce_gradient(w, b, x, y)
    np.testing.assert_allclose(model.classifier.weight.grad.numpy(), ce_w - g_w + alpha * (w - w_prev), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.classifier.bias.grad.numpy(), ce_b - g_b + alpha * (b - b_prev), rtol=1e-12, atol=1e-12)


def test_first_round_gradient_state_is_zero_so_the_loss_is_ce_plus_proximal_term():
    model = LinearNet(np.zeros((2, 2)), np.zeros(2))
    feddyn = FedDyn(FedDyn.Params(alpha=0.5), SETUP)
    context = feddyn.begin_local(model, None, ClientTask(round=1), None)
    assert all(torch.count_nonzero(t) == 0 for t in context.gradient.values())
    with torch.no_grad():
        model.classifier.weight.fill_(1.0)  # ‖θ − θ_prev‖² = 4
    x, y = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0])
    loss, _ = feddyn.local_loss(model, Batch(x, y), context)  # logits are 0: CE = log 2
    assert loss.item() == pytest.approx(np.log(2) + 0.5 * 0.5 * 4)


class Tiny(nn.Module):
    def __init__(self, w=(0.0, 0.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_client_state_update_on_known_tensors():
    feddyn = FedDyn(FedDyn.Params(alpha=0.1), SETUP)
    model = Tiny(w=(1.0, 1.0))  # θ^{t−1}
    task = ClientTask(round=5, state={"w": np.array([0.5, -1.0], F32)})
    context = feddyn.begin_local(model, None, task, None)
    with torch.no_grad():
        model.w.copy_(torch.tensor([2.0, 0.0]))  # θ_k^t
    assert feddyn.end_local(model, context, task, steps=3) == {}
    # g ← g − α(θ_k − θ_prev) = (0.5, −1) − 0.1·(1, −1)
    np.testing.assert_allclose(task.state["w"], [0.4, -0.9], rtol=1e-6)
    assert set(task.state) == {"w"} and task.state["w"].dtype == F32


def _feddyn(alpha=0.5):
    algorithm = FedDyn(FedDyn.Params(alpha=alpha), SETUP)
    algorithm.extend_model(Tiny())
    return algorithm


def _update(w, running=(0.0, 0.0), count=0, n=1):
    arrays = {"w": np.array(w, F32), "running": np.array(running, F32), "count": np.array(count, np.int64)}
    return ClientUpdate(arrays=arrays, num_examples=n)


PREVIOUS = {"w": np.array([1.0, 2.0], F32), "running": np.array([7.0, 7.0], F32), "count": np.array(0, np.int64)}


def test_server_update_on_known_tensors():
    feddyn = _feddyn(alpha=0.5)  # m = 4 clients, 2 sampled
    feddyn.load_server_state({"w": np.array([0.2, -0.4], F32)})
    updates = [_update([3.0, 2.0], (1.0, 2.0), 10, n=1), _update([1.0, 6.0], (3.0, 4.0), 20, n=9)]
    out = feddyn.aggregate(PREVIOUS, updates, 3)
    # Σ(θ_k − θ_prev) = (2, 4); h = (0.2, −0.4) − (0.5/4)(2, 4) = (−0.05, −0.9)
    np.testing.assert_allclose(feddyn.server_state()["w"], [-0.05, -0.9], rtol=1e-6)
    # θ = mean θ_k − h/α = (2, 4) + (0.1, 1.8); uniform mean, whatever the sample counts
    np.testing.assert_allclose(out["w"], [2.1, 5.8], rtol=1e-6)
    np.testing.assert_allclose(out["running"], [2.0, 3.0])  # buffers: uniform mean, no h
    assert out["count"] == 15 and out["count"].dtype == np.int64
    assert all(out[k].dtype == PREVIOUS[k].dtype for k in PREVIOUS)


def test_first_aggregation_starts_from_zero_h():
    feddyn = _feddyn(alpha=0.1)
    out = feddyn.aggregate(PREVIOUS, [_update([2.0, 2.0])], 1)
    # h = −(0.1/4)(1, 0) = (−0.025, 0); θ = (2, 2) + (0.25, 0)
    np.testing.assert_allclose(feddyn.server_state()["w"], [-0.025, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["w"], [2.25, 2.0], rtol=1e-6)
    assert set(feddyn.server_state()) == {"w"}


def test_server_state_round_trip_gives_identical_aggregation():
    first = _feddyn()
    theta1 = first.aggregate(PREVIOUS, [_update([0.3, 1.0]), _update([2.0, -1.0], n=4)], 1)
    resumed = _feddyn()
    resumed.load_server_state(first.server_state())
    round2 = [_update([0.7, 0.1], (1.0, 1.0), 3)]
    a, b = first.aggregate(theta1, round2, 2), resumed.aggregate(theta1, round2, 2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(first.server_state()["w"], resumed.server_state()["w"])
    # a fresh server without the state gives another model: the state matters
    assert not np.array_equal(_feddyn().aggregate(theta1, round2, 2)["w"], a["w"])


@pytest.mark.parametrize("alpha", [0.0, -0.01])
def test_non_positive_alpha_is_rejected(alpha):
    with pytest.raises(UserError, match="alpha"):
        FedDyn(FedDyn.Params(alpha=alpha), SETUP)


def test_aggregate_needs_parameter_names():
    with pytest.raises(RuntimeError, match="extend_model"):
        FedDyn(FedDyn.Params(), SETUP).aggregate(PREVIOUS, [_update([0, 0])], 1)




SETTINGS = LocalSettings(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)


def _round(algorithm, task, start, seed=1):
    torch.manual_seed(0)
    model = algorithm.extend_model(build_model("cnn", 3, in_channels=1, image_size=16))
    load_arrays(model, start)
    update = algorithm.local_train(model, striped_local_data(), task, SETTINGS, torch.Generator().manual_seed(seed))
    return model, update


def test_local_train_keeps_the_gradient_state_and_is_deterministic():
    alpha = 0.01
    server, client = FedDyn(FedDyn.Params(alpha=alpha), SETUP), FedDyn(FedDyn.Params(alpha=alpha), SETUP)
    torch.manual_seed(0)
    theta0 = state_to_numpy(server.extend_model(build_model("cnn", 3, in_channels=1, image_size=16)))
    task = ClientTask(round=1)
    model, first = _round(client, task, theta0)
    names = [n for n, _ in model.named_parameters()]
    assert first.extra == {} and set(task.state) == set(names)
    for name in names:  # g_k = 0 − α(θ_k − θ_prev)
        expected = -alpha * (first.arrays[name].astype(np.float64) - theta0[name])
        np.testing.assert_allclose(task.state[name], expected, rtol=1e-5, atol=1e-9)
        assert task.state[name].dtype == np.float32 and task.state[name].shape == theta0[name].shape

    theta1 = server.aggregate(theta0, [first], 1)
    assert set(server.server_state()) == set(names)
    tasks = [ClientTask(round=2, state=dict(task.state)) for _ in range(2)]
    _, second = _round(client, tasks[0], theta1)
    _, again = _round(client, tasks[1], theta1)
    for key in second.arrays:
        np.testing.assert_array_equal(second.arrays[key], again.arrays[key])
    for name in names:
        expected = task.state[name] - alpha * (second.arrays[name].astype(np.float64) - theta1[name])
        np.testing.assert_allclose(tasks[0].state[name], expected, rtol=1e-5, atol=1e-9)
