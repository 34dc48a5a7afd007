"""Experiment configuration: TOML files, ``key=value`` overrides, validation.

Every hyperparameter of a run lives in one :class:`Config`. A TOML file may set any subset
of it; the rest keeps the defaults below. ``section.key=value`` overrides from the command
line are applied on top (values parsed as TOML, bare words as strings). Unknown keys,
wrong types and impossible values raise :class:`~semanticfl.errors.UserError` with a
one-line message. Algorithm hyperparameters live in ``[algorithm.<name>]`` tables and are
checked against the algorithm's own ``Params`` dataclass by the registry.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import tomli_w

from semanticfl.errors import UserError


@dataclass
class ExperimentConfig:
    """Naming, seeding and where results go."""

    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"


@dataclass
class DataConfig:
    """Which dataset, from where, and what the server withholds from every client."""

    dataset: str = "fashion_mnist"
    root: str = ""
    download: bool = False
    augment: bool = True
    server_holdout: int = 0
    """Training samples (stratified by class) withheld from all clients; the server uses them
    as a validation split (central evaluation reports ``val_accuracy`` on them, less any of them it
    shares with clients as a public guidance set)."""
    train_fraction: float = 1.0
    """Share of the remaining training set (seeded random subset) that clients partition;
    < 1 sizes an experiment down to a small machine."""
    holdout_seed: int = 0
    """Seed of the server holdout's draw; independent of ``experiment.seed`` so every seed of a
    study withholds the same public split (the one an offline teacher was trained on)."""


@dataclass(frozen=True)
class PartitionConfig:
    """How the training pool is split over clients (see :mod:`semanticfl.data.partition`, whose
    ``PartitionSpec`` is these settings plus the seed). Frozen, since that frozen spec extends it."""

    scheme: str = "dirichlet"
    """``iid``, ``dirichlet``, ``pathological`` (#C=k), ``shards`` or ``quantity``."""
    num_clients: int = 10
    """How many clients the pool is split over."""
    alpha: float = 0.5
    """Dirichlet concentration of each class over clients (``dirichlet``)."""
    classes_per_client: int = 2
    """Exact number of classes per client (``pathological``, #C=k)."""
    class_assignment: str = "deterministic"
    """How ``pathological`` picks each client's classes: ``deterministic`` (k consecutive classes, from
    p mod C for client p when num_clients >= C), ``random`` (k drawn without replacement; a class no client
    draws is left out) or ``first-deterministic`` (class p mod C, then k - 1 drawn: NIID-Bench's
    ``noniid-#label`` code); draws use experiment.seed."""
    shards_per_client: int = 2
    """Label-sorted shards dealt to each client (``shards``)."""
    quantity_alpha: float = 0.5
    """Dirichlet concentration over client sizes, labels IID (``quantity``)."""
    imbalance_factor: float = 1.0
    """Long-tail ratio n_max / n_min applied before partitioning (1 = off)."""
    min_partition_size: int = 10
    """Smallest allowed client (``dirichlet`` and ``quantity``)."""
    max_retries: int = 10
    """How many seeds to try where sampling can fail."""


@dataclass
class ModelConfig:
    """The client model architecture (see :mod:`semanticfl.models`)."""

    name: str = "cnn"


@dataclass
class TrainConfig:
    """Rounds, local optimisation and client participation."""

    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    fraction_fit: float = 1.0
    min_clients: int = 1
    """The least number of clients whose updates a round must aggregate; fewer stops the run."""
    client_timeout_s: float = 600.0


@dataclass
class EvalConfig:
    """Centralised evaluation of the global model, optional federated evaluation."""

    central: bool = True
    every: int = 1
    batch_size: int = 500
    federated: bool = False
    fraction_evaluate: float = 1.0
    target_accuracy: float = 0.0
    """If > 0, the summary reports the first round whose test accuracy reaches it (in %)."""


@dataclass
class EngineConfig:
    """How rounds are executed: Flower's Simulation Engine or Deployment Engine."""

    backend: str = "simulation"
    threads_per_client: int = 1
    parallel_clients: int = 0
    """Clients trained at once in simulation; 0 = one per available core."""
    longest_first: bool = True
    """Simulation: start the round's largest clients first, so the parallel workers finish together
    (scheduling only: every client's result is the same in any order)."""
    device: str = "cpu"
    channels_last: bool = True
    """Conv weights and image batches in channels-last (NHWC) memory: training steps 1.2x (cnn, resnet10)
    to 1.7x (mobilenet) faster on this CPU (BENCHMARKS.md, *The compute limit*); the same arithmetic in
    another order, so results move only by float rounding. ``false`` gives NCHW, the layout of the rows
    recorded before it."""
    precision: str = "fp32"
    """Local training's forward pass: "fp32", or "bf16" (``torch.autocast``; with channels-last 1.8x
    (resnet10) and 1.3x (mobilenet) faster than fp32 on a CPU with AVX-512 BF16, no faster for the cnn).
    Evaluation and aggregation stay fp32."""
    keep_checkpoints: int = 2
    audit: bool = False
    """Describe every message a client sends in ``messages.jsonl`` (see engine/audit.py)."""


@dataclass
class FaultsConfig:
    """Fault injection for reliability tests: listed clients misbehave on purpose (default: none).

    A client listed here (by partition id) raises, sleeps ``hang_s`` before replying, or returns
    NaN/Inf arrays in its train reply, in ``rounds`` (empty = every round). Round 0, named
    explicitly, is SemanticFL's offload exchange before round 1 (raise and hang). The server must
    exclude it, log it and carry on while ``train.min_clients`` answered (docs/RELIABILITY.md).
    """

    raise_clients: tuple[int, ...] = ()
    nan_clients: tuple[int, ...] = ()
    hang_clients: tuple[int, ...] = ()
    hang_s: float = 60.0
    rounds: tuple[int, ...] = ()


@dataclass
class TeacherConfig:
    """The frozen semantic teacher of teacher-guided algorithms (FedDifRC, SemanticFL).

    What is extracted (timestep, layers, prompts) belongs to the algorithm's own table; this
    section says which teacher and how to run it.
    """

    kind: str = "offline"
    """``offline`` (the project's small latent diffusion model) or ``stable_diffusion``."""
    path: str = ""
    """Offline: a weights folder ("" = the one shipped for the dataset). Stable Diffusion: a
    local diffusers folder, or a hub id when ``allow_download`` and a network exist."""
    allow_download: bool = False
    resolution: int = 32
    """Images are resized to this before the VAE (a multiple of the VAE's downsampling)."""
    noise_draws: int = 1
    """Features averaged over this many noise draws."""
    batch_size: int = 128
    """Images per U-Net call (prompt repeats count); bounds the extraction's memory."""
    fit_samples: int = 2000
    """Public-split samples the per-layer PCA is fitted on."""
    seed: int = 0
    """Seed of the teacher's noise draws (and VAE posterior samples). Independent of
    ``experiment.seed``: the frozen teacher's features, like its weights, are the same for every seed
    of a sweep, so they are extracted once; vary it to include the noise draws in the spread."""
    cache_dir: str = ""
    """Feature store root ("" = $SEMANTICFL_CACHE/features or ~/.cache/semanticfl/features)."""
    sample_steps: int = 50
    """Denoising steps when the teacher generates images (SemanticFL's guidance set, datashare)."""
    guidance_scale: float = 3.0
    """Classifier-free guidance scale of generation (<= 1: the conditional prediction alone)."""
    sampler: str = "ddim"
    """The diffusers scheduler generation runs: ``ddim`` (η = 0), ``dpm`` (DPM-Solver++) or ``euler``."""


@dataclass
class AlgorithmConfig:
    """The algorithm's name; its hyperparameters sit in ``[algorithm.<name>]``."""

    name: str = "fedavg"
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Config:
    """A whole experiment."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)

    def algorithm_params(self) -> dict[str, Any]:
        """The ``[algorithm.<name>]`` table of the selected algorithm (may be empty)."""
        return dict(self.algorithm.params.get(self.algorithm.name, {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, as written to ``config.toml``."""
        out = dataclasses.asdict(self)
        algorithm = out.pop("algorithm")
        out["algorithm"] = {"name": algorithm["name"], **algorithm["params"]}
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


_SECTION_TYPES = get_type_hints(Config)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
"""Largest step size, momentum or weight decay: the optimiser applies them to float32 weights."""
MAX_PARALLEL = 1024
PRECISIONS = ("fp32", "bf16")
OFFLOAD_ROUND = 0
"""``faults.rounds`` entry of the one-time offload exchange before round 1."""
"""Most torch threads per client, and most clients trained at once, that a run may ask for."""
MAX_NAME_BYTES = 200
"""Longest ``experiment.name``: file names stop at 255 bytes and runs append ``-compare-YYYYmmdd-HHMMSS-N``."""


# --------------------------------------------------------------------------- building


def _describe_type(expected: Any) -> str:
    """How a one-line error names an annotated type: ``tuple[int, ...] | Literal["auto"]`` → "a list of
    integers or 'auto'"."""
    if get_origin(expected) in (Union, types.UnionType):
        return " or ".join(_describe_type(member) for member in get_args(expected))
    if get_origin(expected) is Literal:
        return " or ".join(repr(choice) for choice in get_args(expected))
    if get_origin(expected) is tuple:
        items = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {items.get(get_args(expected)[0], 'values')}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(expected, str(expected))


def _check_value(value: Any, expected: Any, where: str) -> Any:
    """Return ``value`` if it fits the annotated type (ints widen to float), else fail. A union takes
    a value its first fitting member takes; a ``Literal`` of strings takes exactly those strings."""
    if get_origin(expected) in (Union, types.UnionType):
        errors = {}
        for member in get_args(expected):
            try:
                return _check_value(value, member, where)
            except UserError as error:
                errors[get_origin(member)] = error
        if isinstance(value, (list, tuple)) and tuple in errors:
            raise errors[tuple]  # a list with a wrong item: name the item
        raise UserError(f"{where} must be {_describe_type(expected)}, got {value!r}")
    if get_origin(expected) is Literal:
        if not (isinstance(value, str) and value in get_args(expected)):
            raise UserError(f"{where} must be {_describe_type(expected)}, got {value!r}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return _check_int64(value, where)
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int):
            return float(_check_int64(value, where))
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        if "\0" in value:
            raise UserError(f"{where} must not contain a NUL character, got {value!r}")
        return value
    if get_origin(expected) is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, e.g. [1, 2, 3], got {value!r}")
        item_type = get_args(expected)[0]
        return tuple(_check_value(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    return value


def _check_int64(value: int, where: str) -> int:
    """TOML integers are 64-bit; a bigger one cannot be a setting (nor a torch or numpy seed)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise UserError(f"{where} must fit in 64 bits ({INT64_MIN} to {INT64_MAX}), got {value}")
    return value


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"[{where}] must be a table of settings, got {data!r}")
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(
                f"unknown setting {where + '.' + key!r}; known settings in [{where}]: {', '.join(known)}"
            )
        values[key] = _check_value(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _build_algorithm_section(data: dict[str, Any]) -> AlgorithmConfig:
    if not isinstance(data, dict):
        raise UserError(f"[algorithm] must be a table of settings, got {data!r}")
    name = data.get("name", AlgorithmConfig.name)
    if not isinstance(name, str):
        raise UserError(f"algorithm.name must be a string, got {name!r}")
    params = {}
    for key, value in data.items():
        if key == "name":
            continue
        if not isinstance(value, dict):
            raise UserError(
                f"unknown setting {'algorithm.' + key!r}; put hyperparameters in a table, "
                f"e.g. {f'algorithm.{name}.{key}={value!r}'!r}"
            )
        params[key] = dict(value)
    return AlgorithmConfig(name=name, params=params)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys keep defaults)."""
    sections = {}
    for section, values in data.items():
        if section not in _SECTION_TYPES:
            raise UserError(
                f"unknown config section {section!r}; known sections: {', '.join(_SECTION_TYPES)}"
            )
        if section == "algorithm":
            sections[section] = _build_algorithm_section(values)
        else:
            sections[section] = build_dataclass(_SECTION_TYPES[section], values, section)
    config = Config(**sections)
    validate(config)
    return config


# --------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(config: Config) -> None:
    """Range checks that do not need the dataset (those happen when it is loaded)."""
    t, e, p, g = config.train, config.eval, config.partition, config.engine
    _require(t.rounds >= 1, f"train.rounds must be >= 1, got {t.rounds}")
    _require(t.local_epochs >= 1, f"train.local_epochs must be >= 1, got {t.local_epochs}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require_optimiser_value("train.lr", t.lr, positive=True)
    _require_optimiser_value("train.momentum", t.momentum, positive=False)
    _require_optimiser_value("train.weight_decay", t.weight_decay, positive=False)
    _require(0 < t.fraction_fit <= 1, f"train.fraction_fit must be in (0, 1], got {t.fraction_fit}")
    _validate_partition(p)
    _require(t.min_clients >= 1, f"train.min_clients must be >= 1, got {t.min_clients}")
    _require(
        t.min_clients <= p.num_clients,
        f"train.min_clients ({t.min_clients}) exceeds partition.num_clients ({p.num_clients})",
    )
    per_round = clients_per_round(t.fraction_fit, p.num_clients)
    _require(
        t.min_clients <= per_round,
        f"train.min_clients ({t.min_clients}) exceeds the {per_round} client(s) a round samples "
        f"(train.fraction_fit × partition.num_clients, rounded up), so no round could finish; "
        f"lower train.min_clients or raise train.fraction_fit",
    )
    _require(t.client_timeout_s > 0, f"train.client_timeout_s must be > 0, got {t.client_timeout_s}")
    _require(e.every >= 1, f"eval.every must be >= 1, got {e.every}")
    _require(e.batch_size >= 1, f"eval.batch_size must be >= 1, got {e.batch_size}")
    _require(
        0 < e.fraction_evaluate <= 1,
        f"eval.fraction_evaluate must be in (0, 1], got {e.fraction_evaluate}",
    )
    _require(
        0 <= e.target_accuracy <= 100,
        f"eval.target_accuracy is a percentage in [0, 100], got {e.target_accuracy}",
    )
    _require(
        g.backend in ("simulation", "deployment"),
        f"engine.backend must be 'simulation' or 'deployment', got {g.backend!r}",
    )
    _require(
        1 <= g.threads_per_client <= MAX_PARALLEL,
        f"engine.threads_per_client must be in [1, {MAX_PARALLEL}], got {g.threads_per_client}",
    )
    _require(
        0 <= g.parallel_clients <= MAX_PARALLEL,
        f"engine.parallel_clients must be in [0, {MAX_PARALLEL}] (0 = one per core), got {g.parallel_clients}",
    )
    _require(
        g.precision in PRECISIONS, f"engine.precision must be one of {', '.join(PRECISIONS)}, got {g.precision!r}"
    )
    _require(g.keep_checkpoints >= 1, f"engine.keep_checkpoints must be >= 1, got {g.keep_checkpoints}")
    _require(
        re.fullmatch(r"cpu|cuda(:[0-9]+)?", g.device) is not None,
        f"engine.device must be 'cpu', 'cuda' or 'cuda:N', got {g.device!r}",
    )
    _require(config.data.server_holdout >= 0, f"data.server_holdout must be >= 0, got {config.data.server_holdout}")
    _require(
        0 < config.data.train_fraction <= 1,
        f"data.train_fraction must be in (0, 1], got {config.data.train_fraction}",
    )
    _validate_name(config.experiment.name)
    _require(config.experiment.seed >= 0, f"experiment.seed must be >= 0, got {config.experiment.seed}")
    _require(config.data.holdout_seed >= 0, f"data.holdout_seed must be >= 0, got {config.data.holdout_seed}")
    _validate_teacher(config.teacher)
    _validate_faults(config.faults, p.num_clients)


def _require_optimiser_value(key: str, value: float, positive: bool) -> None:
    """Step sizes (> 0) and momentum/decay (>= 0); float32 weights cannot take more than its largest value."""
    _require(value > 0 if positive else value >= 0, f"{key} must be {'>' if positive else '>='} 0, got {value}")
    _require(value <= FLOAT32_MAX, f"{key} must be at most {FLOAT32_MAX:.3g} (the largest float32), got {value}")


def _validate_partition(p: PartitionConfig) -> None:
    """Values the partition scheme needs, named as the user types them (the dataset-size checks
    happen when the partition is computed)."""
    for key in ("num_clients", "classes_per_client", "shards_per_client", "min_partition_size", "max_retries"):
        value = getattr(p, key)
        _require(value >= 1, f"partition.{key} must be >= 1, got {value}")
    for key in ("alpha", "quantity_alpha"):
        value = getattr(p, key)
        _require(value > 0, f"partition.{key} must be > 0 (smaller is more skewed, e.g. 0.1), got {value}")
    _require(
        p.imbalance_factor >= 1,
        f"partition.imbalance_factor must be >= 1 (1 = no long tail), got {p.imbalance_factor}",
    )


def clients_per_round(fraction: float, num_clients: int) -> int:
    """How many clients a round samples: ``ceil(fraction · num_clients)``, at least one."""
    return max(1, math.ceil(fraction * num_clients))


def _validate_name(name: str) -> None:
    """``experiment.name`` starts the run directory's name, so it must be one short file name."""
    _require(bool(name.strip()), "experiment.name must not be empty")
    _require(
        "/" not in name and "\\" not in name and name not in (".", ".."),
        f"experiment.name becomes a folder name, so it cannot contain '/' or '\\' or be '.' or '..'; "
        f"got {name!r}",
    )
    _require(
        len(name.encode()) <= MAX_NAME_BYTES,
        f"experiment.name is {len(name.encode())} bytes long; use at most {MAX_NAME_BYTES}",
    )


def _validate_teacher(teacher: TeacherConfig) -> None:
    _require(
        teacher.kind in ("offline", "stable_diffusion"),
        f"teacher.kind must be 'offline' or 'stable_diffusion', got {teacher.kind!r}",
    )
    _require(
        teacher.resolution >= 8 and teacher.resolution % 8 == 0,
        f"teacher.resolution must be a multiple of 8 (>= 8), got {teacher.resolution}",
    )
    _require(teacher.noise_draws >= 1, f"teacher.noise_draws must be >= 1, got {teacher.noise_draws}")
    _require(teacher.batch_size >= 1, f"teacher.batch_size must be >= 1, got {teacher.batch_size}")
    _require(teacher.fit_samples >= 2, f"teacher.fit_samples must be >= 2, got {teacher.fit_samples}")
    _require(teacher.seed >= 0, f"teacher.seed must be >= 0, got {teacher.seed}")
    _require(teacher.sample_steps >= 1, f"teacher.sample_steps must be >= 1, got {teacher.sample_steps}")
    _require(
        teacher.guidance_scale >= 0, f"teacher.guidance_scale must be >= 0, got {teacher.guidance_scale}"
    )
    _require(
        teacher.sampler in ("ddim", "dpm", "euler"),
        f"teacher.sampler must be one of ddim, dpm, euler, got {teacher.sampler!r}",
    )


def _validate_faults(faults: FaultsConfig, num_clients: int) -> None:
    for key in ("raise_clients", "nan_clients", "hang_clients"):
        for client in getattr(faults, key):
            _require(
                0 <= client < num_clients,
                f"faults.{key}: client {client} is not a partition id in [0, {num_clients})",
            )
    _require(faults.hang_s > 0, f"faults.hang_s must be > 0, got {faults.hang_s}")
    bad_rounds = [r for r in faults.rounds if r < OFFLOAD_ROUND]
    _require(not bad_rounds, f"faults.rounds are round numbers >= 1 (0: the offload exchange), got {bad_rounds}")


# --------------------------------------------------------------------------- files and overrides


def named_configs() -> list[str]:
    """Names of the configs shipped with the package (``semanticfl run NAME``)."""
    folder = resources.files("semanticfl") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(source: str) -> dict[str, Any]:
    """Read a TOML config given a file path or the name of a shipped config."""
    path = Path(source)
    if not path.suffix and source in named_configs():
        text = (resources.files("semanticfl") / "configs" / f"{source}.toml").read_text()
        origin = f"shipped config '{source}'"
    elif path.is_file():
        text = read_config_text(path)
        origin = str(path)
    else:
        raise UserError(
            f"config '{source}' is neither a file nor a shipped config; "
            f"shipped configs: {', '.join(named_configs())}"
        )
    return parse_toml(text, origin)


def read_config_text(path: Path) -> str:
    """The text of a config file; one that cannot be read or is not UTF-8 is a UserError."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UserError(f"cannot read config {path}: {reason}; pass a TOML file") from None


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin} is not valid TOML: {exc}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.lr=0.1'`` → (``['train', 'lr']``, ``0.1``); bare words stay strings."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r} must look like section.key=value, e.g. train.rounds=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``section.key=value`` into a nested dict (returns a new dict)."""
    merged = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        if len(path) < 2:
            raise UserError(f"override {item!r} needs a section, e.g. train.rounds=5")
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(source: str | None = None, overrides: list[str] | None = None) -> Config:
    """The config of ``source`` (file or shipped name; default: the quickstart) plus overrides."""
    data = read_toml(source or "quickstart")
    return config_from_dict(apply_overrides(data, overrides or []))
