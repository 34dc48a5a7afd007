"""FedCDA (Wang, Xu, Li, Xu, Li and Zhang, "FedCDA: Federated Learning with Cross-rounds
Divergence-aware Aggregation", ICLR 2024).

Local training is FedAvg's; only the server changes. Because every round starts from a
different global model and deep networks are non-convex, a client's local models from
different rounds sit near different local optima, each fitting its data. The server
therefore keeps, for every client ``k``, its ``K`` most recent local models
``M_k = {w_k^{(0)}, …, w_k^{(K−1)}}`` (``(0)`` = the newest, i.e. this round's) and, instead
of averaging this round's models, picks one model per participating client so that the
picked models agree with each other as much as possible, then averages those:

    s* = argmin_{s_k ∈ M_k}  D(s),   D(s) = Σ_k p_k ‖w_k^{(s_k)} − Σ_j p_j w_j^{(s_j)}‖²,
    w_{t+1} = Σ_k p_k w_k^{(s*_k)},   p_k = n_k / Σ_j n_j  (the round's clients).

``D`` is the divergence term of the paper's selection objective (method section: the
global model stays close to every selected local model, so it keeps their knowledge).
Independent reimplementations number that objective Eq. (8) and the search Algorithm 1;
the numbering was not checked against the paper's text.

Approximate selection (the paper's batch-wise search): the exact
search has ``K^m`` candidates for ``m`` clients, so the clients are split at random into
batches of ``batch_size``; batch by batch, every combination of the batch's stored models
is tried (``K^batch_size``) while the other clients keep their current choice (initially
their newest model), and the best is kept -- one pass of block coordinate descent on
``D``. With ``batch_size >= m`` the search is exhaustive and exact. ``sweeps > 1`` repeats
the pass (never increasing ``D``) until no batch changes. Ties keep the current (initially
the newest) model.

Warm-up: for the first ``warmup_rounds`` rounds the server aggregates exactly as FedAvg
(the stored models of early rounds are far from optimal); it still fills the memory.

Implementation notes:

* ``D`` is computed from the Gram matrix of the candidate models (inner products over
  every floating-point array -- parameters and BatchNorm running statistics, the whole
  state a port of the authors' code compares; integer counters are left out), centred
  on the current global model to avoid cancellation. The search itself then touches only that
  ``(K·m)²`` matrix.
* ``p_k`` weights both the divergence and the average (FedAvg's weighting, as the rest of
  this package uses; the port averages selected models uniformly). Defaults:
  ``memory_size = 3`` and ``batch_size = 5`` are those noted in a Flower port of the authors' code;
  ``warmup_rounds = 50`` is the warm-up independent reimplementations attribute to the
  paper. None of the three was checked against the paper's text.
* Only the round's participating clients are selected and averaged; the authors' code
  (as ported) also averages in the last selected model of clients absent this round.
  With full participation the two coincide.
* Independent reimplementations add each stored model's local training loss to the
  objective (``Σ_k p_k F_k(w_k) + (L/2)·D``, from the smoothness bound); this file
  minimises ``D`` alone, as the port of the authors' code does (it uses the sum of
  per-array L2 norms rather than squared distances).
* ``D`` alone favours models that moved little from a common starting point. With a
  short warm-up the search can keep picking the same early-round models, leaving the
  global model unchanged for up to ``K − 1`` rounds (seen with ``warmup_rounds = 1`` on
  Fashion-MNIST, 3 clients: round 3's global model equalled round 2's). A long warm-up
  (default 50 rounds) makes this less likely.
* Cost of the search: ~5 s per round for 10 ResNet-18 clients with K = 3 on 2 CPU cores
  (building the Gram matrix dominates).

What leaves a client: the model only.

Memory cost: the server stores up to ``K × N × (model size)`` (``N`` = clients that have
taken part), e.g. 3 × 10 × 45 MB ≈ 1.3 GB for ResNet-18 in float32. This is server state:
:meth:`FedCDA.server_state` returns it, so **every checkpoint carries it too**
(``engine.keep_checkpoints`` files of that size).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from semanticfl.algorithms.base import Algorithm, AlgorithmSetup, Arrays, ClientUpdate, weighted_average
from semanticfl.errors import UserError

MAX_COMBINATIONS = 2**20
"""Upper bound on ``memory_size ** batch_size``, the combinations tried per batch."""

_CHUNK = 1 << 18  # elements per array slice when building the Gram matrix
_COMBO_CHUNK = 8192  # combinations evaluated at once


@dataclass
class FedCDAParams:
    """FedCDA's hyperparameters (for where each default comes from, see the module docstring)."""

    memory_size: int = 3
    """K: local models kept per client (this round's included)."""
    warmup_rounds: int = 50
    """W: rounds 1..W aggregate as plain FedAvg."""
    batch_size: int = 5
    """Clients whose stored models are searched jointly (``memory_size ** batch_size`` combinations)."""
    sweeps: int = 1
    """Passes of the batch-wise search; the paper does one."""

    def __post_init__(self) -> None:
        if self.memory_size < 1:
            raise UserError(f"algorithm.fedcda.memory_size must be >= 1, got {self.memory_size}")
        if self.warmup_rounds < 0:
            raise UserError(f"algorithm.fedcda.warmup_rounds must be >= 0, got {self.warmup_rounds}")
        if self.batch_size < 1:
            raise UserError(f"algorithm.fedcda.batch_size must be >= 1, got {self.batch_size}")
        if self.sweeps < 1:
            raise UserError(f"algorithm.fedcda.sweeps must be >= 1, got {self.sweeps}")
        # for m >= 2, m ** b is past the bound once b reaches its bit length; a huge b would never finish
        exponent = min(self.batch_size, MAX_COMBINATIONS.bit_length())
        if self.memory_size > 1 and self.memory_size**exponent > MAX_COMBINATIONS:
            raise UserError(
                f"algorithm.fedcda.memory_size ** batch_size = {self.memory_size}**{self.batch_size} "
                f"exceeds {MAX_COMBINATIONS} combinations per batch; lower batch_size"
            )


