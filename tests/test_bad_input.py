"""Property-based bad input: every wrong value, name, override or file is a one-line UserError.

The CLI turns a UserError into ``semanticfl: error: ...`` on one line and exit code 2; these tests
generate bad input for every setting of semanticfl.config (found by walking its dataclasses) and of every
algorithm's ``Params``, for partitioning, and for every dataset format the loaders read, and check
that nothing else escapes and that no existing file is touched. Hypothesis runs derandomized, so the
same examples are tried every time.

``SEMANTICFL_BAD_INPUT_TALLY=FILE python -m pytest -q tests/test_bad_input.py`` also writes how many
distinct inputs were tried and how each ended (docs/RELIABILITY.md, "Bad input"); in that mode a crash
is recorded instead of failing the test, so one run counts them all.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import struct
import tempfile
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from helpers import semanticfl
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from semanticfl.algorithms import ALGORITHMS, check_algorithm_tables
from semanticfl.cli.main import main
from semanticfl.cli.runs import check_inputs
from semanticfl.config import Config, PartitionConfig, config_from_dict, load_config
from semanticfl.data.datasets import DATASETS, load_image_dataset
from semanticfl.data.partition import CLASS_ASSIGNMENTS, SCHEMES, PartitionSpec, partition_indices
from semanticfl.engine.experiment import Experiment
from semanticfl.errors import UserError
from semanticfl.models import model_names

TALLY_ENV = "SEMANTICFL_BAD_INPUT_TALLY"
TALLYING = bool(os.environ.get(TALLY_ENV))
OUTCOMES: dict[str, str] = {}
"""Every input tried (by description) → how it ended: "user_error", "accepted", "accepted: bad input",
"user_error: on several lines" or "crash: <exception type>", plus "; changed or added files"."""

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    phases=(Phase.explicit, Phase.generate) if TALLYING else tuple(Phase),
)
SMALL = ["data.train_fraction=0.02", "partition.num_clients=3", "train.rounds=1"]
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module", autouse=True)
def tally() -> None:
    """Write OUTCOMES to $SEMANTICFL_BAD_INPUT_TALLY after the module (when it is set)."""
    yield
    if TALLYING:
        summary = {
            "inputs": len(OUTCOMES),
            "outcomes": Counter("crash" if o.startswith("crash") else o for o in OUTCOMES.values()),
            "crash_types": Counter(o for o in OUTCOMES.values() if o.startswith("crash")),
            "not_clean": {d: o for d, o in sorted(OUTCOMES.items()) if o not in ("accepted", "user_error")},
        }
        Path(os.environ[TALLY_ENV]).write_text(json.dumps(summary, indent=1) + "\n")


@pytest.fixture(scope="module", autouse=True)
def no_user_data_folder():
    """Unregistered dataset names are only legal with $SEMANTICFL_DATA; these tests leave it unset."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SEMANTICFL_DATA", raising=False)
        yield


class Launched(Exception):
    """A run got past every check to its launch: its input was accepted."""


@pytest.fixture(scope="module", autouse=True)
def no_training():
    """Nothing here may train: a run that reaches its launch had its (bad) input accepted."""

    def launch(*args: Any, **kwargs: Any) -> None:
        raise Launched()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("semanticfl.cli.runs.launch", launch)
        yield


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Callable[[], Path]:
    """A fresh empty folder per call (hypothesis examples must not share files or caches)."""
    base = tmp_path_factory.mktemp("bad-input")
    return lambda: Path(tempfile.mkdtemp(dir=base))


# --------------------------------------------------------------------------- outcome checks


def outcome_of(description: str, call: Callable[[], Any]) -> UserError | None:
    """Run ``call``; record how it ended; return its UserError (None if it returned or launched a run).

    Any other exception fails the test, except when tallying (then it is only recorded).
    """
    try:
        call()
    except UserError as error:
        OUTCOMES[description] = "user_error"
        return error
    except Launched:
        pass
    except Exception as error:
        OUTCOMES[description] = f"crash: {type(error).__name__}"
        if not TALLYING:
            raise
        return UserError("(crash recorded)")
    OUTCOMES[description] = "accepted"
    return None


def rejects(description: str, call: Callable[[], Any]) -> str:
    """The one-line message of the UserError ``call`` must raise."""
    error = outcome_of(description, call)
    if error is None:
        OUTCOMES[description] = "accepted: bad input"
    elif "\n" in str(error):
        OUTCOMES[description] = "user_error: on several lines"
    if not TALLYING:
        assert error is not None, f"accepted bad input: {description}"
        message = str(error)
        assert message and "\n" not in message, message
        return message
    return str(error)


def accepts(description: str, call: Callable[[], Any]) -> None:
    assert outcome_of(description, call) is None or TALLYING, f"rejected valid input: {description}"


def loads_or_rejects(description: str, call: Callable[[], Any]) -> None:
    """Input that may or may not be valid (a mutated file can still decode): never a crash."""
    error = outcome_of(description, call)
    assert TALLYING or error is None or "\n" not in str(error)


