"""Parameter-space pieces shared by FedProx, SCAFFOLD, FedNova and FedDyn.

Client side (torch): which tensors count as the model's *parameters* (as opposed to buffers
such as BatchNorm's running statistics), a frozen snapshot of them at the start of a round,
the squared distance and inner products the proximal / dynamic regularisers add to the loss,
and conversions between parameter-shaped tensor dicts and :data:`Arrays`.

Server side (numpy): which keys of a global state are parameters, and float64 arithmetic on
named arrays (means, linear combinations) that is cast back to each array's own dtype once,
at the end, so that float32 models do not lose precision to intermediate roundings and
integer buffers (``num_batches_tracked``) come back as integers.

Control variates and regularisers act on parameters only; buffers are averaged as models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from semanticfl.verified import Arrays

TensorDict = dict[str, torch.Tensor]

# ---------------------------------------------------------------------- client side (torch)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's trainable parameters by state-dict name (buffers excluded)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> TensorDict:
    """Frozen copies of the trainable parameters (e.g. the global model ``w_t`` of a round)."""
    return {name: p.detach().clone() for name, p in trainable_parameters(model).items()}


def squared_distance(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_l ‖w_l − r_l‖²`` over the trainable parameters; differentiable in ``w``."""
    params = trainable_parameters(model)
    terms = [(p - reference[name]).pow(2).sum() for name, p in params.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def inner_product(model: nn.Module, vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_l ⟨v_l, w_l⟩`` over the trainable parameters; differentiable in ``w``."""
    params = trainable_parameters(model)
    terms = [(p * vectors[name]).sum() for name, p in params.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def parameter_tensors(arrays: Mapping[str, np.ndarray], model: nn.Module) -> TensorDict:
    """Parameter-shaped tensors from ``arrays`` on the model's device and dtype.

    A name missing from ``arrays`` reads as zeros: every control variate, stored gradient
    and regulariser state of these algorithms starts at zero (SCAFFOLD Alg. 1 line 1,
    FedDyn Alg. 1 input). A present entry must have the parameter's shape.
    """
    tensors = {}
    for name, p in trainable_parameters(model).items():
        if name not in arrays:
            tensors[name] = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
            continue
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"array {name!r} has shape {tuple(value.shape)}, the parameter {tuple(p.shape)}")
        tensors[name] = torch.as_tensor(np.array(value), dtype=p.dtype, device=p.device)
    return tensors


def tensors_to_arrays(tensors: Mapping[str, torch.Tensor], dtype: np.dtype | None = None) -> Arrays:
    """CPU numpy copies of named tensors (optionally cast to ``dtype``)."""
    out = {}
    for name, t in tensors.items():
        value = t.detach().cpu().numpy()
        out[name] = value.astype(dtype) if dtype is not None else value.copy()
    return out


def momentum_normalizer(steps: int, momentum: float) -> float:
    """``‖a‖₁``: the total weight ``τ`` steps of heavy-ball SGD give to their gradients.

    With PyTorch's momentum (``buf ← ρ buf + g``, ``w ← w − η buf``, fresh buffer) the k-th of
    ``τ`` gradients moves the weights by ``η (1 − ρ^{τ−k+1}) / (1 − ρ)``, so the local update is
    ``η Σ_k a_k g_k`` with ``‖a‖₁ = [τ − ρ(1 − ρ^τ)/(1 − ρ)] / (1 − ρ)`` (FedNova, Wang et al.
    2020, Sec. 4); ``τ`` for ``ρ = 0`` and ``τ(τ+1)/2`` in the limit ``ρ → 1``.
    """
    tau, rho = int(steps), float(momentum)
    if tau <= 0:
        return 0.0
    if rho == 1.0:
        return tau * (tau + 1) / 2.0
    return (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)


# ---------------------------------------------------------------------- server side (numpy)


def zeros_for(keys: Iterable[str], like: Arrays) -> Arrays:
    """Zero arrays with the shapes and dtypes of ``like[key]``."""
    return {key: np.zeros_like(like[key]) for key in keys}


def mean64(states: Sequence[Arrays], weights: Sequence[float], keys: Iterable[str]) -> Arrays:
    """``Σ_k w_k x_k / Σ_k w_k`` for each key, in float64 (not cast back): every weighted mean of client
    states (:func:`~semanticfl.algorithms.base.weighted_average` is this, cast back)."""
    if not states:
        raise ValueError("cannot average zero client states")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("client weights must sum to a positive number")
    out = {}
    for key in keys:
        acc = np.zeros(np.shape(states[0][key]), dtype=np.float64)
        for state, weight in zip(states, weights):
            acc += (float(weight) / total) * np.asarray(state[key], dtype=np.float64)
        out[key] = acc
    return out


def as64(arrays: Arrays, keys: Iterable[str]) -> Arrays:
    """float64 copies of the named arrays."""
    return {key: np.asarray(arrays[key], dtype=np.float64) for key in keys}


def cast_like(values: Arrays, like: Arrays) -> Arrays:
    """Cast float64 results back to the dtypes of ``like`` (integers rounded)."""
    out = {}
    for key, value in values.items():
        dtype = np.asarray(like[key]).dtype
        if np.issubdtype(dtype, np.integer):
            value = np.rint(value)
        out[key] = np.asarray(value).astype(dtype)
    return out


def copy_arrays(arrays: Arrays) -> Arrays:
    """Independent copies (server state handed out or loaded must not alias)."""
    return {key: np.array(value, copy=True) for key, value in arrays.items()}
