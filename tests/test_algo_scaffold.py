"""SCAFFOLD: control-variate updates and gradient correction on known tensors, one local round."""

import numpy as np
import pytest
import torch
from helpers import striped_local_data
from torch import nn

from semanticfl.algorithms.base import (
    AlgorithmSetup,
    ClientTask,
    ClientUpdate,
    LocalSettings,
    load_arrays,
)
from semanticfl.algorithms.fedavg import FedAvg
from semanticfl.algorithms.regularizers import momentum_normalizer
from semanticfl.algorithms.scaffold import Scaffold, option_ii_update
from semanticfl.errors import UserError
from semanticfl.models import build_model, state_to_numpy

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=5, seed=0)
F32 = np.float32


class Tiny(nn.Module):
    """One parameter vector ``w`` (2 values) and two buffers, like a BatchNorm's."""

    def __init__(self, w=(0.0, 0.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        return x, x * self.w


def _scaffold(**params):
    algorithm = Scaffold(Scaffold.Params(**params), SETUP)
    algorithm.extend_model(Tiny())
    return algorithm


def test_option_ii_update_on_known_tensors():
    t = lambda *v: torch.tensor(v, dtype=torch.float32)
    x, y, c, c_i = t(1.0, 2.0), t(0.5, 3.0), t(0.2, -0.1), t(0.05, 0.3)
    # c_i⁺ = c_i − c + (x − y)/(K η) with K = 4, η = 0.1: (x − y)/0.4 = (1.25, −2.5)
    out = option_ii_update({"w": c_i}, {"w": c}, {"w": x}, {"w": y}, steps=4, lr=0.1)
    np.testing.assert_allclose(out["w"].numpy(), [0.05 - 0.2 + 1.25, 0.3 + 0.1 - 2.5], rtol=1e-6)


def test_end_local_keeps_c_i_plus_and_uploads_the_delta():
    scaffold = _scaffold()
    model = Tiny(w=(1.0, 2.0))  # x
    task = ClientTask(round=3, payload={"w": np.array([0.2, -0.1], F32)}, state={"w": np.array([0.05, 0.3], F32)})
    settings = LocalSettings(epochs=1, batch_size=2, lr=0.1, momentum=0.0, weight_decay=0.0)
    context = scaffold.begin_local(model, None, task, settings)
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.5, 3.0]))  # y_i after K = 4 local steps
    delta = scaffold.end_local(model, context, task, steps=4)
    np.testing.assert_allclose(task.state["w"], [1.1, -2.1], rtol=1e-6)
    np.testing.assert_allclose(delta["w"], [1.1 - 0.05, -2.1 - 0.3], rtol=1e-6)
    assert set(delta) == {"w"} and delta["w"].dtype == F32 and task.state["w"].dtype == F32


def _constant_gradient_round(momentum_aware, momentum, steps, c=(0.0, 0.0), c_i=(0.0, 0.0)):
    """The skeleton's step loop on the linear loss ⟨v, w⟩ (gradient v = (2, −1) at every step)."""
    scaffold = Scaffold(Scaffold.Params(momentum_aware=momentum_aware), SETUP)
    model = Tiny(w=(0.5, 0.5))
    task = ClientTask(round=1, payload={"w": np.array(c, F32)}, state={"w": np.array(c_i, F32)})
    settings = LocalSettings(epochs=1, batch_size=1, lr=0.01, momentum=momentum, weight_decay=0.0)
    context = scaffold.begin_local(model, None, task, settings)
    optimizer = scaffold.make_optimizer(model, settings)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.tensor([2.0, -1.0]))[1].sum().backward()
        scaffold.before_step(model, context)
        optimizer.step()
    scaffold.end_local(model, context, task, steps)
    return task.state["w"]


def test_option_ii_recovers_the_mean_gradient_with_and_without_momentum():
    # Option II estimates the local gradient: with a constant gradient v and c = c_i = 0,
    # c_i⁺ must be v. Dividing by ‖a‖₁ η instead of K η keeps that true under momentum.
    for momentum in (0.0, 0.9):
        np.testing.assert_allclose(_constant_gradient_round(True, momentum, 10), [2.0, -1.0], rtol=1e-4)
    # the paper's K η_l is the same without momentum...
    np.testing.assert_allclose(_constant_gradient_round(False, 0.0, 10), [2.0, -1.0], rtol=1e-4)
    # ...but with ρ = 0.9 over-estimates by ‖a‖₁ / K (about 4.1 here, → 1/(1 − ρ) = 10 for long rounds)
    inflated = _constant_gradient_round(False, 0.9, 10)
    ratio = momentum_normalizer(10, 0.9) / 10
    np.testing.assert_allclose(inflated, [2.0 * ratio, -1.0 * ratio], rtol=1e-4)
    # with a correction c − c_i = (1, 1) the steps follow v + c − c_i, and c_i⁺ = c_i − c + (v + c − c_i) = v
    np.testing.assert_allclose(
        _constant_gradient_round(True, 0.9, 7, c=(1.5, 0.5), c_i=(0.5, -0.5)), [2.0, -1.0], rtol=1e-4
    )