def cli_rejects(capsys, *argv: str, about: str = "") -> str:
    """``semanticfl ARGV`` in this process: exit code 2 and one line on stderr, nothing else.

    ``about`` tells inputs apart that the command line does not (the content of a file it names).
    """
    codes: list[int] = []
    description = " ".join(["semanticfl", *argv, about])
    outcome_of(description, lambda: codes.append(main(list(argv))))
    _, err = capsys.readouterr()
    if codes == [2]:  # how the CLI reports a UserError
        OUTCOMES[description] = "user_error"
    elif OUTCOMES[description] == "accepted":  # another exit code, or it reached a run's launch
        OUTCOMES[description] = "accepted: bad input"
    if not TALLYING:
        assert codes == [2], err
        assert "Traceback" not in err and err.startswith("semanticfl: error: "), err
        assert len(err.strip().splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- config: every setting


def config_fields() -> list[tuple[str, str, Any]]:
    """(section, key, annotated type) of every setting of semanticfl.config but ``algorithm``'s own tables."""
    fields = []
    for section, section_type in get_type_hints(Config).items():
        hints = get_type_hints(section_type)
        fields += [
            (section, f.name, hints[f.name]) for f in dataclasses.fields(section_type) if f.name != "params"
        ]
    return fields


def algorithm_fields() -> list[tuple[str, str, Any]]:
    """(algorithm, key, annotated type) of every algorithm's ``[algorithm.<name>]`` hyperparameters."""
    fields = []
    for name, cls in ALGORITHMS.items():
        hints = get_type_hints(cls.Params)
        fields += [(name, f.name, hints[f.name]) for f in dataclasses.fields(cls.Params)]
    return fields


FIELDS = config_fields()
NUMERIC_FIELDS = [(s, k, t) for s, k, t in FIELDS if t in (int, float) and s != "partition"]


def wrong_type_values(annotation: Any) -> st.SearchStrategy:
    """TOML values of any type but the one ``annotation`` asks for (an int is a valid float)."""
    ints = st.integers(-(2**40), 2**40)
    floats = st.floats(allow_nan=True, allow_infinity=True)
    texts = st.text(max_size=6)
    lists = st.lists(st.one_of(ints, texts), max_size=3)
    tables = st.dictionaries(st.sampled_from(["a", "b"]), ints, min_size=1, max_size=2)
    others = {
        bool: st.one_of(ints, floats, texts, lists, tables),
        int: st.one_of(st.booleans(), floats, texts, lists, tables),
        float: st.one_of(st.booleans(), texts, lists, tables),
        str: st.one_of(st.booleans(), ints, floats, lists, tables),
    }
    if get_origin(annotation) in (Union, UnionType):  # e.g. tuple[int, ...] | Literal["auto"]
        members = get_args(annotation)
        choices = [choice for m in members if get_origin(m) is Literal for choice in get_args(m)]
        typed = [m for m in members if get_origin(m) is not Literal]
        return st.one_of(*(wrong_type_values(m) for m in typed)).filter(lambda v: v not in choices)
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        return st.one_of(ints, texts, st.booleans(), st.lists(others[item], min_size=1, max_size=3))
    return others[annotation]


@st.composite
def mistyped_setting(draw) -> tuple[str, str, Any]:
    section, key, annotation = draw(st.sampled_from(FIELDS))
    return section, key, draw(wrong_type_values(annotation))


@EXAMPLES
@given(setting=mistyped_setting())
def test_a_value_of_the_wrong_type_in_a_config_file_is_exit_code_2(setting, scratch, capsys):
    section, key, value = setting
    path = scratch() / "bad.toml"
    path.write_text(tomli_w.dumps({section: {key: value}}))
    err = cli_rejects(capsys, "config", str(path), about=f"{section}.{key} = {value!r}")
    assert TALLYING or f"{section}.{key}" in err


@EXAMPLES
@given(data=st.data())
def test_a_mistyped_algorithm_hyperparameter_is_a_user_error(data, fashion_mnist_available):
    name, key, annotation = data.draw(st.sampled_from(algorithm_fields()))
    value = data.draw(wrong_type_values(annotation))
    config = {"algorithm": {"name": "fedavg", name: {key: value}}}
    message = rejects(f"[algorithm.{name}] {key} = {value!r}", lambda: algorithm_of(config))
    assert TALLYING or f"algorithm.{name}.{key}" in message


def algorithm_of(config: dict[str, Any]) -> None:
    """What a run checks of the config's algorithm tables before it starts (small data, FedAvg)."""
    small = {"data": {"train_fraction": 0.02}, "partition": {"num_clients": 3}}
    check_inputs(Experiment(config_from_dict({**small, **config})))


def numeric_type(annotation: Any) -> Any:
    """``int``/``float``, also as the number of a union such as ``int | Literal["auto"]``; else None."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return next((m for m in members if m in (int, float)), None)


ALGORITHM_NUMBERS = [
    (name, key, numeric_type(t)) for name, key, t in algorithm_fields() if numeric_type(t) is not None
]


@EXAMPLES
@given(data=st.data())
def test_any_number_for_an_algorithm_hyperparameter_is_accepted_or_refused_at_once(data):
    name, key, annotation = data.draw(st.sampled_from(ALGORITHM_NUMBERS))
    value = data.draw(numbers_for(annotation))
    tables = {name: {key: value}}
    loads_or_rejects(f"[algorithm.{name}] {key} = {value!r}", lambda: check_algorithm_tables(tables))


def test_fedcda_with_a_huge_search_is_refused_at_once():
    tables = {"fedcda": {"memory_size": 2**62, "batch_size": 2**62}}
    assert "combinations" in rejects(
        "fedcda memory_size=batch_size=2**62", lambda: check_algorithm_tables(tables)
    )


def at_least(low: float) -> Callable[[float], bool]:
    return lambda v: v >= low


def above(low: float) -> Callable[[float], bool]:
    return lambda v: v > low


def fraction(v: float) -> bool:
    return 0 < v <= 1


def seed(v: float) -> bool:
    return 0 <= v <= INT64[1]


VALID_RANGE: dict[str, Callable[[float], bool]] = {
    "experiment.seed": seed,
    "data.server_holdout": at_least(0),  # its upper bound is the dataset's size (checked on loading)
    "data.train_fraction": fraction,
    "data.holdout_seed": seed,
    "train.rounds": at_least(1),
    "train.local_epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.lr": lambda v: 0 < v <= FLOAT32_MAX,
    "train.momentum": lambda v: 0 <= v <= FLOAT32_MAX,
    "train.weight_decay": lambda v: 0 <= v <= FLOAT32_MAX,
    "train.fraction_fit": fraction,
    "train.min_clients": lambda v: 1 <= v <= PartitionConfig.num_clients,
    "train.client_timeout_s": above(0),
    "eval.every": at_least(1),
    "eval.batch_size": at_least(1),
    "eval.fraction_evaluate": fraction,
    "eval.target_accuracy": lambda v: 0 <= v <= 100,
    "engine.threads_per_client": lambda v: 1 <= v <= 1024,
    "engine.parallel_clients": lambda v: 0 <= v <= 1024,
    "engine.keep_checkpoints": at_least(1),
    "teacher.resolution": lambda v: v >= 8 and v % 8 == 0,
    "teacher.noise_draws": at_least(1),
    "teacher.batch_size": at_least(1),
    "teacher.fit_samples": at_least(2),
    "teacher.seed": seed,
    "teacher.sample_steps": at_least(1),
    "teacher.guidance_scale": lambda v: 0 <= v <= FLOAT32_MAX,
    "faults.hang_s": above(0),
}
"""What each number of semanticfl.config may be (the partition's numbers depend on the dataset: see below)."""


def test_every_number_in_the_config_has_a_documented_valid_range():
    assert sorted(f"{s}.{k}" for s, k, _ in NUMERIC_FIELDS) == sorted(
        key for key in VALID_RANGE if key.split(".")[0] in get_type_hints(Config)
    )


def numbers_for(annotation: Any) -> st.SearchStrategy:
    """Edge-heavy numbers: zero, ±1, huge (past 64 bits), and for floats NaN/±inf and ints too."""
    ints = st.one_of(
        st.sampled_from([0, 1, -1, 2, 7, 8, 100, 101, 1024, 1025, INT64[1], INT64[1] + 1, -(2**64), 10**30]),
        st.integers(-(2**70), 2**70),
    )
    if annotation is int:
        return ints
    floats = st.one_of(
        st.sampled_from(
            [0.0, -0.0, 1.0, 1e-300, 0.5, 1.5, 100.0, 100.5, 1e308, math.nan, math.inf, -math.inf]
        ),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    return st.one_of(ints, floats)


@EXAMPLES
@given(data=st.data())
def test_numbers_outside_their_range_are_rejected_and_inside_accepted(data):
    section, key, annotation = data.draw(st.sampled_from(NUMERIC_FIELDS))
    value = data.draw(numbers_for(annotation))
    in_toml_range = not isinstance(value, int) or INT64[0] <= value <= INT64[1]
    valid = math.isfinite(value) and in_toml_range and VALID_RANGE[f"{section}.{key}"](value)
    description = f"{section}.{key} = {value!r}"
    call = lambda: config_from_dict({section: {key: value}})
    if valid:
        accepts(description, call)
        assert TALLYING or getattr(getattr(config_from_dict({section: {key: value}}), section), key) == value
    else:
        rejects(description, call)


@pytest.mark.parametrize(
    "override",
    [
        "engine.device=cuda:x",
        "engine.device=gpu",
        "engine.device=CPU",
        "engine.device=",
        "engine.precision=fp16",
        "engine.precision=BF16",
        "experiment.name=a/b",
        "experiment.name=..",
        "experiment.name=.",
        f"experiment.name={'x' * 300}",
        'experiment.name="a\\u0000b"',
        'experiment.output_dir="runs\\u0000"',
        'data.root="data\\u0000"',
        "experiment.seed=-1",
        "data.holdout_seed=-7",
        "teacher.kind=diffusion",
    ],
)
def test_impossible_strings_and_seeds_are_rejected_when_loading(override):
    rejects(override, lambda: load_config("quickstart", [override]))


def test_min_clients_above_the_clients_a_round_samples_is_rejected():
    rejects(
        "fraction_fit 0.1 of 10 clients, min_clients 2",
        lambda: load_config("quickstart", ["train.fraction_fit=0.1", "train.min_clients=2"]),
    )
    accepts(
        "fraction_fit 0.3 of 10 clients, min_clients 3",
        lambda: load_config("quickstart", ["train.fraction_fit=0.3", "train.min_clients=3"]),
    )


@EXAMPLES
@given(
    key=st.sampled_from(
        [
            "data.dataset",
            "model.name",
            "algorithm.name",
            "partition.scheme",
            "partition.class_assignment",
            "engine.backend",
        ]
    ),
    name=st.text(max_size=12),
)
def test_an_unknown_name_is_a_user_error_before_anything_runs(key, name, fashion_mnist_available):
    known = {
        "data.dataset": DATASETS,
        "model.name": model_names(),
        "algorithm.name": ALGORITHMS,
        "partition.scheme": SCHEMES,
        "partition.class_assignment": CLASS_ASSIGNMENTS,
        "engine.backend": ("simulation", "deployment"),
    }[key]
    if name in known:
        return
    override = f"{key}={json.dumps(name, ensure_ascii=False)}"
    rejects(override, lambda: quickstart_inputs([override]))


def test_an_unknown_class_assignment_exits_2_naming_the_valid_ones(
    capsys, tmp_path, fashion_mnist_available
):
    bad = ["partition.scheme=pathological", "partition.class_assignment=shuffled"]
    err = cli_rejects(capsys, "partition", "quickstart", *SMALL, *bad, "--out", str(tmp_path / "out"))
    assert TALLYING or "choose one of deterministic, random, first-deterministic" in err


def quickstart_inputs(overrides: list[str]) -> None:
    """What `semanticfl run quickstart OVERRIDES` checks before it writes anything."""
    check_inputs(Experiment(load_config("quickstart", [*SMALL, *overrides])))


def test_a_data_root_that_is_a_file_is_named_as_such(tmp_path, fashion_mnist_available):
    (tmp_path / "data").write_text("not a folder")
    message = rejects("data.root=<a file>", lambda: quickstart_inputs([f"data.root={tmp_path / 'data'}"]))
    assert TALLYING or "is a file, not a folder" in message


def test_a_device_this_machine_lacks_is_a_user_error(fashion_mnist_available):
    import torch

    missing = "cuda:999" if torch.cuda.is_available() else "cuda"
    message = rejects(f"engine.device={missing}", lambda: quickstart_inputs([f"engine.device={missing}"]))
    assert TALLYING or "engine.device" in message


@EXAMPLES
@given(
    section=st.sampled_from([*get_type_hints(Config), "nosuch"]),
    key=st.text(max_size=8),
    value=st.integers(0, 3),
)
def test_unknown_sections_and_keys_are_rejected(section, key, value):
    known = get_type_hints(Config).get(section)
    if known is not None and (key in {f.name for f in dataclasses.fields(known)} or section == "algorithm"):
        return
    rejects(f"[{section}] {key!r} = {value}", lambda: config_from_dict({section: {key: value}}))


@EXAMPLES
@given(table=st.text(min_size=1, max_size=10))
def test_a_table_for_an_unknown_algorithm_is_rejected(table, fashion_mnist_available):
    if table in ALGORITHMS or table == "name":
        return
    rejects(f"[algorithm.{table}]", lambda: algorithm_of({"algorithm": {"name": "fedavg", table: {"x": 1}}}))


@EXAMPLES
@given(item=st.text(max_size=20))
def test_any_override_string_is_applied_or_rejected_never_a_crash(item):
    loads_or_rejects(f"override {item!r}", lambda: load_config("quickstart", [item]))


@pytest.mark.parametrize(
    "item",
    [
        "train.rounds",
        "=5",
        "train.=5",
        ".rounds=5",
        "train..rounds=5",
        "rounds=5",
        "train.rounds.x=5",
        "experiment=1",
        "train.rounds=[1,",
        "train.rounds=5 6",
    ],
)
def test_malformed_overrides_are_exit_code_2(item, capsys):
    cli_rejects(capsys, "config", "quickstart", item)


def test_int_for_a_float_and_edge_values_are_accepted(fashion_mnist_available):
    config = load_config(
        "quickstart",
        [
            "train.lr=1",
            "train.momentum=0",
            "train.fraction_fit=1",
            "eval.target_accuracy=100",
            "experiment.seed=9223372036854775807",
            "engine.device=cpu",
            "experiment.name=run_1.a-b",
        ],
    )
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.experiment.seed == INT64[1]
    accepts(
        "fedprox mu=0, an int", lambda: algorithm_of({"algorithm": {"name": "fedprox", "fedprox": {"mu": 0}}})
    )
    accepts("fedavg with a fedprox table", lambda: algorithm_of({"algorithm": {"fedprox": {"mu": 0.5}}}))


def plausible_values(annotation: Any) -> st.SearchStrategy:
    """Values of the right type, often valid: small numbers, known names, short lists."""
    if get_origin(annotation) is tuple:
        return st.lists(plausible_values(get_args(annotation)[0]), max_size=3)
    return {
        bool: st.booleans(),
        int: st.integers(-2, 20),
        float: st.one_of(st.integers(0, 3), st.floats(-0.5, 2.0)),
        str: st.one_of(
            st.sampled_from(["cpu", "simulation", "offline", "cnn", "fedavg", "iid"]), st.text(max_size=8)
        ),
    }[annotation]


@st.composite
def config_documents(draw) -> dict[str, dict[str, Any]]:
    """A TOML document that sets a few of the config's real settings to plausible or mistyped values."""
    document: dict[str, dict[str, Any]] = {}
    for section, key, annotation in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        value = draw(st.one_of(plausible_values(annotation), wrong_type_values(annotation)))
        document.setdefault(section, {})[key] = value
    return document


@EXAMPLES
@given(document=config_documents())
def test_a_config_that_loads_is_written_to_config_toml_and_read_back_equal(document):
    loaded: list[Config] = []
    loads_or_rejects(f"document {document!r}", lambda: loaded.append(config_from_dict(document)))
    if loaded:  # what --resume reads back must be what ran
        assert TALLYING or config_from_dict(tomllib.loads(loaded[0].to_toml())) == loaded[0]


# --------------------------------------------------------------------------- config files


@EXAMPLES
@given(content=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_any_config_file_content_loads_or_is_exit_code_2(content, scratch, capsys):
    path = scratch() / "config.toml"
    path.write_bytes(content)
    codes: list[int] = []
    outcome_of(f"config file {content!r}", lambda: codes.append(main(["config", str(path)])))
    _, err = capsys.readouterr()
    assert TALLYING or codes == [0] or (codes == [2] and len(err.strip().splitlines()) == 1), err


def test_missing_corrupt_and_binary_config_files(tmp_path, capsys):
    cli_rejects(capsys, "config", str(tmp_path / "missing.toml"))
    (tmp_path / "corrupt.toml").write_text("[train\nrounds = ")
    cli_rejects(capsys, "config", str(tmp_path / "corrupt.toml"))
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x81 not text")
    assert TALLYING or "binary.toml" in cli_rejects(capsys, "config", str(tmp_path / "binary.toml"))


def test_a_real_process_reports_a_binary_config_in_one_line(tmp_path):
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00\x81 not text")
    result = semanticfl("config", str(tmp_path / "binary.toml"), cwd=tmp_path, timeout=120)
    OUTCOMES["subprocess: semanticfl config binary.toml"] = (
        "user_error" if result.returncode == 2 else "crash"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- partition parameters


def partition_rejects(description: str, overrides: list[str]) -> str:
    return rejects(
        description, lambda: Experiment(load_config("quickstart", [*SMALL, *overrides])).partitions
    )


@EXAMPLES
@given(
    bad=st.one_of(
        st.integers(max_value=0).map(lambda v: ["partition.num_clients=" + str(v), "train.min_clients=1"]),
        st.integers(1201, 10**6).map(lambda v: [f"partition.num_clients={v}"]),
        st.sampled_from(["0", "-0.5", "nan", "inf", "-inf", "1e-400"]).map(
            lambda v: [f"partition.alpha={v}"]
        ),
        st.sampled_from(["0", "-1", "nan", "inf"]).map(lambda v: [f"partition.quantity_alpha={v}"]),
        st.integers(max_value=0).map(
            lambda v: ["partition.scheme=pathological", f"partition.classes_per_client={v}"]
        ),
        st.integers(11, 10**6).map(
            lambda v: ["partition.scheme=pathological", f"partition.classes_per_client={v}"]
        ),
        st.integers(max_value=0).map(
            lambda v: ["partition.scheme=shards", f"partition.shards_per_client={v}"]
        ),
        st.integers(401, 10**6).map(
            lambda v: ["partition.scheme=shards", f"partition.shards_per_client={v}"]
        ),
        st.integers(max_value=0).map(lambda v: [f"partition.min_partition_size={v}"]),
        st.integers(401, 10**6).map(lambda v: [f"partition.min_partition_size={v}"]),
        st.integers(max_value=0).map(lambda v: [f"partition.max_retries={v}"]),
        st.floats(max_value=0.999).map(lambda v: [f"partition.imbalance_factor={v!r}"]),
        st.floats(1e6, 1e300).map(lambda v: [f"partition.imbalance_factor={v!r}"]),
        st.floats(max_value=0).map(lambda v: [f"data.train_fraction={v!r}"]),
        st.floats(min_value=1.0001).map(lambda v: [f"data.train_fraction={v!r}"]),
        st.integers(60000, 10**9).map(lambda v: [f"data.server_holdout={v}"]),
    )
)
def test_impossible_partition_parameters_are_user_errors(bad, fashion_mnist_available):
    partition_rejects(" ".join(bad), bad)


@EXAMPLES
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    scheme=st.sampled_from(SCHEMES),
    num_clients=st.integers(1, 12),
    knob=st.integers(1, 6),
    alpha=st.floats(0.01, 10),
    imbalance=st.sampled_from([1.0, 2.0, 50.0]),
)
def test_a_partition_gives_every_client_a_sample_or_is_refused(
    labels, scheme, num_clients, knob, alpha, imbalance
):
    spec = PartitionSpec(
        scheme=scheme,
        num_clients=num_clients,
        alpha=alpha,
        classes_per_client=knob,
        shards_per_client=knob,
        quantity_alpha=alpha,
        imbalance_factor=imbalance,
        min_partition_size=1,
        max_retries=3,
    )
    parts: list[np.ndarray] = []
    description = f"partition {spec} of labels {labels}"
    loads_or_rejects(description, lambda: parts.extend(partition_indices(np.array(labels), spec, 5)))
    if parts:
        assert TALLYING or (len(parts) == num_clients and all(len(part) for part in parts)), description
        assert TALLYING or len(np.unique(np.concatenate(parts))) == sum(len(part) for part in parts)


def test_clients_left_empty_are_named(monkeypatch, fashion_mnist_available):
    import semanticfl.engine.experiment as experiment_module

    def one_empty(labels, spec, num_classes, cache=None):
        return [np.arange(len(labels)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]

    monkeypatch.setattr(experiment_module, "partition_indices", one_empty)
    assert "clients [1, 2] received no samples" in partition_rejects("empty clients", [])


# --------------------------------------------------------------------------- dataset files


def png(height: int, width: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(
    folder: Path,
    images: list[Any],
    labels: list[Any],
    image_type=None,
    label_type=None,
    columns=("img", "label"),
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({columns[0]: pa.array(images, image_type), columns[1]: pa.array(labels, label_type)})
    for split in ("train", "test"):
        pq.write_table(table, folder / f"{split}.parquet")


def load_cifar10(root: Path) -> Callable[[], Any]:
    return lambda: load_image_dataset("cifar10", root=str(root), cache_dir=str(root / "cache"))


GOOD_PNG = png(32, 32)
STRUCT_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@st.composite
def bad_parquet(draw) -> tuple[str, dict[str, Any]]:
    """(what is wrong, keyword arguments of write_parquet) for a parquet pair cifar10 must refuse."""
    rows = draw(st.integers(1, 3))
    kind = draw(
        st.sampled_from(
            [
                "labels out of range",
                "float labels",
                "text labels",
                "null labels",
                "no rows",
                "wrong columns",
                "not an image",
                "wrong size",
                "image struct without bytes",
                "image column of numbers",
            ]
        )
    )
    images, labels = [GOOD_PNG] * rows, [0] * rows
    if kind == "labels out of range":
        labels = [draw(st.one_of(st.integers(max_value=-1), st.integers(10, 2**62)))] * rows
    elif kind == "float labels":
        return kind, {"images": images, "labels": [draw(st.floats())] * rows}
    elif kind == "text labels":
        return kind, {"images": images, "labels": [draw(st.text(max_size=4))] * rows}
    elif kind == "null labels":
        return kind, {"images": images, "labels": [None] * rows, "label_type": pa.int64()}
    elif kind == "no rows":
        return kind, {"images": [], "labels": [], "image_type": pa.binary(), "label_type": pa.int64()}
    elif kind == "wrong columns":
        names = draw(st.sampled_from([("image_bytes", "label"), ("img", "target"), ("pixels", "y")]))
        return kind, {"images": images, "labels": labels, "columns": names}
    elif kind == "not an image":
        images = [draw(st.binary(max_size=40))] * rows
    elif kind == "wrong size":
        height, width = draw(
            st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda s: s != (32, 32))
        )
        images = [png(height, width, draw(st.sampled_from(["RGB", "L", "RGBA"])))] * rows
    elif kind == "image struct without bytes":
        return kind, {
            "images": [{"path": "a.png"}] * rows,
            "labels": labels,
            "image_type": pa.struct([("path", pa.string())]),
        }
    else:
        return kind, {"images": [draw(st.integers(*INT64))] * rows, "labels": labels}
    return kind, {"images": images, "labels": labels}


@EXAMPLES
@given(case=bad_parquet())
def test_a_bad_parquet_dataset_is_a_user_error(case, scratch):
    kind, table = case
    root = scratch()
    write_parquet(root / "cifar10", **table)
    rejects(f"parquet: {kind} {table!r:.200}", load_cifar10(root))


@EXAMPLES
@given(
    cut=st.floats(0, 0.999),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    fmt=st.sampled_from(["PNG", "JPEG"]),
)
def test_damaged_image_bytes_decode_or_are_a_user_error(cut, flips, fmt, scratch):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, format=fmt)
    blob = bytearray(buffer.getvalue())
    for position, byte in flips:
        blob[position % len(blob)] = byte
    blob = bytes(blob[: max(1, int(len(blob) * (1 - cut)))])
    root = scratch()
    write_parquet(root / "cifar10", [blob], [3])
    loads_or_rejects(f"{fmt} bytes {hashlib.sha256(blob).hexdigest()[:16]}", load_cifar10(root))


def test_a_truncated_parquet_file_is_a_user_error(tmp_path):
    write_parquet(tmp_path / "cifar10", [GOOD_PNG] * 4, [1, 2, 3, 4])
    train = tmp_path / "cifar10" / "train.parquet"
    for keep in (0, 4, 100, train.stat().st_size - 1):
        train.write_bytes(train.read_bytes()[:keep] if keep else b"")
        rejects(f"parquet truncated to {keep} bytes", load_cifar10(tmp_path))
        write_parquet(tmp_path / "cifar10", [GOOD_PNG] * 4, [1, 2, 3, 4])


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder: Path, train_images: bytes, train_labels: bytes) -> None:
    """The four IDX files (gzipped) with the given training pair and a valid 2-image test pair."""
    test = (idx_bytes(np.zeros((2, 28, 28), np.uint8)), idx_bytes(np.array([1, 2], np.uint8)))
    folder.mkdir(parents=True, exist_ok=True)
    files = zip(
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
        (train_images, train_labels, *test),
    )
    for stem, payload in files:
        (folder / f"{stem}.gz").write_bytes(payload if payload[:2] == b"\x1f\x8b" else gzip.compress(payload))


@st.composite
def bad_idx_pair(draw) -> tuple[str, bytes, bytes]:
    """(what is wrong, training images file, training labels file) that mnist must refuse."""
    images, labels = np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.uint8)
    kind = draw(
        st.sampled_from(
            [
                "labels out of range",
                "label count",
                "image shape",
                "header",
                "truncated",
                "corrupt gzip",
                "empty",
            ]
        )
    )
    if kind == "labels out of range":
        labels = np.array([0, 1, draw(st.integers(10, 255))], np.uint8)
    elif kind == "label count":
        labels = np.zeros(draw(st.integers(0, 6).filter(lambda n: n != 3)), np.uint8)
    elif kind == "image shape":
        size = draw(st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda s: s != (28, 28)))
        images = np.zeros((3, *size), np.uint8)
    elif kind == "header":
        raw = bytearray(idx_bytes(images))
        raw[draw(st.integers(0, 3))] ^= draw(st.integers(1, 255))
        return kind, bytes(raw), idx_bytes(labels)
    elif kind == "truncated":
        raw = idx_bytes(images)
        return kind, raw[: draw(st.integers(0, len(raw) - 1))], idx_bytes(labels)
    elif kind == "corrupt gzip":
        packed = bytearray(gzip.compress(idx_bytes(images)))
        for position in draw(st.lists(st.integers(10, len(packed) - 9), min_size=1, max_size=4)):
            packed[position] ^= 0xA5
        return kind, bytes(packed), idx_bytes(labels)
    else:
        images, labels = np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    return kind, idx_bytes(images), idx_bytes(labels)


@EXAMPLES
@given(case=bad_idx_pair())
def test_bad_idx_files_are_a_user_error_or_still_valid(case, scratch):
    kind, images, labels = case
    root = scratch()
    write_mnist(root / "mnist", images, labels)
    call = lambda: load_image_dataset("mnist", root=str(root), cache_dir=str(root / "cache"))
    description = f"idx: {kind} {hashlib.sha256(images + labels).hexdigest()[:16]}"
    if kind == "corrupt gzip":  # a flipped byte in the gzip trailer or a stored field may still decode
        loads_or_rejects(description, call)
    else:
        rejects(description, call)


@EXAMPLES
@given(
    labels=st.one_of(
        st.lists(st.text(max_size=3), min_size=2, max_size=2),
        st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=2, max_size=2),
        st.integers(),
        st.lists(st.integers(-5, 20), min_size=2, max_size=2).filter(
            lambda v: not all(0 <= x < 10 for x in v)
        ),
        st.lists(st.integers(0, 9), min_size=0, max_size=4).filter(lambda v: len(v) != 2),
    )
)
def test_cifar_batches_with_bad_labels_are_a_user_error(labels, scratch):
    root = scratch()
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, handle)
    rejects(f"cifar labels {labels!r}", load_cifar10(root))


