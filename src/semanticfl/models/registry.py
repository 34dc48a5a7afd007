"""Build client models by name; move their state to and from numpy."""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from semanticfl.errors import UserError
from semanticfl.models.base import ClientModel
from semanticfl.models.cnn import MIN_IMAGE_SIZE, SimpleCNN
from semanticfl.models.mobilenet import MobileNetV2
from semanticfl.models.resnet import resnet10, resnet18

MIN_SIZE = 8
CHANNELS = (1, 3)

_BUILDERS: dict[str, Callable[[int, int, int], ClientModel]] = {
    "cnn": SimpleCNN,
    "resnet10": lambda num_classes, in_channels, image_size: resnet10(num_classes, in_channels),
    "resnet18": lambda num_classes, in_channels, image_size: resnet18(num_classes, in_channels),
    "mobilenet": lambda num_classes, in_channels, image_size: MobileNetV2(num_classes, in_channels),
}
_MIN_SIZES = {"cnn": MIN_IMAGE_SIZE}


def model_names() -> list[str]:
    """Names accepted by ``build_model``, sorted."""
    return sorted(_BUILDERS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_args(name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    """Raise UserError (one line) for an unknown name or an impossible size."""
    if name not in _BUILDERS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    if not _is_int(num_classes) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not _is_int(in_channels) or in_channels not in CHANNELS:
        raise UserError(f"in_channels must be 1 or 3, got {in_channels!r}")
    min_size = _MIN_SIZES.get(name, MIN_SIZE)
    if not _is_int(image_size) or image_size < min_size:
        raise UserError(
            f"image_size for model {name!r} must be an integer >= {min_size}, got {image_size!r}"
        )


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ClientModel:
    """Build model ``name`` for ``num_classes`` classes and square in_channels x image_size inputs.

    Construction draws only from torch's global RNG, so it is deterministic under
    ``torch.manual_seed``.
    """
    _check_args(name, num_classes, in_channels, image_size)
    return _BUILDERS[name](num_classes, in_channels, image_size)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Copy the full state_dict (parameters and buffers) to numpy, in state_dict order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _check_state(expected: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> None:
    """Raise UserError naming the first key or shape that does not match."""
    missing = [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"model state mismatch: missing keys {missing[:5]}, unexpected keys {unexpected[:5]};"
            " load a state saved from the same model name, classes, channels and image size"
        )
    for key, tensor in expected.items():
        shape = tuple(np.shape(arrays[key]))
        if shape != tuple(tensor.shape):
            raise UserError(
                f"model state mismatch at {key!r}: expected shape {tuple(tensor.shape)}, got {shape};"
                " load a state saved from the same model configuration"
            )


def load_numpy_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into ``model`` strictly: same keys and shapes, cast to the model's dtypes."""
    expected = model.state_dict()
    _check_state(expected, arrays)
    tensors = {k: torch.as_tensor(np.array(arrays[k]), dtype=v.dtype) for k, v in expected.items()}
    model.load_state_dict(tensors, strict=True)
