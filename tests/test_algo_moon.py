"""MOON: the model-contrastive loss on known vectors, the projection network, one local round."""

import math

import numpy as np
import pytest
import torch
from helpers import striped_local_data

from semanticfl.algorithms.base import AlgorithmSetup, ClientTask, ClientUpdate, LocalSettings
from semanticfl.algorithms.moon import MOON, PREV_PREFIX, MoonNet, model_contrastive_loss
from semanticfl.errors import UserError
from semanticfl.models import build_model, load_numpy_state, state_to_numpy

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=2, seed=0)
SETTINGS = LocalSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _lcon_by_hand(z, zg, zp, tau):
    """Eq. (3) with plain floats: −log(e^{sim(z,zg)/τ} / (e^{sim(z,zg)/τ} + e^{sim(z,zp)/τ}))."""
    g, p = math.exp(_cos(z, zg) / tau), math.exp(_cos(z, zp) / tau)
    return -math.log(g / (g + p))


def test_model_contrastive_loss_matches_eq3():
    z = [[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]
    zg = [[1.0, 1.0, 1.0], [0.5, -0.5, 2.0]]
    zp = [[-1.0, 0.0, 3.0], [1.0, 1.0, 0.0]]
    tau = 0.5
    expected = sum(_lcon_by_hand(*rows, tau) for rows in zip(z, zg, zp)) / 2
    as_t = lambda rows: torch.tensor(rows, dtype=torch.float64)
    got = model_contrastive_loss(as_t(z), as_t(zg), as_t(zp), tau).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_moving_z_towards_the_global_representation_lowers_the_loss():
    zg, zp = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    z0 = torch.tensor([[0.1, 1.0, 0.3]])
    losses = [model_contrastive_loss((1 - s) * z0 + s * zg, zg, zp, 0.5).item() for s in np.linspace(0, 1, 6)]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    # and a gradient step on z does the same, without moving the frozen targets
    z = z0.clone().requires_grad_(True)
    zg_leaf = zg.clone().requires_grad_(True)
    loss = model_contrastive_loss(z, zg_leaf, zp, 0.5)
    loss.backward()
    assert zg_leaf.grad is None
    assert model_contrastive_loss(z.detach() - 0.1 * z.grad, zg, zp, 0.5).item() < loss.item()


def test_equal_global_and_previous_representations_give_log2_and_no_gradient():
    z = torch.randn(4, 8, requires_grad=True)
    zg = torch.randn(4, 8)
    loss = model_contrastive_loss(z, zg, zg, 0.5)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    torch.testing.assert_close(z.grad, torch.zeros_like(z), rtol=0, atol=1e-7)


def _model(algorithm):
    torch.manual_seed(0)
    return algorithm.extend_model(build_model("cnn", 3, in_channels=1, image_size=16))


def test_extend_model_puts_the_output_layer_on_a_256_d_projection():
    moon = MOON(MOON.Params(), SETUP)
    model = _model(moon)
    assert isinstance(model, MoonNet) and model.feature_dim == 256
    x = torch.rand(5, 1, 16, 16)
    z, logits = model(x)
    assert z.shape == (5, 256) and logits.shape == (5, 3)
    torch.testing.assert_close(logits, model.classifier(z))
    keys = set(state_to_numpy(model))
    assert {"projection.0.weight", "projection.2.weight", "classifier.weight"} <= keys
    assert state_to_numpy(model)["projection.0.weight"].shape == (84, 84)  # Linear(d, d) on the 84-d features
    assert not any(k.startswith("base.classifier") for k in keys)  # the old head is gone, not dead weight




def _train(params, state=None, seed=1, start=None):
    moon = MOON(params, SETUP)
    model = _model(moon)
    if start is not None:
        load_numpy_state(model, start)
    task = ClientTask(round=1, state=dict(state or {}))
    update = moon.local_train(model, striped_local_data(), task, SETTINGS, torch.Generator().manual_seed(seed))
    return update, task


def test_local_train_stores_the_trained_local_model_and_is_deterministic():
    first, task = _train(MOON.Params())
    again, _ = _train(MOON.Params())
    assert first.extra == {} and first.metrics["local_steps"] == 3
    assert set(task.state) == {PREV_PREFIX + k for k in first.arrays}
    for key, value in first.arrays.items():
        np.testing.assert_array_equal(task.state[PREV_PREFIX + key], value)
        np.testing.assert_array_equal(again.arrays[key], value)


def test_first_round_is_fedavg_and_the_previous_model_matters_afterwards():
    with_mu, task = _train(MOON.Params(mu=5.0))
    without_mu, _ = _train(MOON.Params(mu=0.0))
    for key in with_mu.arrays:  # z_prev = z_glob: ℓ_con is the constant log 2, its gradient 0
        np.testing.assert_array_equal(with_mu.arrays[key], without_mu.arrays[key])
    assert with_mu.metrics["train_loss"] == pytest.approx(without_mu.metrics["train_loss"] + 5 * math.log(2))
    # second round from the averaged-like start with a previous model in the state: ℓ_con now acts
    start = with_mu.arrays
    moved = {k: (v * 1.05 if v.dtype.kind == "f" else v) for k, v in start.items()}
    second, task2 = _train(MOON.Params(mu=5.0), state=task.state, start=moved)
    plain, _ = _train(MOON.Params(mu=0.0), state=task.state, start=moved)
    assert any(not np.array_equal(second.arrays[k], plain.arrays[k]) for k in second.arrays)
    assert second.metrics["train_loss"] > plain.metrics["train_loss"]  # μ ℓ_con > 0 is part of the loss
    for key, value in second.arrays.items():  # the state now holds the second round's model
        np.testing.assert_array_equal(task2.state[PREV_PREFIX + key], value)


def test_server_is_fedavg_and_has_no_state():
    moon = MOON(MOON.Params(), SETUP)
    updates = [ClientUpdate({"w": np.array([0.0, 4.0])}, 1), ClientUpdate({"w": np.array([4.0, 0.0])}, 3)]
    np.testing.assert_allclose(moon.aggregate({"w": np.zeros(2)}, updates, 1)["w"], [3.0, 1.0])
    assert moon.server_payload({"w": np.zeros(2)}, 1) == {} and moon.server_state() == {}
    restored = MOON(MOON.Params(), SETUP)
    restored.load_server_state(moon.server_state())
    np.testing.assert_array_equal(
        restored.aggregate({}, updates, 2)["w"], moon.aggregate({}, updates, 2)["w"]
    )


@pytest.mark.parametrize("bad", [{"mu": -1.0}, {"temperature": 0.0}, {"projection_dim": 0}])
def test_impossible_hyperparameters_are_user_errors(bad):
    with pytest.raises(UserError):
        MOON.Params(**bad)