@EXAMPLES
@given(
    files=st.lists(
        st.tuples(st.sampled_from(["T-shirt_top", "trouser", "bag"]), st.binary(max_size=30)),
        min_size=1,
        max_size=3,
    ),
    size=st.integers(1, 40).filter(lambda s: s != 28),
)
def test_image_folders_with_non_images_or_wrong_sizes_are_a_user_error(files, size, scratch):
    root = scratch()
    for split in ("train", "test"):
        for index, (label, blob) in enumerate(files):
            folder = root / "fashion_mnist" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index}.png").write_bytes(blob)
        (root / "fashion_mnist" / split / "trouser").mkdir(exist_ok=True)
        (root / "fashion_mnist" / split / "trouser" / "sized.png").write_bytes(png(size, size, "L"))
    rejects(
        f"image folder {files!r} + {size}px",
        lambda: load_image_dataset("fashion_mnist", root=str(root), cache_dir=str(root / "cache")),
    )


def write_tiny_imagenet(root: Path, damage: str, blob: bytes) -> None:
    """A two-class tiny-imagenet-200 tree with one thing wrong (``damage``; ``blob`` where bytes are needed)."""
    tree = root / "tiny-imagenet-200"
    (tree / "val" / "images").mkdir(parents=True)
    wnids = ["n01", "n02"]
    (tree / "wnids.txt").write_bytes(b"" if damage == "no classes" else "\n".join(wnids).encode())
    words = "n01\tgoldfish\n" + ("" if damage == "a class without a name" else "n02\tEgyptian cat\n")
    (tree / "words.txt").write_bytes(blob if damage == "words.txt not text" else words.encode())
    for wnid in wnids if damage != "no training images" else []:
        (tree / "train" / wnid / "images").mkdir(parents=True)
        image = blob if damage == "a training image is not an image" else png(64, 64)
        (tree / "train" / wnid / "images" / f"{wnid}_0.JPEG").write_bytes(image)
    (tree / "train").mkdir(exist_ok=True)
    wnid = "n99" if damage == "a validation image of an unknown class" else "n02"
    name = "missing.JPEG" if damage == "a validation image that is missing" else "val_0.JPEG"
    (tree / "val" / "val_annotations.txt").write_text(f"{name}\t{wnid}\t0\t0\t9\t9\n")
    (tree / "val" / "images" / "val_0.JPEG").write_bytes(
        png(64, 63) if damage == "wrong size" else png(64, 64)
    )


