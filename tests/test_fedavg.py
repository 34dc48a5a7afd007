"""The FedAvg skeleton: weighted averaging on known arrays and one local round."""

import numpy as np
import pytest
import torch
from helpers import striped_local_data

from semanticfl.algorithms import build_algorithm, get_algorithm_class
from semanticfl.algorithms.base import (
    AlgorithmSetup,
    ClientTask,
    ClientUpdate,
    LocalSettings,
    weighted_average,
)
from semanticfl.errors import UserError
from semanticfl.models import build_model, state_to_numpy

SETUP = AlgorithmSetup(num_classes=3, class_names=("a", "b", "c"), num_clients=2, seed=0)


def test_weighted_average_of_known_arrays():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array(10, dtype=np.int64)}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32), "n": np.array(20, dtype=np.int64)}
    out = weighted_average([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [3.25, 6.5])
    assert out["w"].dtype == np.float32
    assert out["n"] == 18 and out["n"].dtype == np.int64  # 0.25*10 + 0.75*20 = 17.5 → 18 (rint)


def test_fedavg_aggregate_weights_by_examples():
    fedavg = build_algorithm("fedavg", {}, SETUP)
    updates = [
        ClientUpdate(arrays={"w": np.array([0.0])}, num_examples=30),
        ClientUpdate(arrays={"w": np.array([10.0])}, num_examples=10),
    ]
    assert fedavg.aggregate({"w": np.array([5.0])}, updates, 1)["w"][0] == pytest.approx(2.5)


def test_weighted_average_rejects_empty_and_zero_weights():
    with pytest.raises(ValueError):
        weighted_average([], [])
    with pytest.raises(ValueError):
        weighted_average([{"w": np.ones(1)}], [0])


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(UserError, match="fedavg"):
        get_algorithm_class("fedsomething")


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(UserError, match="algorithm.fedavg.mu"):
        build_algorithm("fedavg", {"mu": 0.1}, SETUP)




def _train_once(seed, precision="fp32", channels_last=False):
    torch.manual_seed(0)
    model = build_model("cnn", 3, in_channels=1, image_size=16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fedavg = build_algorithm("fedavg", {}, SETUP)
    settings = LocalSettings(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.0, precision=precision)
    return fedavg.local_train(model, striped_local_data(n=48), ClientTask(round=1), settings, torch.Generator().manual_seed(seed))


def test_local_train_is_deterministic_for_a_seed_and_counts_steps():
    first, second, other = _train_once(1), _train_once(1), _train_once(2)
    assert first.num_examples == 48
    assert first.metrics["local_steps"] == 6  # 2 epochs × ceil(48 / 16)
    for key in first.arrays:
        np.testing.assert_array_equal(first.arrays[key], second.arrays[key])
    assert any(not np.array_equal(first.arrays[k], other.arrays[k]) for k in first.arrays)


def _max_difference(first, second):
    return max(float(np.abs(first.arrays[k] - second.arrays[k]).max()) for k in first.arrays)


def test_bf16_precision_trains_in_autocast_and_stays_near_fp32():
    fp32, bf16, bf16_again = _train_once(1), _train_once(1, "bf16"), _train_once(1, "bf16")
    assert all(a.dtype == np.float32 for a in bf16.arrays.values())  # the weights stay fp32
    assert 1e-4 < _max_difference(fp32, bf16) < 0.05  # bf16 rounding moves them, a little
    assert _max_difference(bf16, bf16_again) == 0.0
    assert abs(fp32.metrics["train_loss"] - bf16.metrics["train_loss"]) < 0.02


def test_channels_last_model_trains_to_the_same_weights_up_to_rounding():
    nchw, nhwc = _train_once(1), _train_once(1, channels_last=True)
    assert _max_difference(nchw, nhwc) < 1e-5
    assert all(a.flags["C_CONTIGUOUS"] for a in nhwc.arrays.values())  # what travels is plain NCHW


def test_local_train_moves_the_model_and_fits_the_data():
    torch.manual_seed(0)
    model = build_model("cnn", 3, in_channels=1, image_size=16)
    before = state_to_numpy(model)
    data = striped_local_data(n=48)
    fedavg = build_algorithm("fedavg", {}, SETUP)
    settings = LocalSettings(epochs=15, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0)
    update = fedavg.local_train(model, data, ClientTask(round=1), settings, torch.Generator().manual_seed(0))
    assert any(not np.array_equal(before[k], update.arrays[k]) for k in before)
    result = fedavg.evaluate(model, data.images, data.labels, lambda x: x.float() / 255.0, batch_size=16)
    assert result["accuracy"] > 90.0  # 48 random images, chance is 33%; memorised after 60 epochs