def test_before_step_adds_c_minus_c_i_to_the_gradient():
    scaffold = _scaffold()
    model = Tiny(w=(1.0, -2.0))
    task = ClientTask(round=1, payload={"w": np.array([0.5, 1.0], F32)}, state={"w": np.array([0.25, -1.0], F32)})
    settings = LocalSettings(epochs=1, batch_size=2, lr=0.1, momentum=0.0, weight_decay=0.0)
    context = scaffold.begin_local(model, None, task, settings)
    x = torch.tensor([3.0, 4.0])
    _, out = model(x)
    (out**2).sum().backward()  # ∂/∂w Σ (x w)² = 2 x² w = (18, −64)
    scaffold.before_step(model, context)
    np.testing.assert_allclose(model.w.grad.numpy(), [18.0 + 0.25, -64.0 + 2.0])

    model.w.grad = None  # a parameter the loss did not touch: its gradient is the correction alone
    scaffold.before_step(model, context)
    np.testing.assert_allclose(model.w.grad.numpy(), [0.25, 2.0])


def _update(w, running, count, n=1, dc=(0.0, 0.0), cid=0):
    return ClientUpdate(
        arrays={"w": np.array(w, F32), "running": np.array(running, F32), "count": np.array(count, np.int64)},
        num_examples=n,
        extra={"w": np.array(dc, F32)},
        client_id=cid,
    )


GLOBAL = {"w": np.array([0.0, 0.0], F32), "running": np.array([9.0, 9.0], F32), "count": np.array(3, np.int64)}


def test_server_updates_x_with_global_lr_and_c_with_sampled_share():
    scaffold = _scaffold(global_lr=0.5)
    scaffold.load_server_state({"w": np.array([1.0, 0.0], F32)})
    updates = [
        _update([2.0, 4.0], [1.0, 1.0], 10, dc=(0.5, 1.0)),
        _update([4.0, 0.0], [3.0, 5.0], 20, dc=(1.5, -3.0), cid=1),
    ]
    out = scaffold.aggregate(GLOBAL, updates, 1)
    # x + η_g (mean y − x) = 0.5 · (3, 2); buffers: plain means, no η_g
    np.testing.assert_allclose(out["w"], [1.5, 1.0])
    np.testing.assert_allclose(out["running"], [2.0, 3.0])
    assert out["count"] == 15 and out["count"].dtype == np.int64
    assert all(out[k].dtype == GLOBAL[k].dtype for k in GLOBAL)
    # c + |S|/N · mean Δc = (1, 0) + 2/5 · (1, −1)
    state = scaffold.server_state()
    np.testing.assert_allclose(state["w"], [1.4, -0.4], rtol=1e-6)
    assert set(state) == {"w"} and state["w"].dtype == F32
    np.testing.assert_allclose(scaffold.server_payload(out, 2)["w"], [1.4, -0.4], rtol=1e-6)


def test_example_weighting_option_and_reduction_to_fedavg():
    updates = [_update([2.0, 4.0], [1.0, 1.0], 10, n=1), _update([4.0, 0.0], [3.0, 5.0], 20, n=3, cid=1)]
    weighted = _scaffold(model_weighting="examples").aggregate(GLOBAL, updates, 1)
    fedavg = FedAvg(FedAvg.Params(), SETUP).aggregate(GLOBAL, updates, 1)
    for key in GLOBAL:  # η_g = 1 and example weights: the model half is FedAvg
        np.testing.assert_array_equal(weighted[key], fedavg[key])
    np.testing.assert_allclose(weighted["w"], [3.5, 1.0])
    uniform = _scaffold().aggregate(GLOBAL, updates, 1)
    np.testing.assert_allclose(uniform["w"], [3.0, 2.0])


def test_first_payload_is_zero_for_parameters_only():
    payload = _scaffold().server_payload(GLOBAL, 1)
    assert set(payload) == {"w"}
    np.testing.assert_array_equal(payload["w"], np.zeros(2, F32))
    assert payload["w"].dtype == F32


