"""What FedDifRC and SemanticFL share: a frozen diffusion teacher's features as targets.

Both attach a *projection* from the client model's feature space into the teacher's fused
feature space (FedDifRC: "where dimensions differ"; SemanticFL: the shared 512-d semantic space)
and compare projected features with teacher features. The projection is a parameter of the
client model, so it is trained locally and averaged like the rest of the model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from semanticfl.algorithms.base import Algorithm, AlgorithmSetup
from semanticfl.errors import UserError
from semanticfl.teachers.base import DEFAULT_TEMPLATE, FeatureRequest

PROJECTION = "teacher_projection"


def up_block_layers(count: int) -> tuple[str, ...]:
    """The teacher's last ``count`` U-Net up-blocks, as layer names (``up-3`` … ``up-1``).

    Negative indices count from the U-Net's last up-block, so the same default reads SD's blocks
    1, 2, 3 (of 0..3) and the offline teacher's blocks 0, 1, 2 (of 0..2).
    """
    return tuple(f"up-{i}" for i in range(count, 0, -1))


def is_layer_name(name: str) -> bool:
    """``latent`` or ``up<i>`` with an integer ``i`` (negative: from the last up-block)."""
    return name == "latent" or bool(re.fullmatch(r"up-?\d+", name))


AUTO = "auto"
"""``layer_dims`` / ``text_dim`` read from the teacher."""


def resolve_auto_dims(params: Any, setup: AlgorithmSetup, caps: tuple[int, ...], algorithm: str) -> Any:
    """``params`` with every ``"auto"`` width read from the teacher (``setup.teacher_shape``):

    * ``layer_dims``: layer ``i`` keeps ``min(caps[i], its channels)`` dims (the last cap for layers
      past the caps), so a 4-channel SD latent keeps 4 and a 1280-channel up-block its cap;
    * ``text_dim``: the width of the teacher's text encoder.

    Explicit values are kept as they are (and checked against the teacher when it runs)."""
    autos = {name: AUTO for name in ("layer_dims", "text_dim") if getattr(params, name, None) == AUTO}
    if not autos:
        return params
    if setup.teacher_shape is None:
        raise UserError(
            f"algorithm.{algorithm}: {' and '.join(autos)} = 'auto' read the teacher's widths, and no "
            f"teacher is configured here; give explicit values"
        )
    shape = setup.teacher_shape()
    if "layer_dims" in autos:
        channels = shape.channels(params.layers, f"algorithm.{algorithm}.layers")
        autos["layer_dims"] = tuple(
            min(caps[min(i, len(caps) - 1)], width) for i, width in enumerate(channels)
        )
    if "text_dim" in autos:
        autos["text_dim"] = shape.text_dim
    return dataclasses.replace(params, **autos)


@dataclass
class TeacherFeatureParams:
    """The teacher-feature settings of every teacher-guided algorithm (checked by
    :func:`teacher_param_checks`), first in its ``Params``. Each algorithm's ``Params`` subclass gives
    ``timestep``, ``layers`` and ``reduction`` its own defaults; its ``DIM_CAPS`` say what
    ``layer_dims = "auto"`` keeps."""

    timestep: int
    """Noise level of the teacher's U-Net pass, in [0, 1000)."""
    layers: tuple[str, ...]
    """Fused teacher layers: ``latent`` or ``up<i>`` (negative i counts from the last up-block)."""
    reduction: str
    """How a layer's feature map becomes a vector: ``spatial_norm`` or ``gap``."""
    layer_dims: tuple[int, ...] | Literal["auto"] = "auto"
    """PCA dims per layer; ``auto``: the algorithm's ``DIM_CAPS``, each capped by the teacher's channels
    in that layer (:func:`resolve_auto_dims`)."""
    template: str = DEFAULT_TEMPLATE
    """Class prompt template; ``{}`` stands for the class name."""
    projection: str = "auto"
    """``auto`` (identity when dimensions agree, else linear) or ``linear``."""


class TeacherGuided(Algorithm):
    """FedAvg skeleton plus a projection head into a teacher space of ``teacher_dim`` dims.

    ``params.layer_dims`` (and ``text_dim``) must be resolved (:func:`resolve_auto_dims`) by now."""

    def __init__(self, params: Any, setup: AlgorithmSetup) -> None:
        super().__init__(params, setup)
        self.teacher_dim = sum(params.layer_dims)

    def extend_model(self, model: nn.Module) -> nn.Module:
        """Attach ``teacher_projection``: identity when the dimensions agree, else linear."""
        feature_dim = model.feature_dim
        needs_linear = self.params.projection == "linear" or feature_dim != self.teacher_dim
        projection = nn.Linear(feature_dim, self.teacher_dim) if needs_linear else nn.Identity()
        model.add_module(PROJECTION, projection)
        return super().extend_model(model)

    def feature_request(
        self, name: str, prompts: tuple[str, ...], conditioned: bool = False
    ) -> FeatureRequest:
        """A request for this algorithm's timestep, layers, PCA dims and reduction."""
        p = self.params
        return FeatureRequest(
            name,
            timestep=p.timestep,
            layers=p.layers,
            layer_dims=p.layer_dims,
            prompts=prompts,
            reduction=p.reduction,
            conditioned=conditioned,
        )

    @staticmethod
    def project(model: nn.Module, features: Tensor) -> Tensor:
        """Client features in the teacher's space."""
        return getattr(model, PROJECTION)(features)


Check = tuple[bool, str]


def teacher_param_checks(p: TeacherFeatureParams) -> list[Check]:
    """Checks of the settings every teacher-guided algorithm has (timestep, layers, dims, ...), before
    ``"auto"`` dims are resolved."""
    dims = () if p.layer_dims == AUTO else p.layer_dims
    return [
        (0 <= p.timestep < 1000, f"timestep must be in [0, 1000), got {p.timestep}"),
        (len(p.layers) > 0, "layers must not be empty"),
        (
            p.layer_dims == AUTO or len(p.layers) == len(p.layer_dims),
            "layers and layer_dims must be of equal length (or layer_dims = 'auto')",
        ),
        (all(d >= 1 for d in dims), f"layer_dims must be >= 1, got {list(dims)}"),
        (
            all(is_layer_name(name) for name in p.layers),
            f"layers must be 'latent' or 'up<i>' (negative i counts from the last up-block), got {list(p.layers)}",
        ),
        (
            p.reduction in ("spatial_norm", "gap"),
            f"reduction must be 'spatial_norm' or 'gap', got {p.reduction!r}",
        ),
        (p.projection in ("auto", "linear"), f"projection must be 'auto' or 'linear', got {p.projection!r}"),
        ("{}" in p.template, f"template must contain '{{}}' for the class name, got {p.template!r}"),
    ]


def require_all(checks: list[Check], algorithm: str) -> None:
    """The first failed check as a one-line UserError prefixed with ``algorithm.<name>``."""
    for ok, message in checks:
        if not ok:
            raise UserError(f"algorithm.{algorithm}: {message}")
