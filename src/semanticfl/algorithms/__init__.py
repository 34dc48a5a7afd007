"""Federated algorithms: one file each, registered here by name.

Adding an algorithm = one file defining an :class:`~semanticfl.algorithms.base.Algorithm`
subclass and one line in :data:`ALGORITHMS`. Nothing in this package imports Flower.
"""

from __future__ import annotations

from typing import Any

from semanticfl.algorithms.base import Algorithm, AlgorithmSetup, params_from_dict
from semanticfl.algorithms.fedafd import FedAFD
from semanticfl.algorithms.fedavg import FedAvg
from semanticfl.algorithms.fedcda import FedCDA
from semanticfl.algorithms.feddifrc import FedDifRC
from semanticfl.algorithms.feddisco import FedDisco
from semanticfl.algorithms.feddyn import FedDyn
from semanticfl.algorithms.fednh import FedNH
from semanticfl.algorithms.fednova import FedNova
from semanticfl.algorithms.fedprox import FedProx
from semanticfl.algorithms.fedrcl import FedRCL
from semanticfl.algorithms.guidance import DataShare
from semanticfl.algorithms.moon import MOON
from semanticfl.algorithms.scaffold import Scaffold
from semanticfl.algorithms.semanticfl import SemanticFL
from semanticfl.errors import UserError

ALGORITHMS: dict[str, type[Algorithm]] = {
    FedAvg.name: FedAvg,
    FedProx.name: FedProx,
    Scaffold.name: Scaffold,
    MOON.name: MOON,
    FedNova.name: FedNova,
    FedDyn.name: FedDyn,
    FedNH.name: FedNH,
    FedRCL.name: FedRCL,
    FedDisco.name: FedDisco,
    FedCDA.name: FedCDA,
    DataShare.name: DataShare,
    FedDifRC.name: FedDifRC,
    SemanticFL.name: SemanticFL,
    FedAFD.name: FedAFD,
}


def algorithm_names() -> list[str]:
    return sorted(ALGORITHMS)


def get_algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of: {', '.join(algorithm_names())}")
    return ALGORITHMS[name]


def build_algorithm(name: str, params: dict[str, Any], setup: AlgorithmSetup) -> Algorithm:
    """Instantiate algorithm ``name`` with its ``[algorithm.<name>]`` hyperparameters."""
    cls = get_algorithm_class(name)
    return cls(params_from_dict(cls.Params, params, name), setup)


def check_algorithm_tables(tables: dict[str, dict[str, Any]]) -> None:
    """Every ``[algorithm.<name>]`` table must name an algorithm and hold valid hyperparameters for it,
    whichever algorithm runs: a typo in another algorithm's table is an error, not silently ignored."""
    for name, values in tables.items():
        if name not in ALGORITHMS:
            raise UserError(
                f"unknown algorithm table {'algorithm.' + name!r}; tables are named after an algorithm: "
                f"{', '.join(algorithm_names())}"
            )
        params_from_dict(ALGORITHMS[name].Params, values, name)
