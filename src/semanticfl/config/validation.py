"""Range checks of a :class:`~semanticfl.config.sections.Config` that do not need the dataset.

Each failure is a :class:`~semanticfl.errors.UserError` with a one-line message naming the setting as the
user types it (``section.key``); the dataset-size checks happen when the dataset is loaded.
"""

from __future__ import annotations

import math
import re

from semanticfl.config.sections import OFFLOAD_ROUND, Config, FaultsConfig, PartitionConfig, TeacherConfig
from semanticfl.errors import UserError

FLOAT32_MAX = 3.4028234663852886e38
"""Largest step size, momentum or weight decay: the optimiser applies them to float32 weights."""
MAX_PARALLEL = 1024
"""Most torch threads per client, and most clients trained at once, that a run may ask for."""
PRECISIONS = ("fp32", "bf16")
MAX_NAME_BYTES = 200
"""Longest ``experiment.name``: file names stop at 255 bytes and runs append ``-compare-YYYYmmdd-HHMMSS-N``."""


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
