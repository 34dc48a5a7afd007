"""Reduce a teacher's multi-layer features to one d-dim vector per sample (FedDifRC, SemanticFL).

Each layer's N×C×h×w output (U-Net up-blocks ``"up1"``…, or the VAE ``"latent"``) becomes N×k by PCA:

* ``"gap"``: global average pool over h×w, then PCA of the pooled C-dim vectors;
* ``"spatial_norm"`` (FedDifRC's code): PCA of every pixel's C-dim vector, giving N×k×h×w, then the L2 norm
  of each component's h×w map.

The layers' vectors are each L2-normalised, concatenated (multi-layer fusion) and scaled by
1/sqrt(layers), so the ``"fused"`` vector has unit norm and every layer weighs the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from semanticfl.errors import UserError
from semanticfl.verified import read_verified, write_verified

MODES = ("gap", "spatial_norm")
FUSED = "fused"
DEFAULT_LAYER_DIMS = {"up1": 256, "up2": 128, "up3": 128}
DEFAULT_MAX_FIT_ROWS = 200_000
REDUCER_FORMAT = "semanticfl-reducer/1"
_LAYER_NAME = re.compile(r"[A-Za-z0-9_]+")
_COV_CHUNK = 16_384


class PCA:
    """Principal components of row vectors: mean-centred, exact, deterministic.

    The C×C covariance is accumulated in float64 chunks (no n×C float64 copy of a big pixel set) and
    eigendecomposed exactly; that is the SVD of the centred data. Each component's largest-magnitude
    entry is made positive, so the result does not depend on the solver's sign choice.
    """

    def __init__(self, k: int, max_fit_rows: int = DEFAULT_MAX_FIT_ROWS, seed: int = 0) -> None:
        if k < 1 or max_fit_rows < 1:
            raise ValueError(f"PCA needs k >= 1 and max_fit_rows >= 1, got {k} and {max_fit_rows}")
        self.k, self.max_fit_rows, self.seed = k, max_fit_rows, seed
        self.mean: Tensor | None = None
        self.components: Tensor | None = None
        """k×C, orthonormal rows sorted by explained variance."""
        self.explained_variance: Tensor | None = None
        self.total_variance: Tensor | None = None

    def fit(self, x: Tensor) -> PCA:
        """Fit on n×C rows; more than ``max_fit_rows`` rows are subsampled with a seeded generator."""
        if x.ndim != 2:
            raise ValueError(f"PCA fits n×C rows, got shape {tuple(x.shape)}")
        n, c = x.shape
        if self.k > min(n, c):
            raise UserError(
                f"PCA to {self.k} dims needs at least {self.k} rows and channels, got {n} rows of {c} channels; "
                "lower that layer's dim or fit on more samples"
            )
        if n > self.max_fit_rows:
            generator = torch.Generator().manual_seed(self.seed)
            x = x[torch.randperm(n, generator=generator)[: self.max_fit_rows].sort().values.to(x.device)]
        mean, cov = _mean_and_covariance(x.detach())
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.cpu())
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
        self.mean = mean.cpu().float()
        self.components = _positive_peaks(eigenvectors[:, : self.k].T).float()
        self.explained_variance = eigenvalues[: self.k].float()
        self.total_variance = eigenvalues.sum().reshape(1).float()
        return self

    def transform(self, x: Tensor) -> Tensor:
        """n×C → n×k scores (float32, on ``x``'s device)."""
        mean, components = self._fitted(x.device)
        return (x.float() - mean) @ components.T

    def inverse_transform(self, z: Tensor) -> Tensor:
        """n×k scores → n×C rows in the original space."""
        mean, components = self._fitted(z.device)
        return z.float() @ components + mean

    @property
    def explained_variance_ratio(self) -> Tensor:
        """Each component's share of the total variance (zeros for constant data)."""
        self._fitted(torch.device("cpu"))
        total = float(self.total_variance)
        return self.explained_variance / total if total > 0 else torch.zeros_like(self.explained_variance)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        self._fitted(torch.device("cpu"))
        state = {
            "mean": self.mean,
            "components": self.components,
            "explained_variance": self.explained_variance,
            "total_variance": self.total_variance,
        }
        return {prefix + key: value.numpy() for key, value in state.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> PCA:
        components = torch.from_numpy(arrays[prefix + "components"])
        pca = cls(components.shape[0])
        pca.mean = torch.from_numpy(arrays[prefix + "mean"])
        pca.components = components
        pca.explained_variance = torch.from_numpy(arrays[prefix + "explained_variance"])
        pca.total_variance = torch.from_numpy(arrays[prefix + "total_variance"])
        return pca

    def _fitted(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.components is None:
            raise RuntimeError("PCA is not fitted yet")
        return self.mean.to(device), self.components.to(device)


def _mean_and_covariance(x: Tensor) -> tuple[Tensor, Tensor]:
    """float64 mean and (unbiased) covariance of n×C rows, centred chunk by chunk."""
    n, c = x.shape
    mean = x.sum(0, dtype=torch.float64) / n
    cov = torch.zeros(c, c, dtype=torch.float64, device=x.device)
    for start in range(0, n, _COV_CHUNK):
        centred = x[start : start + _COV_CHUNK].double() - mean
        cov += centred.T @ centred
    return mean, cov / max(n - 1, 1)


def _positive_peaks(components: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry (the first, on ties) is positive."""
    peaks = components.gather(1, components.abs().argmax(1, keepdim=True))
    return components * torch.where(peaks < 0, -1.0, 1.0).to(components.dtype)


class _Reservoir:
    """A uniform, seeded sample of at most ``capacity`` rows of a stream of batches (Algorithm R)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.seen = capacity, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.parts: list[Tensor] = []
        self.buffer: Tensor | None = None

    def add(self, rows: Tensor) -> None:
        free = self.capacity - self.seen if self.buffer is None else 0
        if free > 0:
            self.parts.append(rows[:free].clone())  # never a view of the caller's tensor
            self.seen += len(self.parts[-1])
            rows = rows[free:]
            if self.seen == self.capacity:
                self.buffer, self.parts = torch.cat(self.parts), []
        if len(rows):
            self._replace(rows)

    def _replace(self, rows: Tensor) -> None:
        """Row i of the stream (0-based) replaces a random slot with probability capacity/(i+1)."""
        index = self.seen + torch.arange(len(rows), dtype=torch.float64)
        slots = (torch.rand(len(rows), generator=self.generator, dtype=torch.float64) * (index + 1)).long()
        self.seen += len(rows)
        sources = torch.nonzero(slots < self.capacity).squeeze(1).numpy()
        # When two rows draw the same slot the later one wins, as in the sequential algorithm.
        reversed_slots = slots.numpy()[sources][::-1]
        kept_slots, first = np.unique(reversed_slots, return_index=True)
        self.buffer[torch.from_numpy(kept_slots)] = rows[torch.from_numpy(sources[::-1][first].copy())]

    def rows(self) -> Tensor:
        if self.buffer is not None:
            return self.buffer
        if not self.parts:
            raise ValueError("no rows to fit on")
        return torch.cat(self.parts)


class FeatureReducer:
    """Per-layer PCA plus multi-layer fusion; ``transform`` maps teacher features to ``"fused"`` vectors."""

    def __init__(
        self,
        layer_dims: Mapping[str, int] | None = None,
        mode: str = "spatial_norm",
        max_fit_rows: int = DEFAULT_MAX_FIT_ROWS,
        seed: int = 0,
    ) -> None:
        self.layer_dims = dict(DEFAULT_LAYER_DIMS if layer_dims is None else layer_dims)
        self.mode, self.max_fit_rows, self.seed = mode, max_fit_rows, seed
        _check_config(self.layer_dims, mode)
        self.pcas: dict[str, PCA] = {}
        self.fitted_on = ""
        """What the PCAs were fitted on, as the caller described it (kept in the saved file)."""

    @property
    def dim(self) -> int:
        """Length of the fused vector."""
        return sum(self.layer_dims.values())

    def fit(self, features: Mapping[str, Tensor], fitted_on: str = "") -> FeatureReducer:
        """Fit every layer's PCA on one batch of features (name → N×C×h×w)."""
        return self.fit_batches([features], fitted_on)

    def fit_batches(self, batches: Iterable[Mapping[str, Tensor]], fitted_on: str = "") -> FeatureReducer:
        """Fit on a stream of batches, keeping a seeded uniform sample of at most ``max_fit_rows`` rows a layer."""
        reservoirs = {name: _Reservoir(self.max_fit_rows, self.seed) for name in self.layer_dims}
        for batch in batches:
            for name, reservoir in reservoirs.items():
                reservoir.add(self._rows(_layer(batch, name)).detach().to("cpu", torch.float32))
        self.pcas = {
            name: PCA(k, self.max_fit_rows, self.seed).fit(reservoirs[name].rows())
            for name, k in self.layer_dims.items()
        }
        self.fitted_on = fitted_on
        return self

    def transform(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each layer's N×k reduced vectors, plus ``"fused"``: N×dim with unit-norm rows."""
        self._require_fitted()
        out = {name: self._reduce(name, _layer(features, name)) for name in self.layer_dims}
        parts = [F.normalize(out[name], dim=1) for name in self.layer_dims]
        out[FUSED] = torch.cat(parts, dim=1) / math.sqrt(len(parts))
        return out

    def fingerprint(self) -> str:
        """SHA-256 hex over the mode, the layer dims and every fitted array: equal ⇔ same transform."""
        sha = hashlib.sha256(json.dumps([REDUCER_FORMAT, self.mode, list(self.layer_dims.items())]).encode())
        for key, value in self._arrays().items():
            sha.update(key.encode() + str(value.dtype).encode() + str(value.shape).encode())
            sha.update(np.ascontiguousarray(value).tobytes())
        return sha.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Atomically write the fitted reducer as a checksummed safetensors file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "reducer": REDUCER_FORMAT,
            "mode": self.mode,
            "layer_dims": json.dumps(list(self.layer_dims.items())),
            "fitted_on": self.fitted_on,
            "fingerprint": self.fingerprint(),
        }
        write_verified(path, self._arrays(), metadata)
        return path

    @classmethod
    def load(
        cls, path: str | Path, layer_dims: Mapping[str, int] | None = None, mode: str | None = None
    ) -> FeatureReducer:
        """Read a saved reducer; ``UserError`` if damaged, or if it differs from a given ``layer_dims``/``mode``."""
        path = Path(path)
        reducer = _read_reducer(cls, path)
        wanted = (dict(layer_dims) if layer_dims is not None else reducer.layer_dims, mode or reducer.mode)
        if wanted != (reducer.layer_dims, reducer.mode):
            raise UserError(
                f"feature reducer {path} reduces {reducer.layer_dims} by {reducer.mode}, not {wanted[0]} by "
                f"{wanted[1]}; delete it to refit"
            )
        return reducer

    def _rows(self, x: Tensor) -> Tensor:
        """The rows PCA sees: pooled vectors (gap) or every pixel's vector (spatial_norm)."""
        if self.mode == "gap":
            return x.mean(dim=(2, 3))
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def _reduce(self, name: str, x: Tensor) -> Tensor:
        pca = self.pcas[name]
        if x.shape[1] != pca.components.shape[1]:
            raise UserError(
                f"layer {name!r} has {x.shape[1]} channels but the reducer was fitted on "
                f"{pca.components.shape[1]}; refit the reducer for this teacher"
            )
        scores = pca.transform(self._rows(x))
        if self.mode == "gap":
            return scores
        return scores.reshape(x.shape[0], -1, pca.k).norm(dim=1)

    def _arrays(self) -> dict[str, np.ndarray]:
        self._require_fitted()
        return {k: v for name, pca in self.pcas.items() for k, v in pca.arrays(f"{name}/").items()}

    def _require_fitted(self) -> None:
        if set(self.pcas) != set(self.layer_dims):
            raise RuntimeError("FeatureReducer is not fitted yet")


def _check_config(layer_dims: dict[str, int], mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown reduction mode {mode!r}; choose one of {', '.join(MODES)}")
    if not layer_dims:
        raise UserError("the feature reducer needs at least one layer")
    for name, k in layer_dims.items():
        if name == FUSED or not _LAYER_NAME.fullmatch(name):
            raise UserError(f"invalid layer name {name!r}; use letters, digits and '_' (not {FUSED!r})")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"layer {name!r} needs a positive integer dim, got {k!r}")


def _layer(features: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in features:
        raise UserError(
            f"the reducer needs teacher layer {name!r} but got {', '.join(sorted(features)) or 'none'}; "
            "extract that layer or change the reducer's layers"
        )
    x = features[name]
    if x.ndim != 4:
        raise ValueError(f"layer {name!r} must be N×C×h×w, got shape {tuple(x.shape)}")
    return x


def _read_reducer(cls: type[FeatureReducer], path: Path) -> FeatureReducer:
    """The reducer stored at ``path``, with its checksum and fingerprint verified."""
    try:
        arrays, metadata = read_verified(path)
        if metadata.get("reducer") != REDUCER_FORMAT:
            raise ValueError("not a feature reducer file")
        reducer = cls(dict(json.loads(metadata["layer_dims"])), metadata["mode"])
        reducer.pcas = {name: PCA.from_arrays(arrays, f"{name}/") for name in reducer.layer_dims}
        reducer.fitted_on = metadata.get("fitted_on", "")
        if reducer.fingerprint() != metadata.get("fingerprint"):
            raise ValueError("its fingerprint does not match its contents")
    except (ValueError, KeyError, TypeError, UserError) as exc:
        reason = " ".join(str(exc).split())
        raise UserError(
            f"feature reducer {path} is damaged or not a reducer ({reason}); delete it to refit"
        ) from None
    return reducer
