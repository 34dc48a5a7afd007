"""Every seed of a run, derived in one place from the seed it belongs to, identifiers and a named stream.

Three derivations exist, each with the results recorded under it (unifying them would change those results,
e.g. the server split the shipped teachers were trained on):

* :func:`derive_seed` -- the engine's: the experiment seed with (round, client) and a :class:`Stream`;
* :func:`derive_teacher_seed` -- the frozen teacher's noise: ``teacher.seed`` with a :class:`TeacherStream`,
  the sample id and the draw; keys enter as 64-bit two's-complement words, so any integer id works;
* :func:`derive_seed32` -- FedAFD's 32-bit seeds (its models and GFF gates).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1


class Stream(IntEnum):
    """Streams of :func:`derive_seed` and :func:`derive_seed32` (the values are what results were recorded
    with: primes, far from any round or client number)."""

    CLIENT_TORCH = 1
    """A client's global torch RNG in a round (``derive_seed(seed, round, client, CLIENT_TORCH)``)."""
    HOLDOUT = 7919
    """The server split withheld from every client (``data.holdout_seed``)."""
    CLIENT_SAMPLING = 104729
    """The clients a round samples (``train.fraction_fit``)."""
    TRAIN_FRACTION = 15485863
    """The subset ``data.train_fraction`` keeps."""
    FEDAFD_CLIENT_INIT = 1000003
    """A FedAFD client's model initialisation."""
    FEDAFD_GATES = 1000033
    """A FedAFD client's fresh GFF gates of a round."""
    FEDAFD_SERVER = 2038074743
    """FedAFD's server RNG of a round."""


class TeacherStream(IntEnum):
    """Streams of :func:`derive_teacher_seed`."""

    LATENT = 0
    """The VAE's latent sample of an image."""
    NOISE = 1
    """The forward-diffusion noise of a draw."""
    CONDITION = 2
    """The projection that injects a client's encoding into the teacher's conditioning."""
    SAMPLE = 3
    """A generated image's initial noise."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from the experiment seed and any identifiers (round, client, :class:`Stream`)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def derive_teacher_seed(*keys: int) -> int:
    """A 64-bit seed mixed from integer keys by numpy's ``SeedSequence``: the same on every run, process
    and platform (unlike ``hash()``). Each key enters as two 32-bit words of its 64-bit two's complement,
    so distinct key tuples of one length never share their entropy."""
    words = []
    for key in keys:
        key = int(key) & _MASK64
        words += [key & _MASK32, key >> 32]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


def derive_seed32(seed: int, *keys: int) -> int:
    """A 32-bit seed from ``seed`` and keys (FedAFD's models, gates and server rounds)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
