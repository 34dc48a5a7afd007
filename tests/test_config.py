"""Config files, overrides and validation."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semanticfl.config import config_from_dict, load_config, parse_override
from semanticfl.errors import UserError


def test_quickstart_is_the_default_and_matches_the_issue():
    config = load_config()
    assert config.experiment.name == "quickstart"
    assert config.data.dataset == "fashion_mnist"
    assert (config.partition.scheme, config.partition.num_clients, config.partition.alpha) == ("dirichlet", 10, 0.1)
    assert config.algorithm.name == "fedavg"


def test_overrides_parse_toml_values_and_bare_words():
    assert parse_override("train.lr=0.05") == (["train", "lr"], 0.05)
    assert parse_override("eval.central=false") == (["eval", "central"], False)
    assert parse_override("data.dataset=cifar10") == (["data", "dataset"], "cifar10")
    assert parse_override("algorithm.fedprox.mu=1e-2") == (["algorithm", "fedprox", "mu"], 0.01)


def test_overrides_apply_on_top_of_file_and_keep_the_rest():
    config = load_config("cifar10_cnn", ["train.rounds=3", "partition.alpha=0.1"])
    assert config.train.rounds == 3 and config.partition.alpha == 0.1
    assert config.data.dataset == "cifar10" and config.train.local_epochs == 2


def test_resolved_config_round_trips_through_toml():
    import tomllib

    config = load_config("cifar10_cnn", ["algorithm.name=fedprox", "algorithm.fedprox.mu=0.5"])
    again = config_from_dict(tomllib.loads(config.to_toml()))
    assert again == config


def test_algorithm_params_live_in_their_own_table():
    config = config_from_dict({"algorithm": {"name": "fedprox", "fedprox": {"mu": 0.1}}})
    assert config.algorithm_params() == {"mu": 0.1}
    with pytest.raises(UserError, match="algorithm.fedprox.mu"):
        config_from_dict({"algorithm": {"name": "fedprox", "mu": 0.1}})


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.rounds=0", "train.rounds must be >= 1"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.lr=-0.1", "train.lr must be > 0, got -0.1"),
        ("train.lr=1e39", "train.lr must be at most 3.4e+38"),
        ("train.momentum=-0.5", "train.momentum must be >= 0, got -0.5"),
        ("partition.num_clients=0", "partition.num_clients must be >= 1, got 0"),
        ("partition.alpha=-1", "partition.alpha must be > 0"),
        ("partition.quantity_alpha=0", "partition.quantity_alpha must be > 0"),
        ("partition.classes_per_client=0", "partition.classes_per_client must be >= 1, got 0"),
        ("partition.imbalance_factor=0.5", "partition.imbalance_factor must be >= 1"),
        ("train.lr=nan", "finite"),
        ("train.fraction_fit=1.5", "fraction_fit"),
        ("train.rounds=2.5", "integer"),
        ("train.rounds=true", "integer"),
        ("eval.central=1", "true or false"),
        ("train.nosuch=1", "unknown setting 'train.nosuch'"),
        ("nosuch.key=1", "unknown config section"),
        ("engine.backend=cluster", "engine.backend"),
        ("train.min_clients=11", "exceeds partition.num_clients"),
        ("rounds=3", "needs a section"),
        ("train.=3", "section.key=value"),
    ],
)
def test_bad_values_are_one_line_user_errors(override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(["train.rounds", "train.lr", "train.batch_size", "partition.num_clients", "eval.every"]),
    value=st.one_of(
        st.integers(max_value=0),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not (math.isfinite(v) and v > 0)),
        st.text(max_size=5),
        st.booleans(),
    ),
)
def test_any_nonpositive_or_mistyped_value_is_rejected(key, value):
    section, name = key.split(".")
    with pytest.raises(UserError):
        config_from_dict({section: {name: value}})
