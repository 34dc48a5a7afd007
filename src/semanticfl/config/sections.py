"""The sections of an experiment's configuration: one dataclass per TOML table, and :class:`Config`.

Every field's default is the value a run gets when no TOML file or override sets it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import tomli_w


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
    another order, so results move only by float rounding. ``false`` gives NCHW memory; it does not give the
    numbers of rows recorded before this setting existed (the quickstart's FedAvg: 74.77 % with ``false``;
    75.04 % with ``true``, as recorded before)."""
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


OFFLOAD_ROUND = 0
"""``faults.rounds`` entry of the one-time offload exchange before round 1."""


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