class FedCDA(Algorithm):
    """FedAvg clients; the server averages, per client, the stored model that best agrees with the others."""

    name = "fedcda"
    Params = FedCDAParams
    uploads: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, params: FedCDAParams, setup: AlgorithmSetup) -> None:
        super().__init__(params, setup)
        self.memory: dict[int, list[tuple[int, Arrays]]] = {}
        """Client id → up to K ``(round trained, model)`` pairs, newest first (index = age)."""
        self.last_selection: dict[int, int] = {}
        """Client id → age of the model averaged in the last round (0 = that round's model)."""
        self.last_divergence = float("nan")
        """``D`` of the last aggregation's selection."""

    # ------------------------------------------------------------------ server half

    def aggregate(self, global_arrays: Arrays, updates: Sequence[ClientUpdate], round_number: int) -> Arrays:
        """Store this round's models; FedAvg during warm-up, else average the selection ``s*``."""
        ids = [u.client_id for u in updates]
        if any(cid < 0 for cid in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"FedCDA needs distinct ClientUpdate.client_id values, got {ids}")
        self.remember(updates, round_number)
        sizes = [u.num_examples for u in updates]
        if round_number <= self.params.warmup_rounds:
            self.last_selection = {cid: 0 for cid in ids}
            self.last_divergence = float("nan")
            return weighted_average([u.arrays for u in updates], sizes)
        candidates = [[model for _, model in self.memory[cid]] for cid in ids]
        rng = np.random.default_rng([self.setup.seed & 0xFFFFFFFF, round_number])
        ages, self.last_divergence = select_models(
            candidates,
            sizes,
            reference=global_arrays,
            batch_size=self.params.batch_size,
            sweeps=self.params.sweeps,
            rng=rng,
        )
        self.last_selection = dict(zip(ids, ages))
        return weighted_average([c[age] for c, age in zip(candidates, ages)], sizes)

    def remember(self, updates: Sequence[ClientUpdate], round_number: int) -> None:
        """Push each update's model to its client's memory, dropping the oldest beyond K."""
        for update in updates:
            model = {key: np.array(value, copy=True) for key, value in update.arrays.items()}
            stored = [(round_number, model), *self.memory.get(update.client_id, [])]
            self.memory[update.client_id] = stored[: self.params.memory_size]

    def server_state(self) -> Arrays:
        """The memory: ``memory/<client>/<age>/<array>`` and ``memory_round/<client>/<age>``."""
        state: Arrays = {}
        for cid in sorted(self.memory):
            for age, (trained, model) in enumerate(self.memory[cid]):
                state[f"memory_round/{cid}/{age}"] = np.array([trained], dtype=np.int64)
                for key, value in model.items():
                    state[f"memory/{cid}/{age}/{key}"] = value
        return state

    def load_server_state(self, state: Arrays) -> None:
        rounds: dict[tuple[int, int], int] = {}
        models: dict[tuple[int, int], Arrays] = {}
        for name, value in state.items():
            if name.startswith("memory_round/"):
                _, cid, age = name.split("/")
                rounds[int(cid), int(age)] = int(np.asarray(value).reshape(-1)[0])
            elif name.startswith("memory/"):
                _, cid, age, key = name.split("/", 3)
                models.setdefault((int(cid), int(age)), {})[key] = np.array(value, copy=True)
        if set(rounds) != set(models):
            raise ValueError("FedCDA server state: stored models and their rounds do not match")
        memory: dict[int, list[tuple[int, Arrays]]] = {}
        for cid, age in sorted(models):
            if age != len(memory.setdefault(cid, [])):
                raise ValueError(
                    f"FedCDA server state: client {cid} misses the model of age {len(memory[cid])}"
                )
            memory[cid].append((rounds[cid, age], models[cid, age]))
        self.memory = memory


