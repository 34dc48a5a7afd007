"""FedProx: the proximal gradient on known tensors and one local round."""

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
    weighted_average,
)
from semanticfl.algorithms.fedavg import FedAvg
from semanticfl.algorithms.fedprox import FedProx
from semanticfl.algorithms.regularizers import snapshot, squared_distance
from semanticfl.errors import UserError
from semanticfl.models import build_model, state_to_numpy

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=4, seed=0)


class LinearNet(nn.Module):
    """logits = x Wᵀ + b; features are the inputs."""

    def __init__(self, weight, bias):
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor(weight, dtype=torch.float64))
            self.classifier.bias.copy_(torch.tensor(bias, dtype=torch.float64))

    def forward(self, x):
        return x, self.classifier(x)



def test_local_gradient_is_ce_gradient_plus_mu_times_distance():
    w_global = np.array([[0.5, -1.0], [0.0, 2.0], [1.5, 0.25]])
    b_global = np.array([0.1, -0.2, 0.3])
    w = np.array([[1.0, -0.5], [0.25, 1.0], [2.0, 0.0]])
    b = np.array([0.0, 0.4, -0.1])
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -2.0], [3.0, 1.0]])
    y = np.array([0, 2, 1, 2])
    mu = 0.3

    model = LinearNet(w_global, b_global)
    fedprox = FedProx(FedProx.Params(mu=mu), SETUP)
    context = fedprox.begin_local(model, None, ClientTask(round=1), None)
    with torch.no_grad():  # "local training" moved the model away from w_global
        model.classifier.weight.copy_(torch.tensor(w))
        model.classifier.bias.copy_(torch.tensor(b))
    loss, logits = fedprox.local_loss(model, Batch(torch.tensor(x), torch.tensor(y)), context)
    loss.backward()

    grad_w, grad_b = softmax_ce_gradient(w, b, x, y)
    np.testing.assert_allclose(model.classifier.weight.grad.numpy(), grad_w + mu * (w - w_global), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.classifier.bias.grad.numpy(), grad_b + mu * (b - b_global), rtol=1e-12, atol=1e-12)
    # the loss value itself: CE + μ/2 ‖w − w_g‖²
    z = x @ w.T + b
    ce = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(4), y])
    prox = 0.5 * mu * (np.sum((w - w_global) ** 2) + np.sum((b - b_global) ** 2))
    assert loss.item() == pytest.approx(ce + prox, rel=1e-12)
    assert logits.shape == (4, 3)


def test_squared_distance_helper_on_known_tensors():
    model = LinearNet(np.zeros((2, 2)), np.zeros(2))
    reference = snapshot(model)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        model.classifier.bias.copy_(torch.tensor([3.0, 0.0]))
    assert squared_distance(model, reference).item() == pytest.approx(1 + 4 + 1 + 9)
    assert not reference["classifier.weight"].requires_grad


@pytest.mark.parametrize("mu", [-0.01, -1.0])
def test_negative_mu_is_rejected(mu):
    with pytest.raises(UserError, match="mu"):
        FedProx(FedProx.Params(mu=mu), SETUP)




SETTINGS = LocalSettings(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.0)


def _train(algorithm, seed=1):
    torch.manual_seed(0)
    model = algorithm.extend_model(build_model("cnn", 3, in_channels=1, image_size=16))
    start = state_to_numpy(model)
    update = algorithm.local_train(model, striped_local_data(), ClientTask(round=1), SETTINGS, torch.Generator().manual_seed(seed))
    return start, update


def _distance(a, b, keys):
    return sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in keys)


def test_local_train_runs_is_deterministic_and_is_pulled_to_the_global_model():
    start, first = _train(FedProx(FedProx.Params(mu=0.01), SETUP))
    _, again = _train(FedProx(FedProx.Params(mu=0.01), SETUP))
    assert first.extra == {} and first.metrics["local_steps"] == 3
    assert set(first.arrays) == set(start) and all(first.arrays[k].shape == start[k].shape for k in start)
    for key in first.arrays:
        np.testing.assert_array_equal(first.arrays[key], again.arrays[key])
    assert any(not np.array_equal(first.arrays[k], start[k]) for k in start)

    # μ = 0 is FedAvg exactly; a strong μ keeps the local model closer to w_global.
    _, prox0 = _train(FedProx(FedProx.Params(mu=0.0), SETUP))
    _, fedavg = _train(FedAvg(FedAvg.Params(), SETUP))
    for key in fedavg.arrays:
        np.testing.assert_array_equal(prox0.arrays[key], fedavg.arrays[key])
    _, strong = _train(FedProx(FedProx.Params(mu=5.0), SETUP))
    assert _distance(strong.arrays, start, start) < 0.5 * _distance(fedavg.arrays, start, start)


def test_server_half_is_fedavg_and_has_no_state():
    fedprox = FedProx(FedProx.Params(), SETUP)
    updates = [
        ClientUpdate(arrays={"w": np.array([0.0], np.float32), "n": np.array(4, np.int64)}, num_examples=30),
        ClientUpdate(arrays={"w": np.array([10.0], np.float32), "n": np.array(8, np.int64)}, num_examples=10),
    ]
    out = fedprox.aggregate({"w": np.array([5.0], np.float32), "n": np.array(0, np.int64)}, updates, 1)
    expected = weighted_average([u.arrays for u in updates], [30, 10])
    assert out["w"][0] == pytest.approx(2.5) and out["w"].dtype == np.float32
    assert out["n"] == expected["n"] == 5 and out["n"].dtype == np.int64
    assert fedprox.server_state() == {} and fedprox.server_payload({}, 1) == {}
    assert FedProx.Params().mu == 0.01