@EXAMPLES
@given(
    damage=st.sampled_from(
        [
            "no classes",
            "a class without a name",
            "words.txt not text",
            "no training images",
            "a training image is not an image",
            "a validation image of an unknown class",
            "a validation image that is missing",
            "wrong size",
        ]
    ),
    blob=st.binary(max_size=24).map(lambda b: b"\xff" + b),
)
def test_a_damaged_tiny_imagenet_tree_is_a_user_error(damage, blob, scratch):
    root = scratch()
    write_tiny_imagenet(root, damage, blob)
    rejects(
        f"tinyimagenet: {damage} {blob!r}",
        lambda: load_image_dataset("tinyimagenet", root=str(root), cache_dir=str(root / "cache")),
    )


# --------------------------------------------------------------------------- nothing overwritten


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, and every folder (as "dir")."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "dir"
        for path in sorted(folder.rglob("*"))
    }


def rejects_without_writing(capsys, folder: Path, *argv: str, about: str = "") -> None:
    """``semanticfl ARGV`` is refused (see cli_rejects) and leaves ``folder`` exactly as it was."""
    before = snapshot(folder)
    cli_rejects(capsys, *argv, about=about)
    if snapshot(folder) != before:
        OUTCOMES[" ".join(["semanticfl", *argv, about])] += "; changed or added files"
        assert TALLYING, f"semanticfl {' '.join(argv)} changed {folder}"


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> Path:
    """An output folder holding a finished run (its files' content does not matter, only that it stays)."""
    out = tmp_path_factory.mktemp("results")
    run = out / "quickstart-20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(load_config("quickstart", SMALL).to_toml())
    (run / "metrics.jsonl").write_text('{"round": 1, "test_accuracy": 50.0}\n')
    (run / "summary.json").write_text('{"final_accuracy": 50.0}\n')
    (run / "partition.csv").write_text("client,a\n0,1\n")
    (run / "checkpoints" / "round-0001.safetensors").write_bytes(os.urandom(256))
    return out


