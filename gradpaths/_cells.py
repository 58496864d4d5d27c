r"""Functional recurrent cells: LSTM, GRU and vanilla RNN.

Each cell is a frozen (hashable, static) configuration with pure methods over
NamedTuple pytrees of parameters and states. Notation follows Greff et al.
(2017), Appendix A, with the output written ``h``; see ``docs/maths.md``.

Every cell also exposes its *entry edges* (:meth:`edges`): the ways the previous
state enters one step, each with the factor on the edge and the coefficient
vectors that scale it on the way to each output field. The per-step Jacobian is
their sum, and one edge alone is one route's Jacobian (``J = sum_r J^r``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._protocols import Activation

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _mv(A: Array, v: Array) -> Array:
    # HIGHEST keeps float32 matmuls exact on accelerators that default to TF32.
    return jnp.dot(A, v, precision=_HIGHEST)


# ----------------------------------------------------------------- activations
#
# The derivatives are computed from the pre-activation ``a`` in forms that keep
# their magnitude: ``1 - tanh(a)^2`` and ``s (1 - s)`` from the rounded activation
# reach 0 once the activation rounds to +/-1 (|a| > 9 in float32, 19 in float64),
# though the true derivative is ``~4 e^{-2|a|}`` (``e^{-|a|}``), representable
# far beyond. With ``e = exp(-|a|)`` (never overflows):
#
#     sigmoid'(a) = e / (1 + e)^2,        tanh'(a) = 4 e^2 / (1 + e^2)^2.
#
# ``sigmoid`` and ``tanh`` below carry these derivatives as custom JVPs, so the
# closed form and autodiff (jacfwd, jacrev, jvp, vjp) share them.


def dsigmoid(a: Array) -> Array:
    """``sigmoid'(a) = e^{-|a|} / (1 + e^{-|a|})^2``, accurate where ``sigmoid(a)``
    rounds to 0 or 1."""
    e = jnp.exp(-jnp.abs(a))
    return e / (1 + e) ** 2


def dtanh(a: Array) -> Array:
    """``tanh'(a) = 4 e^{-2|a|} / (1 + e^{-2|a|})^2``, accurate where ``tanh(a)``
    rounds to +/-1."""
    e = jnp.exp(-2 * jnp.abs(a))
    return 4 * e / (1 + e) ** 2


@jax.custom_jvp
def sigmoid(a: Array) -> Array:
    """``1 / (1 + e^{-a})`` whose derivative is :func:`dsigmoid` under autodiff."""
    return jax.nn.sigmoid(a)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return sigmoid(a), dsigmoid(a) * da


@jax.custom_jvp
def tanh(a: Array) -> Array:
    """``tanh(a)`` whose derivative is :func:`dtanh` under autodiff."""
    return jnp.tanh(a)


@tanh.defjvp
def _tanh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return tanh(a), dtanh(a) * da


def _sigmoid_activation(a: Array) -> Activation:
    """A sigmoid's :class:`Activation`: slope ``sigmoid'(a) / (1/4)``."""
    return Activation(a, 4 * dsigmoid(a))


def _tanh_activation(a: Array) -> Activation:
    """A tanh's :class:`Activation`: slope ``tanh'(a)`` (its maximum is 1)."""
    return Activation(a, dtanh(a))


def _keep(route: str, value: Array) -> Array:
    """The default edge reader: every entry edge reads the previous state."""
    del route
    return value


def _recurrent(R: Any, gates: tuple[str, ...], h: Array, read: Callable[[str, Array], Array]
               ) -> dict[str, Array]:
    """``R_g h`` for each gate g. With the default reader the matrices are stacked into
    one ``(G n, n)`` product (fused: the recurrent matrices are read once per step,
    and XLA hoists the stacking out of a scan); a reader that cuts routes needs each
    gate to read its own ``read(g, h)``. The product is cut into gates by a reshape to
    (G, n): ``jnp.split`` there made batched tangents (``jacfwd`` of a step under
    ``vmap``) twice as slow."""
    if read is _keep and len(gates) > 1:
        stacked = jnp.concatenate([getattr(R, g) for g in gates])
        parts = _mv(stacked, h).reshape((len(gates), -1) + h.shape[1:])
        return dict(zip(gates, parts, strict=True))
    return {g: _mv(getattr(R, g), read(g, h)) for g in gates}


def _projection(W: Any, b: Any, gates: tuple[str, ...], xs: Array) -> Array:
    """``W_g x_t + b_g`` for every step and gate at once: (T, G, n), one
    ``(T, m) x (m, G n)`` product."""
    Ws = jnp.stack([getattr(W, g) for g in gates])      # (G, n, m)
    bs = jnp.stack([getattr(b, g) for g in gates])      # (G, n)
    return jnp.einsum("tm,gnm->tgn", xs, Ws, precision=_HIGHEST) + bs[None]


def _normal(key: Array, shape: tuple[int, ...], scale: float, dtype: Any) -> Array:
    return scale * jax.random.normal(key, shape, dtype)


# --------------------------------------------------------------------------- params


class Gates(NamedTuple):
    """One array per LSTM gate: block input ``z``, input ``i``, forget ``f``, output ``o``.

    ``f`` is None for an LSTM without forget gate.
    """

    z: Any
    i: Any
    f: Any
    o: Any


class Peepholes(NamedTuple):
    """Peephole weights, each of shape (n,). ``p_o`` reads the new cell state."""

    i: Any
    f: Any
    o: Any


class LSTMParams(NamedTuple):
    """LSTM parameters.

    Attributes:
      W: ``Gates`` of input weights, each (n, m).
      R: ``Gates`` of recurrent weights, each (n, n).
      b: ``Gates`` of biases, each (n,).
      p: ``Peepholes`` (each (n,)) or None.
    """

    W: Gates
    R: Gates
    b: Gates
    p: Peepholes | None = None


class LSTMState(NamedTuple):
    """LSTM state: cell state ``c`` (n,) and output ``h`` (n,); ``s = [c; h]``."""

    c: Array
    h: Array


class GRUGates(NamedTuple):
    """One array per GRU gate: reset ``r``, update ``z`` (``u`` in docs/maths.md), candidate
    ``n``."""

    r: Any
    z: Any
    n: Any


class GRUParams(NamedTuple):
    """GRU parameters (PyTorch semantics).

    Attributes:
      W: ``GRUGates`` of input weights, each (n, m).
      R: ``GRUGates`` of recurrent weights, each (n, n).
      b: ``GRUGates`` of biases outside the reset product, each (n,): for r and z
        the sum of PyTorch's ``b_i*`` and ``b_h*``, for n PyTorch's ``b_in``.
      b_hn: (n,), the recurrent bias of the candidate, inside the reset product.
    """

    W: GRUGates
    R: GRUGates
    b: GRUGates
    b_hn: Any


class GRUState(NamedTuple):
    """GRU state: ``h`` (n,)."""

    h: Array


class RNNParams(NamedTuple):
    """Vanilla RNN parameters: ``W`` (n, m), ``R`` (n, n), ``b`` (n,)."""

    W: Any
    R: Any
    b: Any


class RNNState(NamedTuple):
    """Vanilla RNN state: ``h`` (n,)."""

    h: Array


class Edge(NamedTuple):
    """One entry edge of a step: how the previous state field ``source`` enters.

    Its Jacobian block from ``source`` to output field ``k`` is
    ``diag(rows[k]) @ matrix`` (``diag(rows[k])`` when ``matrix`` is None); a
    ``rows[k]`` of None is a zero block.
    """

    source: str
    rows: dict[str, Array | None]
    matrix: Array | None


# --------------------------------------------------------------------------- shared


def _check_sizes(cell: Any) -> None:
    _checks.check_positive_int(cell.input_size, "input_size", allow_zero=True)
    _checks.check_positive_int(cell.hidden_size, "hidden_size")


def _check_tree(params: Any, expected_type: type[NamedTuple], cell_name: str) -> None:
    if not isinstance(params, tuple) or not hasattr(params, "_fields"):
        raise InputTypeError(
            f"params: expected {expected_type.__name__} for {cell_name}, "
            f"got {type(params).__name__}"
        )
    if tuple(params._fields) != tuple(expected_type._fields):
        raise InputTypeError(
            f"params: expected {expected_type.__name__} with fields {expected_type._fields}, "
            f"got {type(params).__name__} with fields {params._fields}"
        )


def _check_leaf(value: Any, shape: tuple[int, ...], name: str) -> None:
    if value is None:
        raise InputError(f"{name}: expected an array of shape {shape}, got None")
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise InputTypeError(
            f"{name}: expected an array of shape {shape}, got {type(value).__name__}")
    _checks.check_shape(value, shape, name)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise InputTypeError(f"{name}: expected a floating dtype, got {value.dtype}")


def _zeros_state(state_type: type[NamedTuple], n: int, dtype: Any) -> Any:
    dtype = _checks.resolve_dtype(dtype)
    return state_type._make(jnp.zeros((n,), dtype) for _ in state_type._fields)


# --------------------------------------------------------------------------- LSTM


@dataclasses.dataclass(frozen=True)
class LSTM:
    r"""LSTM cell (Greff et al. 2017 notation), optional peepholes and forget gate.

    .. math::

        \bar z &= W_z x + R_z h + b_z, & z &= \tanh \bar z \\
        \bar i &= W_i x + R_i h + p_i \odot c + b_i, & i &= \sigma(\bar i) \\
        \bar f &= W_f x + R_f h + p_f \odot c + b_f, & f &= \sigma(\bar f) \\
        c' &= z \odot i + c \odot f \\
        \bar o &= W_o x + R_o h + p_o \odot c' + b_o, & o &= \sigma(\bar o) \\
        h' &= \tanh(c') \odot o

    Args:
      input_size: m, the width of ``x`` (0 for an autonomous cell).
      hidden_size: n; the state ``s = [c; h]`` has ``d = 2n``.
      peepholes: use ``p_i, p_f, p_o`` (default False, as in PyTorch).
      forget_gate: False gives the 1997 LSTM, ``f = 1`` (no ``W_f, R_f, b_f``).

    Routes: ``carousel`` (c -> c' through ``c * f``), ``z``, ``i``, ``f``, ``o``
    (h -> each gate through ``R``), and ``peep_i``, ``peep_f`` with peepholes.

    Example::

        cell = gp.LSTM(3, 8)
        params = cell.init(jax.random.key(0))
        s1 = cell.step(params, cell.initial_state(), jnp.ones(3))
    """

    input_size: int
    hidden_size: int
    peepholes: bool = False
    forget_gate: bool = True

    def __post_init__(self) -> None:
        _check_sizes(self)
        for flag in ("peepholes", "forget_gate"):
            if not isinstance(getattr(self, flag), bool):
                raise InputTypeError(f"{flag}: expected a bool, got {getattr(self, flag)!r}")

    @property
    def gates(self) -> tuple[str, ...]:
        return ("z", "i", "f", "o") if self.forget_gate else ("z", "i", "o")

    @property
    def routes(self) -> tuple[str, ...]:
        """Route names, one per entry edge."""
        routes = ("carousel",) + self.gates
        if self.peepholes:
            routes += ("peep_i", "peep_f") if self.forget_gate else ("peep_i",)
        return routes

    def init(
        self,
        key: Array,
        *,
        forget_bias: float | None = None,
        recurrent_gain: float = 1.0,
        input_gain: float = 1.0,
        peephole_scale: float = 0.5,
        dtype: Any = None,
    ) -> LSTMParams:
        """Random parameters.

        ``R_g ~ N(0, recurrent_gain^2 / n)`` (spectral radius about
        ``recurrent_gain``), ``W_g ~ N(0, input_gain^2 / m)``, biases 0 except
        ``b_f = forget_bias`` (default 1.0), peepholes ``~ U(-s, s)`` with
        ``s = peephole_scale``. ``dtype`` None is float64 under x64, else float32.
        """
        dtype = _checks.resolve_dtype(dtype)
        if forget_bias is not None and not self.forget_gate:
            raise InputError("forget_bias: this LSTM has no forget gate (forget_gate=False)")
        forget_bias = 1.0 if forget_bias is None else float(forget_bias)
        n, m = self.hidden_size, self.input_size
        keys = jax.random.split(key, 9)
        w_scale = input_gain / max(m, 1) ** 0.5
        r_scale = recurrent_gain / n**0.5

        def gates(make: Callable[[int, str], Array]) -> Gates:
            return Gates(*(make(k, g) if g in self.gates else None for k, g in enumerate("zifo")))

        W = gates(lambda k, g: _normal(keys[k], (n, m), w_scale, dtype))
        R = gates(lambda k, g: _normal(keys[4 + k], (n, n), r_scale, dtype))
        b = gates(lambda k, g: jnp.full((n,), forget_bias if g == "f" else 0.0, dtype))
        p = None
        if self.peepholes:
            u = jax.random.uniform(keys[8], (3, n), dtype, -peephole_scale, peephole_scale)
            p = Peepholes(u[0], u[1] if self.forget_gate else None, u[2])
        return LSTMParams(W, R, b, p)

    def initial_state(self, dtype: Any = None) -> LSTMState:
        """Zeros: ``LSTMState(c=0, h=0)``."""
        return _zeros_state(LSTMState, self.hidden_size, dtype)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _check_tree(params, LSTMParams, repr(self))
        n, m = self.hidden_size, self.input_size
        for field, shape in (("W", (n, m)), ("R", (n, n)), ("b", (n,))):
            group = getattr(params, field)
            _check_tree(group, Gates, repr(self))
            for g in "zifo":
                value = getattr(group, g)
                if g == "f" and not self.forget_gate:
                    if value is not None:
                        raise InputError(
                            f"params.{field}.f: expected None (forget_gate=False), got an array"
                        )
                    continue
                _check_leaf(value, shape, f"params.{field}.{g}")
        if not self.peepholes:
            if params.p is not None:
                raise InputError("params.p: expected None (peepholes=False), got peepholes")
            return
        if params.p is None:
            raise InputError("params.p: expected Peepholes (peepholes=True), got None")
        _check_tree(params.p, Peepholes, repr(self))
        for g in "ifo":
            value = getattr(params.p, g)
            if g == "f" and not self.forget_gate:
                if value is not None:
                    raise InputError("params.p.f: expected None (forget_gate=False), got an array")
                continue
            _check_leaf(value, (n,), f"params.p.{g}")

    def _peepholes(self, params: LSTMParams) -> Peepholes | None:
        """``params.p`` when the cell has peepholes, else None (``params.p`` unused)."""
        if not self.peepholes:
            return None
        if params.p is None:
            raise InputError("params.p: expected Peepholes (peepholes=True), got None")
        return params.p

    def forward(
        self,
        params: LSTMParams,
        state: LSTMState,
        x: Array,
        read: Callable[[str, Array], Array] = _keep,
    ) -> dict[str, Array]:
        """One step with every intermediate. ``read(route, value)`` is applied to the
        previous state on each entry edge (``jax.lax.stop_gradient`` there cuts the
        route). Returns gates ``z, i, f, o``, ``c`` (new cell state), ``h``,
        ``tanh_c`` = tanh(c'), the pre-activations ``zbar, ibar, fbar, obar`` (no
        ``fbar`` without a forget gate), and the derivatives of each activation at its
        pre-activation, ``dz = tanh'(zbar)``, ``di``, ``df``, ``do`` (sigmoid') and
        ``dtanh_c = tanh'(c')``, computed so that they keep their magnitude at
        saturation (``df = 0`` without a forget gate)."""
        return self.forward_projected(params, state, self.project(params, x[None])[0], read)

    def project(self, params: LSTMParams, xs: Array) -> Array:
        """The input part of every gate's pre-activation for all steps at once:
        ``u[t, g] = W_g x_t + b_g``, shape (T, G, n), gates in :attr:`gates` order."""
        return _projection(params.W, params.b, self.gates, xs)

    def forward_projected(self, params: LSTMParams, state: LSTMState, u: Array,
                          read: Callable[[str, Array], Array] = _keep) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (G, n) of :meth:`project`."""
        R, p = params.R, self._peepholes(params)
        c, h = state
        ux = dict(zip(self.gates, u, strict=True))
        rec = _recurrent(R, self.gates, h, read)
        zbar = ux["z"] + rec["z"]
        ibar = ux["i"] + rec["i"]
        if p is not None:
            ibar = ibar + p.i * read("peep_i", c)
        z, i = tanh(zbar), sigmoid(ibar)
        if self.forget_gate:
            fbar = ux["f"] + rec["f"]
            if p is not None:
                fbar = fbar + p.f * read("peep_f", c)
            f, df = sigmoid(fbar), dsigmoid(fbar)
        else:
            f, df = jnp.ones_like(i), jnp.zeros_like(i)
        c_new = z * i + read("carousel", c) * f
        obar = ux["o"] + rec["o"]
        if p is not None:
            obar = obar + p.o * c_new
        o = sigmoid(obar)
        tanh_c = tanh(c_new)
        out = dict(z=z, i=i, f=f, o=o, c=c_new, h=tanh_c * o, tanh_c=tanh_c,
                   dz=dtanh(zbar), di=dsigmoid(ibar), df=df, do=dsigmoid(obar),
                   dtanh_c=dtanh(c_new), zbar=zbar, ibar=ibar, obar=obar)
        if self.forget_gate:
            out["fbar"] = fbar
        return out

    def step_projected(self, params: LSTMParams, state: LSTMState, u: Array) -> LSTMState:
        """:meth:`step` from the projected input ``u`` (G, n) (the fused forward pass)."""
        out = self.forward_projected(params, state, u)
        return LSTMState(out["c"], out["h"])

    def step(self, params: LSTMParams, state: LSTMState, x: Array,
             read: Callable[[str, Array], Array] = _keep) -> LSTMState:
        """``(c, h), x -> (c', h')``; pure. ``read`` as in :meth:`forward`."""
        out = self.forward(params, state, x, read)
        return LSTMState(out["c"], out["h"])

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``z``, ``i``, ``f`` (with a forget gate), ``o`` and ``tanh(c)``."""
        return self.gates + ("tanh(c)",)

    def activations(self, params: LSTMParams, state: LSTMState, x: Array
                    ) -> dict[str, Activation]:
        """Each gate at its pre-activation (``zbar`` for the tanh block input, ``ibar``,
        ``fbar``, ``obar`` for the sigmoid gates) and ``tanh(c')`` at ``c'``."""
        return self._activations(self.forward(params, state, x))

    def activations_projected(self, params: LSTMParams, state: LSTMState, u: Array
                              ) -> tuple[LSTMState, dict[str, Activation]]:
        """The next state and :meth:`activations` from the projected input ``u``
        (G, n) of :meth:`project`, one forward pass for both."""
        g = self.forward_projected(params, state, u)
        return LSTMState(g["c"], g["h"]), self._activations(g)

    def _activations(self, g: dict[str, Array]) -> dict[str, Activation]:
        out = {"z": _tanh_activation(g["zbar"]), "i": _sigmoid_activation(g["ibar"])}
        if self.forget_gate:
            out["f"] = _sigmoid_activation(g["fbar"])
        out["o"] = _sigmoid_activation(g["obar"])
        out["tanh(c)"] = _tanh_activation(g["c"])
        return out

    def fixed_matrices(self, params: LSTMParams) -> dict[str, tuple[str, Array]]:
        """The edge matrices that depend on the parameters only: route -> (source, R_g)."""
        return {g: ("h", getattr(params.R, g)) for g in self.gates}

    def edges(self, params: LSTMParams, state: LSTMState, x: Array) -> dict[str, Edge]:
        """Entry edges of one step (closed form); see :meth:`linearise`."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: LSTMParams, state: LSTMState, x: Array
                  ) -> tuple[LSTMState, dict[str, Edge]]:
        """The next state and the entry edges of one step, from one forward pass.

        With ``g_c = dh'/dc' = o tanh'(c') + tanh(c') sigmoid'(obar) p_o``, each
        edge's c'-row coefficient ``a`` gives h-row coefficient ``g_c * a``; the o
        route enters the h rows only, with ``tanh(c') sigmoid'(obar)``. Every
        activation derivative is taken at its pre-activation (``sigmoid'(a) = s (1 -
        s)``, ``tanh'(a) = 1 - tanh(a)^2`` in exact arithmetic), so it keeps its
        magnitude where the gate saturates.
        """
        return self._linearised(params, state, self.forward(params, state, x))

    def linearise_projected(self, params: LSTMParams, state: LSTMState, u: Array
                            ) -> tuple[LSTMState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (G, n) of :meth:`project`."""
        return self._linearised(params, state, self.forward_projected(params, state, u))

    def _linearised(self, params: LSTMParams, state: LSTMState, g: dict[str, Array]
                    ) -> tuple[LSTMState, dict[str, Edge]]:
        nxt = LSTMState(g["c"], g["h"])
        z, i, f, o, tc = g["z"], g["i"], g["f"], g["o"], g["tanh_c"]
        do = g["do"]
        g_c = o * g["dtanh_c"]
        p = self._peepholes(params)
        if p is not None:
            g_c = g_c + tc * do * p.o

        def edge(source: str, a: Array, matrix: Array | None) -> Edge:
            return Edge(source, {"c": a, "h": g_c * a}, matrix)

        di = g["di"]
        edges = {
            "carousel": edge("c", f, None),
            "z": edge("h", i * g["dz"], params.R.z),
            "i": edge("h", z * di, params.R.i),
        }
        if self.forget_gate:
            df_c = state.c * g["df"]
            edges["f"] = edge("h", df_c, params.R.f)
        edges["o"] = Edge("h", {"c": None, "h": tc * do}, params.R.o)
        if p is not None:
            edges["peep_i"] = edge("c", z * di * p.i, None)
            if self.forget_gate:
                edges["peep_f"] = edge("c", df_c * p.f, None)
        return nxt, edges


# --------------------------------------------------------------------------- GRU


@dataclasses.dataclass(frozen=True)
class GRU:
    r"""GRU cell; by default PyTorch semantics (reset applied after the recurrent product).

    With ``reset_after=True`` (default; PyTorch, Flax, Keras 3's default):

    .. math::

        r &= \sigma(W_r x + R_r h + b_r) \\
        z &= \sigma(W_z x + R_z h + b_z) \qquad (u \text{ in docs/maths.md}) \\
        n &= \tanh(W_n x + b_n + r \odot (R_n h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    With ``reset_after=False`` (Keras ``reset_after=False``, Haiku's ``hk.GRU`` up
    to ``z -> 1 - z``) the reset acts on the state before the recurrent product,
    and ``b_hn`` is simply added to the candidate's pre-activation (it is zero
    when imported from Keras):

    .. math::

        n = \tanh(W_n x + b_n + b_{hn} + R_n (r \odot h))

    Args:
      input_size: m, the width of ``x`` (0 for an autonomous cell).
      hidden_size: n.
      reset_after: True (default) for ``r * (R_n h + b_hn)``, False for
        ``R_n (r * h) + b_hn``. The params layout (:class:`GRUParams`) is the same.

    Routes: ``carousel`` (h -> h' through ``z * h``), ``r``, ``z``, ``n``
    (through ``R_r``, ``R_z``, ``R_n``).
    """

    input_size: int
    hidden_size: int
    reset_after: bool = True

    def __post_init__(self) -> None:
        _check_sizes(self)
        if not isinstance(self.reset_after, bool):
            raise InputTypeError(f"reset_after: expected a bool, got {self.reset_after!r}")

    @property
    def routes(self) -> tuple[str, ...]:
        """Route names, one per entry edge: ``carousel`` (h -> h' through ``z * h``),
        ``r``, ``z``, ``n`` (h -> each gate)."""
        return ("carousel",) + self.gates

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``r``, ``z`` (sigmoid gates) and ``n`` (the tanh candidate)."""
        return self.gates
    gates = ("r", "z", "n")

    def init(self, key: Array, *, recurrent_gain: float = 1.0, input_gain: float = 1.0,
             dtype: Any = None) -> GRUParams:
        """Random parameters: ``R ~ N(0, gain^2/n)``, ``W ~ N(0, input_gain^2/m)``, zero biases."""
        dtype = _checks.resolve_dtype(dtype)
        n, m = self.hidden_size, self.input_size
        keys = jax.random.split(key, 6)
        w_scale = input_gain / max(m, 1) ** 0.5
        W = GRUGates(*(_normal(keys[k], (n, m), w_scale, dtype) for k in range(3)))
        R = GRUGates(*(_normal(keys[3 + k], (n, n), recurrent_gain / n**0.5, dtype)
                       for k in range(3)))
        b = GRUGates(*(jnp.zeros((n,), dtype) for _ in range(3)))
        return GRUParams(W, R, b, jnp.zeros((n,), dtype))

    def initial_state(self, dtype: Any = None) -> GRUState:
        """Zeros: ``GRUState(h=0)``."""
        return _zeros_state(GRUState, self.hidden_size, dtype)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _check_tree(params, GRUParams, repr(self))
        n, m = self.hidden_size, self.input_size
        for field, shape in (("W", (n, m)), ("R", (n, n)), ("b", (n,))):
            group = getattr(params, field)
            _check_tree(group, GRUGates, repr(self))
            for g in "rzn":
                _check_leaf(getattr(group, g), shape, f"params.{field}.{g}")
        _check_leaf(params.b_hn, (n,), "params.b_hn")

    def forward(self, params: GRUParams, state: GRUState, x: Array,
                read: Callable[[str, Array], Array] = _keep) -> dict[str, Array]:
        """One step with intermediates ``r, z, n, a, h``: ``a = R_n h + b_hn``
        (``reset_after=True``) or ``a = R_n (r * h)`` (``reset_after=False``), and
        the pre-activations ``rbar, zbar, nbar`` and the activation derivatives at
        them, ``dr``, ``dz`` (sigmoid'), ``dn`` (tanh'), with ``zc = 1 - z``
        computed as ``sigmoid(-zbar)`` (exact where ``z`` rounds to 1)."""
        return self.forward_projected(params, state, self.project(params, x[None])[0], read)

    def project(self, params: GRUParams, xs: Array) -> Array:
        """``u[t, g] = W_g x_t + b_g`` for g = r, z, n and every step: (T, 3, n)."""
        return _projection(params.W, params.b, self.gates, xs)

    def forward_projected(self, params: GRUParams, state: GRUState, u: Array,
                          read: Callable[[str, Array], Array] = _keep) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (3, n) of :meth:`project`."""
        R, b_hn = params.R, params.b_hn
        h = state.h
        u_r, u_z, u_n = u
        if self.reset_after:
            rec = _recurrent(R, self.gates, h, read)
        else:
            rec = _recurrent(R, ("r", "z"), h, read)
        rbar = u_r + rec["r"]
        zbar = u_z + rec["z"]
        r, z, zc = sigmoid(rbar), sigmoid(zbar), sigmoid(-zbar)
        if self.reset_after:
            a = rec["n"] + b_hn
            nbar = u_n + r * a
        else:
            a = _mv(R.n, r * read("n", h))
            nbar = u_n + b_hn + a
        n = tanh(nbar)
        return dict(r=r, z=z, n=n, a=a, h=zc * n + z * read("carousel", h), zc=zc,
                    dr=dsigmoid(rbar), dz=dsigmoid(zbar), dn=dtanh(nbar),
                    rbar=rbar, zbar=zbar, nbar=nbar)

    def step_projected(self, params: GRUParams, state: GRUState, u: Array) -> GRUState:
        """:meth:`step` from the projected input ``u`` (3, n) (the fused forward pass)."""
        return GRUState(self.forward_projected(params, state, u)["h"])

    def step(self, params: GRUParams, state: GRUState, x: Array,
             read: Callable[[str, Array], Array] = _keep) -> GRUState:
        """``h, x -> h'``; pure. ``read`` as in :meth:`LSTM.forward`."""
        return GRUState(self.forward(params, state, x, read)["h"])

    def activations(self, params: GRUParams, state: GRUState, x: Array
                    ) -> dict[str, Activation]:
        """The gates ``r``, ``z`` and the candidate ``n`` at their pre-activations."""
        return self._activations(self.forward(params, state, x))

    def activations_projected(self, params: GRUParams, state: GRUState, u: Array
                              ) -> tuple[GRUState, dict[str, Activation]]:
        """The next state and :meth:`activations` from the projected input ``u``
        (3, n) of :meth:`project`, one forward pass for both."""
        g = self.forward_projected(params, state, u)
        return GRUState(g["h"]), self._activations(g)

    @staticmethod
    def _activations(g: dict[str, Array]) -> dict[str, Activation]:
        return {"r": _sigmoid_activation(g["rbar"]), "z": _sigmoid_activation(g["zbar"]),
                "n": _tanh_activation(g["nbar"])}

    def fixed_matrices(self, params: GRUParams) -> dict[str, tuple[str, Array]]:
        """The edge matrices that depend on the parameters only: route -> (source, R_g);
        with ``reset_after=False`` the r and n edges carry the reset and change every step."""
        gates = self.gates if self.reset_after else ("z",)
        return {g: ("h", getattr(params.R, g)) for g in gates}

    def edges(self, params: GRUParams, state: GRUState, x: Array) -> dict[str, Edge]:
        """Entry edges of one step (closed form); see :meth:`linearise`."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: GRUParams, state: GRUState, x: Array
                  ) -> tuple[GRUState, dict[str, Edge]]:
        """The next state and the entry edges, with ``dn = (1-z) tanh'(nbar)``:
        carousel ``diag(z)``; z ``diag((h - n) sigmoid'(zbar)) R_z``; with ``reset_after=True`` r
        ``diag(dn a sigmoid'(rbar)) R_r`` and n ``diag(dn r) R_n``; with
        ``reset_after=False`` r ``diag(dn) R_n diag(h sigmoid'(rbar)) R_r`` and n
        ``diag(dn) R_n diag(r)``. Derivatives are taken at the pre-activations
        (they keep their magnitude at saturation)."""
        return self._linearised(params, state, self.forward(params, state, x))

    def linearise_projected(self, params: GRUParams, state: GRUState, u: Array
                            ) -> tuple[GRUState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (3, n) of :meth:`project`."""
        return self._linearised(params, state, self.forward_projected(params, state, u))

    def _linearised(self, params: GRUParams, state: GRUState, g: dict[str, Array]
                    ) -> tuple[GRUState, dict[str, Edge]]:
        r, z, a, dr = g["r"], g["z"], g["a"], g["dr"]
        h = state.h
        dn = g["zc"] * g["dn"]
        carousel = Edge("h", {"h": z}, None)
        z_edge = Edge("h", {"h": (h - g["n"]) * g["dz"]}, params.R.z)
        if self.reset_after:
            r_edge = Edge("h", {"h": dn * a * dr}, params.R.r)
            n_edge = Edge("h", {"h": dn * r}, params.R.n)
        else:
            Rn = params.R.n
            r_edge = Edge("h", {"h": dn},
                          jnp.dot(Rn * (h * dr)[None, :], params.R.r, precision=_HIGHEST))
            n_edge = Edge("h", {"h": dn}, Rn * r[None, :])
        return GRUState(g["h"]), {"carousel": carousel, "r": r_edge, "z": z_edge, "n": n_edge}


# --------------------------------------------------------------------------- RNN


_NONLINEARITIES = ("tanh", "relu")


@dataclasses.dataclass(frozen=True)
class RNN:
    r"""Vanilla RNN: :math:`h' = \phi(W x + R h + b)`, ``phi`` tanh or relu.

    One route, ``R``; the step Jacobian is ``diag(phi'(W x + R h + b)) R``.
    """

    input_size: int
    hidden_size: int
    nonlinearity: str = "tanh"

    def __post_init__(self) -> None:
        _check_sizes(self)
        _checks.check_choice(self.nonlinearity, "nonlinearity", _NONLINEARITIES)

    @property
    def routes(self) -> tuple[str, ...]:
        """The one route, ``R`` (h -> h' through the recurrent matrix)."""
        return ("R",)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``h`` (tanh) or ``h (relu)``."""
        return ("h",) if self.nonlinearity == "tanh" else ("h (relu)",)

    def init(self, key: Array, *, recurrent_gain: float = 1.0, input_gain: float = 1.0,
             dtype: Any = None) -> RNNParams:
        """Random parameters: ``R ~ N(0, gain^2/n)``, ``W ~ N(0, input_gain^2/m)``, ``b = 0``."""
        dtype = _checks.resolve_dtype(dtype)
        n, m = self.hidden_size, self.input_size
        kw, kr = jax.random.split(key)
        return RNNParams(
            _normal(kw, (n, m), input_gain / max(m, 1) ** 0.5, dtype),
            _normal(kr, (n, n), recurrent_gain / n**0.5, dtype),
            jnp.zeros((n,), dtype),
        )

    def initial_state(self, dtype: Any = None) -> RNNState:
        """Zeros: ``RNNState(h=0)``."""
        return _zeros_state(RNNState, self.hidden_size, dtype)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _check_tree(params, RNNParams, repr(self))
        n, m = self.hidden_size, self.input_size
        _check_leaf(params.W, (n, m), "params.W")
        _check_leaf(params.R, (n, n), "params.R")
        _check_leaf(params.b, (n,), "params.b")

    def _phi(self, u: Array) -> tuple[Array, Array]:
        if self.nonlinearity == "tanh":
            return tanh(u), dtanh(u)
        return jax.nn.relu(u), (u > 0).astype(u.dtype)

    def forward(self, params: RNNParams, state: RNNState, x: Array,
                read: Callable[[str, Array], Array] = _keep) -> dict[str, Array]:
        """One step with intermediates ``pre = W x + R h + b``, ``dphi``, ``h``."""
        pre = _mv(params.W, x) + _mv(params.R, read("R", state.h)) + params.b
        return self._after(pre)

    def forward_projected(self, params: RNNParams, state: RNNState, u: Array
                          ) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (n,) of :meth:`project`."""
        return self._after(u + _mv(params.R, state.h))

    def _after(self, pre: Array) -> dict[str, Array]:
        h, dphi = self._phi(pre)
        return dict(pre=pre, dphi=dphi, h=h)

    def step(self, params: RNNParams, state: RNNState, x: Array,
             read: Callable[[str, Array], Array] = _keep) -> RNNState:
        """``h, x -> h'``; pure. ``read`` as in :meth:`LSTM.forward`."""
        return RNNState(self.forward(params, state, x, read)["h"])

    def activations(self, params: RNNParams, state: RNNState, x: Array
                    ) -> dict[str, Activation]:
        """``phi`` at ``pre = W x + R h + b``; a ReLU's slope is ``1[pre > 0]`` (a dead
        unit is saturated at the low end)."""
        return self._activations(self.forward(params, state, x))

    def activations_projected(self, params: RNNParams, state: RNNState, u: Array
                              ) -> tuple[RNNState, dict[str, Activation]]:
        """The next state and :meth:`activations` from the projected input ``u`` (n,)
        of :meth:`project`, one forward pass for both."""
        g = self.forward_projected(params, state, u)
        return RNNState(g["h"]), self._activations(g)

    def _activations(self, g: dict[str, Array]) -> dict[str, Activation]:
        return {self.activation_names[0]: Activation(g["pre"], g["dphi"])}

    def fixed_matrices(self, params: RNNParams) -> dict[str, tuple[str, Array]]:
        """The edge matrix, which depends on the parameters only: ``{"R": ("h", R)}``."""
        return {"R": ("h", params.R)}

    def edges(self, params: RNNParams, state: RNNState, x: Array) -> dict[str, Edge]:
        """The one entry edge: ``diag(phi'(pre)) R``."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: RNNParams, state: RNNState, x: Array
                  ) -> tuple[RNNState, dict[str, Edge]]:
        """The next state and the entry edge, from one forward pass."""
        return self._linearised(params, self.forward(params, state, x))

    def linearise_projected(self, params: RNNParams, state: RNNState, u: Array
                            ) -> tuple[RNNState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (n,) of :meth:`project`."""
        return self._linearised(params, self.forward_projected(params, state, u))

    @staticmethod
    def _linearised(params: RNNParams, g: dict[str, Array]) -> tuple[RNNState, dict[str, Edge]]:
        return RNNState(g["h"]), {"R": Edge("h", {"h": g["dphi"]}, params.R)}

    def project(self, params: RNNParams, xs: Array) -> Array:
        """``u_t = W x_t + b`` for every step: (T, n)."""
        return jnp.einsum("tm,nm->tn", xs, params.W, precision=_HIGHEST) + params.b[None]

    def step_projected(self, params: RNNParams, state: RNNState, u: Array) -> RNNState:
        """:meth:`step` from the projected input ``u`` (n,) (the fused forward pass)."""
        return RNNState(self.forward_projected(params, state, u)["h"])


BUILTIN_CELLS = (LSTM, GRU, RNN)