# --------------------------------------------------------------------------- the selection


def divergence_gram(models: Sequence[Arrays], reference: Arrays | None = None) -> np.ndarray:
    """Inner products ``⟨w_a − r, w_b − r⟩`` over all floating-point arrays, in float64."""
    count = len(models)
    gram = np.zeros((count, count), dtype=np.float64)
    for key, first in models[0].items():
        if not np.issubdtype(np.asarray(first).dtype, np.floating):
            continue
        flats = [np.asarray(model[key]).reshape(-1) for model in models]
        ref = None
        if reference is not None and key in reference and np.asarray(reference[key]).size == flats[0].size:
            ref = np.asarray(reference[key]).reshape(-1)
        for start in range(0, flats[0].size, _CHUNK):
            block = np.stack([flat[start : start + _CHUNK] for flat in flats]).astype(np.float64)
            if ref is not None:
                block -= ref[start : start + _CHUNK].astype(np.float64)
            gram += block @ block.T
    return gram


def select_models(
    candidates: Sequence[Sequence[Arrays]],
    sizes: Sequence[float],
    *,
    batch_size: int,
    sweeps: int = 1,
    rng: np.random.Generator | None = None,
    reference: Arrays | None = None,
) -> tuple[list[int], float]:
    """Choose one model per client minimising ``D`` (batch-wise block coordinate descent).

    ``candidates[i]`` are client ``i``'s stored models, newest first. Returns the chosen
    index for each client and ``D`` of that choice. Batches follow a random permutation of
    the clients (``rng``; identity order if ``None``).
    """
    counts = [len(c) for c in candidates]
    if not counts or min(counts) < 1:
        raise ValueError("every client needs at least one stored model")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    gram = divergence_gram([model for models in candidates for model in models], reference)
    weights = np.asarray(sizes, dtype=np.float64)
    weights = weights / weights.sum()
    clients = len(counts)
    chosen = offsets.copy()  # everyone starts at its newest model
    order = rng.permutation(clients) if rng is not None else np.arange(clients)
    batches = [order[start : start + batch_size] for start in range(0, clients, batch_size)]
    for _ in range(sweeps):
        changed = False
        for batch in batches:
            best = _best_for_batch(gram, weights, chosen, batch, offsets, counts)
            if not np.array_equal(best, chosen[batch]):
                chosen[batch] = best
                changed = True
        if not changed:
            break
    return [int(c - o) for c, o in zip(chosen, offsets)], _objective(gram, weights, chosen)


def _objective(gram: np.ndarray, weights: np.ndarray, chosen: np.ndarray) -> float:
    """``D = Σ_k p_k ‖y_k‖² − ‖Σ_k p_k y_k‖² = Σ_k p_k ‖y_k − ȳ‖²`` from the Gram matrix."""
    sub = gram[np.ix_(chosen, chosen)]
    return float(weights @ np.diag(sub) - weights @ sub @ weights)


def _best_for_batch(
    gram: np.ndarray,
    weights: np.ndarray,
    chosen: np.ndarray,
    batch: np.ndarray,
    offsets: np.ndarray,
    counts: Sequence[int],
) -> np.ndarray:
    """The batch's combination minimising ``D`` with every other client fixed (ties: keep current).

    With ``F`` the fixed clients, the terms of ``D`` that depend on the batch ``B`` are
    ``Σ_{i∈B} p_i G[c_i,c_i] − 2 Σ_{i∈B} p_i Σ_{j∈F} p_j G[c_i,c_j]
    − Σ_{i,i'∈B} p_i p_i' G[c_i,c_i']``.
    """
    fixed = np.setdiff1d(np.arange(len(chosen)), batch)
    pull = gram[:, chosen[fixed]] @ weights[fixed]  # Σ_{j∈F} p_j G[c, c_j] for every candidate c
    p = weights[batch]
    options = [range(offsets[i], offsets[i] + counts[i]) for i in batch]
    current = chosen[batch]
    best, best_value = current, _batch_value(gram, pull, p, current[None, :])[0]
    combos = itertools.product(*options)
    while True:
        chunk = np.array(list(itertools.islice(combos, _COMBO_CHUNK)), dtype=np.int64)
        if chunk.size == 0:
            return best
        values = _batch_value(gram, pull, p, chunk)
        index = int(np.argmin(values))
        if values[index] < best_value:
            best, best_value = chunk[index], values[index]


def _batch_value(gram: np.ndarray, pull: np.ndarray, p: np.ndarray, combos: np.ndarray) -> np.ndarray:
    own = (gram[combos, combos] * p).sum(axis=1)
    towards_fixed = 2.0 * (pull[combos] * p).sum(axis=1)
    within = np.einsum("i,qij,j->q", p, gram[combos[:, :, None], combos[:, None, :]], p)
    return own - towards_fixed - within


__all__ = ["FedCDA", "FedCDAParams", "divergence_gram", "select_models"]
