"""Importers of trained weights: PyTorch, Keras, Flax, Equinox and Haiku.

Each importer returns ``(cell, params)``, a gradpaths ``LSTM``/``GRU``/``RNN`` and
its parameters, such that ``gp.unroll`` reproduces the framework's forward pass (the
outputs ``h_t`` and the final ``c``) to round-off. Sources are plain mappings of
arrays (a ``state_dict()``, ``get_weights()``, a Flax variables dict, a saved
``.npz``) or, when the framework is installed, its own objects; :func:`load` reads
a weights file (``.npz``, or a torch ``.pt``) and runs the importer. No framework is
imported by gradpaths, here or anywhere. See ``docs/interop.md``.
"""

from gradpaths.interop._common import MissingKeyError as MissingKeyError
from gradpaths.interop._equinox import from_equinox as from_equinox
from gradpaths.interop._flax import from_flax as from_flax
from gradpaths.interop._haiku import from_haiku as from_haiku
from gradpaths.interop._keras import from_keras as from_keras
from gradpaths.interop._load import load as load
from gradpaths.interop._state import (
    FRAMEWORKS as FRAMEWORKS,
    state_from as state_from,
    state_to as state_to,
)
from gradpaths.interop._torch import from_torch as from_torch
