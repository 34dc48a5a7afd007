"""Experiment configuration: TOML files, ``key=value`` overrides, validation.

Every hyperparameter of a run lives in one :class:`Config`. A TOML file may set any subset
of it; the rest keeps the defaults (``sections.py``). ``section.key=value`` overrides from the command
line are applied on top (values parsed as TOML, bare words as strings). Unknown keys,
wrong types and impossible values raise :class:`~semanticfl.errors.UserError` with a
one-line message. Algorithm hyperparameters live in ``[algorithm.<name>]`` tables and are
checked against the algorithm's own ``Params`` dataclass by the registry.

The package is split by concern: ``sections.py`` (the dataclasses and their defaults),
``validation.py`` (range checks) and ``loading.py`` (files, overrides, type checks); the
names callers use are exported here (the limits the checks apply stay in their modules).
"""

from semanticfl.config.loading import (
    apply_overrides,
    build_dataclass,
    config_from_dict,
    load_config,
    named_configs,
    parse_override,
    parse_toml,
    read_config_text,
    read_toml,
)
from semanticfl.config.sections import (
    OFFLOAD_ROUND,
    AlgorithmConfig,
    Config,
    DataConfig,
    EngineConfig,
    EvalConfig,
    ExperimentConfig,
    FaultsConfig,
    ModelConfig,
    PartitionConfig,
    TeacherConfig,
    TrainConfig,
)
from semanticfl.config.validation import clients_per_round, validate

__all__ = [
    "OFFLOAD_ROUND",
    "AlgorithmConfig",
    "Config",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FaultsConfig",
    "ModelConfig",
    "PartitionConfig",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "build_dataclass",
    "clients_per_round",
    "config_from_dict",
    "load_config",
    "named_configs",
    "parse_override",
    "parse_toml",
    "read_config_text",
    "read_toml",
    "validate",
]