BAD_DATA_INPUTS = [
    ["partition.alpha=0"],
    ["partition.num_clients=0"],
    ["data.dataset=imagenet22k"],
    ["experiment.seed=-1"],
    ["data.root=/nonexistent/data"],
    ["data.server_holdout=60000"],
    ["partition.scheme=pathological", "partition.classes_per_client=11"],
    ["partition.scheme=pathological", "partition.class_assignment=shuffled"],
]
"""Bad for every command that reads the data (run, compare, partition)."""
BAD_RUN_INPUTS = [
    ["model.name=vgg99"],
    ["algorithm.fedprox.mu=-1"],
    ["algorithm.nosuch.x=1"],
    ["experiment.name=a/b"],
    ["engine.device=cuda:999"],
]
"""Bad for the commands that train (`partition` needs no model, algorithm or device; `compare` sets
algorithm.name itself, so that one is not among them)."""


@EXAMPLES
@given(
    case=st.one_of(
        st.tuples(st.sampled_from(BAD_DATA_INPUTS), st.sampled_from(["run", "compare", "partition"])),
        st.tuples(st.sampled_from(BAD_RUN_INPUTS), st.sampled_from(["run", "compare"])),
    )
)
def test_bad_input_leaves_an_existing_results_folder_byte_identical(
    case, previous_run, capsys, fashion_mnist_available
):
    bad, command = case
    out = previous_run / "partition-report"
    extra = {"run": [], "compare": ["--algorithms", "fedavg,fedprox"], "partition": ["--out", str(out)]}
    argv = [command, "quickstart", *SMALL, *bad, f"experiment.output_dir={previous_run}", *extra[command]]
    rejects_without_writing(capsys, previous_run, *argv)


@pytest.mark.parametrize("command", ["run", "compare", "partition"])
def test_an_output_folder_that_is_a_file_is_refused_and_kept(
    command, previous_run, capsys, fashion_mnist_available
):
    taken = previous_run / "quickstart-20260101-000000" / "summary.json"
    where = ["--out", str(taken)] if command == "partition" else [f"experiment.output_dir={taken}"]
    algorithms = ["--algorithms", "fedavg"] if command == "compare" else []
    rejects_without_writing(capsys, previous_run, command, "quickstart", *SMALL, *where, *algorithms)


def test_resuming_a_run_with_a_broken_config_changes_nothing(previous_run, capsys):
    run = previous_run / "quickstart-20260101-000000"
    good = (run / "config.toml").read_bytes()
    try:
        for broken in (
            b"[train\nrounds=",
            b"\xff\xfe binary",
            b"[train]\nrounds = 0\n",
            b"[nosuch]\nx = 1\n",
        ):
            (run / "config.toml").write_bytes(broken)
            rejects_without_writing(capsys, previous_run, "run", "--resume", str(run), about=repr(broken))
    finally:
        (run / "config.toml").write_bytes(good)
