"""Client models: a simple CNN, CIFAR-style ResNets and MobileNetV2, each returning (features, logits)."""

from semanticfl.models.base import ClientModel
from semanticfl.models.registry import (
    build_model,
    count_parameters,
    load_numpy_state,
    model_names,
    state_to_numpy,
)

__all__ = [
    "ClientModel",
    "build_model",
    "count_parameters",
    "load_numpy_state",
    "model_names",
    "state_to_numpy",
]
