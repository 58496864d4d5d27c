r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?").

The gates read the input only, never the previous state, so the step is affine in
the state with a diagonal factor:

.. math::

    \text{minGRU:} \quad z = \sigma(W_z x + b_z), \quad \tilde h = W_h x + b_h, \quad
    h' = (1 - z) \odot h + z \odot \tilde h \\
    \text{minLSTM:} \quad f = \sigma(W_f x + b_f), \quad i = \sigma(W_i x + b_i), \quad
    f' = \frac{f}{f + i}, \quad i' = \frac{i}{f + i}, \quad
    h' = f' \odot h + i' \odot \tilde h

(minLSTM with ``normalise=False`` uses ``f, i`` themselves.) The step Jacobian is
``J_t = diag(a_t)`` with ``a = 1 - z`` (minGRU) or ``a = f'`` (minLSTM), a function of
``x_t`` alone and independent of the state. There is no recurrent matrix and one
route, ``carousel`` (h -> h' elementwise). The product over a window is the
elementwise product of the gates, ``prod_t a_t``: unit j grows at the mean of
``log a_{t,j}`` (the Lyapunov exponents are these means, sorted), never above 0
since ``0 < a < 1``; a gradient can only fade, at a rate set by the inputs.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from gradpaths import _cells, _checks
from gradpaths._cells import Edge
from gradpaths._protocols import Activation

Array = jax.Array


class MinGRUGates(NamedTuple):
    """One array per minGRU projection: update gate ``z`` and candidate ``h`` (h~)."""

    z: Any
    h: Any


class MinGRUParams(NamedTuple):
    """minGRU parameters: ``W`` (``MinGRUGates``, each (n, m)), ``b`` (each (n,))."""

    W: MinGRUGates
    b: MinGRUGates


class MinLSTMGates(NamedTuple):
    """One array per minLSTM projection: forget ``f``, input ``i``, candidate ``h`` (h~)."""

    f: Any
    i: Any
    h: Any


class MinLSTMParams(NamedTuple):
    """minLSTM parameters: ``W`` (``MinLSTMGates``, each (n, m)), ``b`` (each (n,))."""

    W: MinLSTMGates
    b: MinLSTMGates


class MinState(NamedTuple):
    """minGRU / minLSTM state: ``h`` (n,)."""

    h: Array


def _check(cell: Any, params: Any, params_type: type[NamedTuple],
           gates_type: type[NamedTuple]) -> None:
    if type(params).__name__ != params_type.__name__:      # MinGRU's and MinLSTM's look alike
        raise _checks.InputTypeError(f"params: expected {params_type.__name__} for {cell!r}, "
                        f"got {type(params).__name__}")
    _cells._check_tree(params, params_type, repr(cell))
    n, m = cell.hidden_size, cell.input_size
    for field, shape in (("W", (n, m)), ("b", (n,))):
        group = getattr(params, field)
        _cells._check_tree(group, gates_type, repr(cell))
        for g in gates_type._fields:
            _cells._check_leaf(getattr(group, g), shape, f"params.{field}.{g}")


def _init(cell: Any, key: Array, gates_type: type[NamedTuple], biases: dict[str, float],
          input_gain: float, dtype: Any) -> tuple[Any, Any]:
    dtype = _checks.resolve_dtype(dtype)
    n, m = cell.hidden_size, cell.input_size
    keys = jax.random.split(key, len(gates_type._fields))
    scale = input_gain / max(m, 1) ** 0.5
    W = gates_type._make(_cells._normal(k, (n, m), scale, dtype) for k in keys)
    b = gates_type._make(jnp.full((n,), biases.get(g, 0.0), dtype) for g in gates_type._fields)
    return W, b


class _Diagonal(abc.ABC):
    """What minGRU and minLSTM share: the step ``h' = a h + u`` with ``(a, u)`` from the
    input alone, its one diagonal edge, and the fused projection.

    Each cell supplies its sizes, :attr:`activation_names`, :meth:`check_params` and
    ``_gates`` (the gates and ``a``, ``b``, ``h_tilde`` from the projected input)."""

    input_size: int
    hidden_size: int

    @property
    @abc.abstractmethod
    def activation_names(self) -> tuple[str, ...]:
        """The sigmoid gates' names."""

    @abc.abstractmethod
    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""

    @abc.abstractmethod
    def _gates(self, u: Array) -> dict[str, Array]:
        """Gates, ``a`` (the Jacobian's diagonal), ``b`` and ``h_tilde`` from ``u`` (G, n)."""

    @property
    def routes(self) -> tuple[str, ...]:
        """The one route, ``carousel`` (h -> h' elementwise; no recurrent matrix)."""
        return ("carousel",)

    #: How the step Jacobian is structured (read by explanations): ``diag(a_t)``, no
    #: recurrent matrix; its product is the elementwise product of the gates.
    jacobian_structure: ClassVar[str] = "diagonal"

    def initial_state(self, dtype: Any = None) -> MinState:
        """Zeros: ``MinState(h=0)``."""
        return _cells._zeros_state(MinState, self.hidden_size, dtype)

    def project(self, params: Any, xs: Array) -> Array:
        """``u[t, g] = W_g x_t + b_g`` for every step and projection: (T, G, n)."""
        return _cells._projection(params.W, params.b, type(params.W)._fields, xs)

    def forward(self, params: Any, state: MinState, x: Array,
                read: Callable[[str, Array], Array] = _cells._keep) -> dict[str, Array]:
        """One step with intermediates: ``a`` (the diagonal of the step Jacobian),
        ``h_tilde``, ``h``, the gates and their pre-activations (``zbar``; ``fbar``,
        ``ibar``)."""
        self.check_params(params)
        _checks.check_shape(x, (self.input_size,), "x")
        return self.forward_projected(params, state, self.project(params, x[None])[0], read)

    def forward_projected(self, params: Any, state: MinState, u: Array,
                          read: Callable[[str, Array], Array] = _cells._keep
                          ) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (G, n) of :meth:`project`."""
        g = self._gates(u)
        g["h"] = g["a"] * read("carousel", state.h) + g["b"] * g["h_tilde"]
        return g

    def step_projected(self, params: Any, state: MinState, u: Array) -> MinState:
        """:meth:`step` from the projected input ``u`` (G, n) (the fused forward pass)."""
        return MinState(self.forward_projected(params, state, u)["h"])

    def step(self, params: Any, state: MinState, x: Array,
             read: Callable[[str, Array], Array] = _cells._keep) -> MinState:
        """``h, x -> h'``; pure. ``read(route, value)`` is applied to the previous state
        on its one entry edge (``stop_gradient`` there cuts it)."""
        return MinState(self.forward(params, state, x, read)["h"])

    def activations(self, params: Any, state: MinState, x: Array) -> dict[str, Activation]:
        """The sigmoid gates at their pre-activations (:attr:`activation_names`)."""
        return self._activations(self.forward(params, state, x))

    def activations_projected(self, params: Any, state: MinState, u: Array
                              ) -> tuple[MinState, dict[str, Activation]]:
        """The next state and :meth:`activations` from the projected input ``u``
        (G, n) of :meth:`project`, one forward pass for both."""
        g = self.forward_projected(params, state, u)
        return MinState(g["h"]), self._activations(g)

    def _activations(self, g: dict[str, Array]) -> dict[str, Activation]:
        return {name: _cells._sigmoid_activation(g[f"{name}bar"])
                for name in self.activation_names}

    def fixed_matrices(self, params: Any) -> dict[str, tuple[str, Array]]:
        """No edge has a matrix: ``{}``."""
        del params
        return {}

    def edges(self, params: Any, state: MinState, x: Array) -> dict[str, Edge]:
        """The one entry edge, ``diag(a)``; see :meth:`linearise`."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: Any, state: MinState, x: Array
                  ) -> tuple[MinState, dict[str, Edge]]:
        """The next state and the entry edge ``carousel``: ``J = diag(a)``, exactly."""
        return self._linearised(self.forward(params, state, x))

    def linearise_projected(self, params: Any, state: MinState, u: Array
                            ) -> tuple[MinState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (G, n) of :meth:`project`."""
        return self._linearised(self.forward_projected(params, state, u))

    @staticmethod
    def _linearised(g: dict[str, Array]) -> tuple[MinState, dict[str, Edge]]:
        return MinState(g["h"]), {"carousel": Edge("h", {"h": g["a"]}, None)}


@dataclasses.dataclass(frozen=True)
class MinGRU(_Diagonal):
    r"""minGRU (Feng et al. 2024): ``h' = (1 - z) h + z h~``, ``z`` and ``h~`` from ``x``.

    .. math::

        z = \sigma(W_z x + b_z), \quad \tilde h = W_h x + b_h, \quad
        h' = (1 - z) \odot h + z \odot \tilde h, \qquad J = \mathrm{diag}(1 - z)

    ``1 - z`` is computed as ``sigmoid(-zbar)`` (exact where ``z`` rounds to 1).

    Args:
      input_size: m.
      hidden_size: n.

    Routes: ``carousel`` only (the Jacobian is diagonal; no recurrent matrix exists).

    Example::

        cell = gp.MinGRU(3, 8)
        params = cell.init(jax.random.key(0))
        J = gp.step_jacobians(cell, params, jnp.ones((10, 3)))   # diagonal
    """

    input_size: int
    hidden_size: int

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``z``, the sigmoid update gate."""
        return ("z",)

    def __post_init__(self) -> None:
        _cells._check_sizes(self)

    def init(self, key: Array, *, update_bias: float = -1.0, input_gain: float = 1.0,
             dtype: Any = None) -> MinGRUParams:
        """Random parameters: ``W ~ N(0, input_gain^2 / m)``, ``b_z = update_bias``
        (default -1: ``1 - z = sigma(1) = 0.73`` at ``x = 0``), ``b_h = 0``."""
        return MinGRUParams(*_init(self, key, MinGRUGates, {"z": float(update_bias)},
                                   input_gain, dtype))

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _check(self, params, MinGRUParams, MinGRUGates)

    def _gates(self, u: Array) -> dict[str, Array]:
        zbar, h_tilde = u
        return dict(z=_cells.sigmoid(zbar), a=_cells.sigmoid(-zbar), b=_cells.sigmoid(zbar),
                    h_tilde=h_tilde, zbar=zbar)


@dataclasses.dataclass(frozen=True)
class MinLSTM(_Diagonal):
    r"""minLSTM (Feng et al. 2024): ``h' = f' h + i' h~``, gates from ``x`` only.

    .. math::

        f = \sigma(W_f x + b_f), \quad i = \sigma(W_i x + b_i), \quad
        f' = \frac{f}{f + i}, \quad i' = \frac{i}{f + i}, \quad
        h' = f' \odot h + i' \odot (W_h x + b_h), \qquad J = \mathrm{diag}(f')

    ``f' = sigmoid(log f - log i)`` is computed from the log-sigmoids (exact where
    both gates are tiny).

    Args:
      input_size: m.
      hidden_size: n.
      normalise: True (default) for ``f', i'``; False for ``f, i`` themselves.

    Routes: ``carousel`` only (the Jacobian is diagonal; no recurrent matrix exists).
    """

    input_size: int
    hidden_size: int
    normalise: bool = True

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``f`` and ``i``, the sigmoid gates (before normalisation)."""
        return ("f", "i")

    def __post_init__(self) -> None:
        _cells._check_sizes(self)
        if not isinstance(self.normalise, bool):
            raise _checks.InputTypeError(f"normalise: expected a bool, got {self.normalise!r}")

    def init(self, key: Array, *, forget_bias: float = 1.0, input_gain: float = 1.0,
             dtype: Any = None) -> MinLSTMParams:
        """Random parameters: ``W ~ N(0, input_gain^2 / m)``, ``b_f = forget_bias``
        (default 1.0), ``b_i = b_h = 0``."""
        return MinLSTMParams(*_init(self, key, MinLSTMGates, {"f": float(forget_bias)},
                                    input_gain, dtype))

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _check(self, params, MinLSTMParams, MinLSTMGates)

    def _gates(self, u: Array) -> dict[str, Array]:
        fbar, ibar, h_tilde = u
        f, i = _cells.sigmoid(fbar), _cells.sigmoid(ibar)
        if self.normalise:
            log_ratio = jax.nn.log_sigmoid(fbar) - jax.nn.log_sigmoid(ibar)   # log f - log i
            a, b = _cells.sigmoid(log_ratio), _cells.sigmoid(-log_ratio)
        else:
            a, b = f, i
        return dict(f=f, i=i, a=a, b=b, h_tilde=h_tilde, fbar=fbar, ibar=ibar)