def test_server_state_round_trip_gives_identical_aggregation():
    first = _scaffold(global_lr=0.7)
    round1 = [_update([1.0, 2.0], [0.0, 1.0], 4, dc=(0.1, 0.2)), _update([3.0, -1.0], [2.0, 2.0], 6, dc=(-0.3, 0.4), cid=3)]
    round2 = [_update([0.5, 0.5], [1.0, 1.0], 8, dc=(0.7, -0.1), cid=2)]
    x1 = first.aggregate(GLOBAL, round1, 1)
    resumed = _scaffold(global_lr=0.7)
    resumed.load_server_state(first.server_state())
    a, b = first.aggregate(x1, round2, 2), resumed.aggregate(x1, round2, 2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(first.server_state()["w"], resumed.server_state()["w"])
    assert first.server_state()["w"][0] != 0


def test_aggregate_needs_parameter_names_and_deltas():
    with pytest.raises(RuntimeError, match="extend_model"):
        Scaffold(Scaffold.Params(), SETUP).aggregate(GLOBAL, [_update([0, 0], [0, 0], 0)], 1)
    bad = _update([0, 0], [0, 0], 0)
    bad.extra = {}
    with pytest.raises(ValueError, match="control-variate"):
        _scaffold().aggregate(GLOBAL, [bad], 1)


@pytest.mark.parametrize("params", [{"global_lr": 0.0}, {"global_lr": -1.0}, {"model_weighting": "random"}])
def test_impossible_hyperparameters_are_rejected(params):
    with pytest.raises(UserError, match="algorithm.scaffold"):
        Scaffold(Scaffold.Params(**params), SETUP)




SETTINGS = LocalSettings(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)


class BNNet(nn.Module):
    """The test CNN with a BatchNorm on its features: parameters, float and int64 buffers."""

    def __init__(self):
        super().__init__()
        self.base = build_model("cnn", 3, in_channels=1, image_size=16)
        self.norm = nn.BatchNorm1d(self.base.feature_dim)

    def forward(self, x):
        f = self.norm(self.base.features(x))
        return f, self.base.classifier(f)


def _round(algorithm, task, start, seed=1):
    torch.manual_seed(0)
    model = algorithm.extend_model(BNNet())
    load_arrays(model, start)
    update = algorithm.local_train(model, striped_local_data(), task, SETTINGS, torch.Generator().manual_seed(seed))
    return model, update


def test_local_train_round_trip_of_payload_state_and_extra():
    server, client = Scaffold(Scaffold.Params(), SETUP), Scaffold(Scaffold.Params(), SETUP)
    torch.manual_seed(0)
    x0 = state_to_numpy(server.extend_model(BNNet()))
    task1 = ClientTask(round=1, payload=server.server_payload(x0, 1))
    model, first = _round(client, task1, x0)
    names = [n for n, _ in model.named_parameters()]
    assert set(task1.payload) == set(names) and set(names) < set(x0)  # buffers get no variate
    assert set(first.extra) == set(names) == set(task1.state)
    for name in names:
        assert first.extra[name].shape == x0[name].shape and first.extra[name].dtype == np.float32
    # twice FedAvg's upload: the delta is exactly the parameters' size
    assert sum(v.nbytes for v in first.extra.values()) == sum(p.numel() * 4 for p in model.parameters())
    steps = first.metrics["local_steps"]
    assert steps == 6
    # round 1 with c = c_i = 0: no correction, so the model is FedAvg's, and c_i⁺ = Δc_i = (x − y)/(‖a‖₁ η)
    a = momentum_normalizer(steps, SETTINGS.momentum)
    _, fedavg = _round(FedAvg(FedAvg.Params(), SETUP), ClientTask(round=1), x0)
    for key in x0:
        np.testing.assert_array_equal(first.arrays[key], fedavg.arrays[key])
    for name in names:
        expected = (x0[name].astype(np.float64) - first.arrays[name]) / (a * SETTINGS.lr)
        np.testing.assert_allclose(first.extra[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(task1.state[name], first.extra[name])

    # round 2: c = (1/N) Δc_1 from the server, c_i from the client state; deterministic for a seed
    x1 = server.aggregate(x0, [first], 1)
    assert x1["norm.num_batches_tracked"] == 6 and x1["norm.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(x1["norm.running_var"], first.arrays["norm.running_var"])
    payload = server.server_payload(x1, 2)
    for name in names:
        np.testing.assert_allclose(payload[name], first.extra[name] / SETUP.num_clients, rtol=1e-6)
    tasks = [ClientTask(round=2, payload=dict(payload), state=dict(task1.state)) for _ in range(2)]
    _, second = _round(client, tasks[0], x1)
    _, again = _round(client, tasks[1], x1)
    for key in second.arrays:
        np.testing.assert_array_equal(second.arrays[key], again.arrays[key])
    for name in names:  # c_i⁺ = c_i − c + (x − y)/(‖a‖₁ η), and Δc_i = c_i⁺ − c_i
        c_i, c = task1.state[name].astype(np.float64), payload[name].astype(np.float64)
        expected = c_i - c + (x1[name].astype(np.float64) - second.arrays[name]) / (a * SETTINGS.lr)
        np.testing.assert_allclose(tasks[0].state[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(second.extra[name], expected - c_i, rtol=1e-5, atol=1e-6)
