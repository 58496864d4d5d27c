r"""The xLSTM sLSTM cell (Beck et al. 2024): exponential gating, normaliser, stabiliser.

Equations (Beck et al. 2024, section 2.2 and appendix), state ``(c, n, m, h)``, each (n,):

.. math::

    \tilde z &= W_z x + R_z h + b_z, & z &= \tanh \tilde z \\
    \tilde i &= W_i x + R_i h + b_i & & \text{(input gate } e^{\tilde i}) \\
    \tilde f &= W_f x + R_f h + b_f, & \ell &= \tilde f \ \text{(exp)}
        \text{ or } \log\sigma(\tilde f) \ \text{(sigmoid)} \\
    \tilde o &= W_o x + R_o h + b_o, & o &= \sigma(\tilde o) \\
    m' &= \max(\ell + m, \tilde i) & & \text{stabiliser (log space)} \\
    f' &= e^{\ell + m - m'}, & i' &= e^{\tilde i - m'} \\
    c' &= f' c + i' z, & n' &= f' n + i' \\
    h' &= o \, c' / n'

The stabilised states are the paper's ``c, n`` times ``e^{-m}``; the output ``h`` does
not depend on the stabiliser (the *normalisation invariance*): shifting ``m`` by
``delta`` while scaling ``c`` and ``n`` by ``e^{-delta}`` leaves every later ``h``
unchanged.

The max is piecewise: with ``a = l + m`` and ``b = i~`` the *forget branch* is taken
where ``a >= b`` (ties go to it), the *input branch* elsewhere. Forward pass and every
derivative (closed form, ``jacfwd``, ``jacrev``) use the same selection ``sel`` (1:
forget branch), written with ``jnp.where``: ``jnp.maximum`` would split the derivative
1/2 : 1/2 at a tie. The step is continuous everywhere and smooth away from ties. (The
reference implementation sets ``m' = i~`` while every normaliser is 0, i.e. on the
first step from the zero state; that choice differs from the max only by a stabiliser
shift, so every ``h`` is the same, but it makes the stabilised state jump at ``n = 0``
and lets ``f'`` exceed 1 there; it is not copied.)

The invariance is a tangent direction per unit ``j``, ``v_j = (-c_j, -n_j, 1, 0)``
(entries in the c, n, m, h rows of unit j): ``J v_j = sel_j v_j'`` (the next state's
direction), and ``h`` never moves along it. Over runs of forget-branch steps it is
carried with factor 1, and its length grows with ``n`` (at most linearly), so the
full-state Jacobian has up to n Lyapunov exponents near 0 that are pure gauge: a
gradient of any loss of ``h`` is orthogonal to these directions and does not see them.

The recurrent matrices are dense (n, n); the paper's block-diagonal heads are the
special case of a block-diagonal ``R``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from gradpaths import _cells, _checks
from gradpaths._cells import Edge, Gates
from gradpaths._protocols import Activation

Array = jax.Array

FORGET_ACTIVATIONS = ("exp", "sigmoid")


class SLSTMParams(NamedTuple):
    """sLSTM parameters.

    Attributes:
      W: ``Gates`` (z, i, f, o) of input weights, each (n, m).
      R: ``Gates`` of recurrent weights, each (n, n) (dense; heads = block diagonal).
      b: ``Gates`` of biases, each (n,).
    """

    W: Gates
    R: Gates
    b: Gates


class SLSTMState(NamedTuple):
    """sLSTM state, each (n,): cell ``c``, normaliser ``n``, stabiliser ``m`` (log
    space), output ``h``; ``s = [c; n; m; h]``, ``d = 4n``."""

    c: Array
    n: Array
    m: Array
    h: Array


@dataclasses.dataclass(frozen=True)
class SLSTM:
    r"""The xLSTM sLSTM cell (Beck et al. 2024) with dense recurrent matrices.

    Equations in the module docstring and docs/maths.md. The step Jacobian, with
    ``delta = d l + d m - d i~`` (``l`` the log forget gate), ``sel`` the branch of
    the max, ``k_c = c f' (1 - sel) - z i' sel`` and ``k_n = n f' (1 - sel) - i' sel``:

    .. math::

        dc' = f' dc + k_c \delta + i' \tanh'(\tilde z) d\tilde z, \quad
        dn' = f' dn + k_n \delta, \quad dm' = sel (d\ell + dm) + (1 - sel) d\tilde i, \\
        dh' = (o / n') (dc' - h~' dn') + h~' \sigma'(\tilde o) d\tilde o,
        \qquad h~' = c' / n'.

    Routes (one per entry edge of the previous state): ``carousel`` (c -> c' through
    ``f' c``), ``normaliser`` (n -> n' through ``f' n``), ``stabiliser`` (m -> m',
    and -> c', n' through ``f' = exp(l + m - m')``), and ``z``, ``i``, ``f``, ``o``
    (h -> each gate through ``R``). Each also reaches h' through ``c'/n'``.

    The stabilised carousel factor ``f' = exp(a - max(a, b)) <= 1`` never exceeds 1:
    it is exactly 1 in the forget branch (the unstabilised factor ``e^l``, which can
    exceed 1 with the exponential forget gate, moves into ``m' = l + m``, an additive
    update whose coefficient on ``m`` is 1) and ``e^{a - b} < 1`` in the input branch.
    The carousel, normaliser and stabiliser routes alone are therefore neutral at most;
    growth needs the routes through ``R``, whose h rows carry ``o / n'``.

    Args:
      input_size: m.
      hidden_size: n; the state ``s = [c; n; m; h]`` has ``d = 4n``.
      forget_activation: ``"exp"`` (``f = e^{f~}``, default) or ``"sigmoid"``
        (``f = sigma(f~)``, the reference implementation's choice).

    Example::

        cell = gp.SLSTM(3, 8)
        params = cell.init(jax.random.key(0))
        states = gp.unroll(cell, params, jnp.ones((10, 3)))
    """

    input_size: int
    hidden_size: int
    forget_activation: str = "exp"

    @property
    def gates(self) -> tuple[str, ...]:
        """The gates through ``R``, in the order of :meth:`project`: z, i, f, o."""
        return ("z", "i", "f", "o")

    @property
    def routes(self) -> tuple[str, ...]:
        """Route names, one per entry edge: ``carousel``, ``normaliser``, ``stabiliser``
        and the gates ``z``, ``i``, ``f``, ``o``."""
        return ("carousel", "normaliser", "stabiliser") + self.gates

    #: How the step Jacobian is structured (read by explanations): dense through ``R``.
    jacobian_structure: ClassVar[str] = "dense"

    def __post_init__(self) -> None:
        _cells._check_sizes(self)
        _checks.check_choice(self.forget_activation, "forget_activation", FORGET_ACTIVATIONS)

    def init(self, key: Array, *, forget_bias: float | None = None,
             recurrent_gain: float = 1.0, input_gain: float = 1.0,
             dtype: Any = None) -> SLSTMParams:
        """Random parameters: ``R_g ~ N(0, recurrent_gain^2 / n)``, ``W_g ~ N(0,
        input_gain^2 / m)``, biases 0 except ``b_f = forget_bias`` (default 0.0 for
        the exponential forget gate, ``e^0 = 1``; 1.0 for the sigmoid one,
        ``sigma(1) = 0.73``). ``dtype`` None is float64 under x64, else float32."""
        dtype = _checks.resolve_dtype(dtype)
        if forget_bias is None:
            forget_bias = 0.0 if self.forget_activation == "exp" else 1.0
        n, m = self.hidden_size, self.input_size
        keys = jax.random.split(key, 8)
        w_scale = input_gain / max(m, 1) ** 0.5
        r_scale = recurrent_gain / n**0.5
        W = Gates(*(_cells._normal(keys[k], (n, m), w_scale, dtype) for k in range(4)))
        R = Gates(*(_cells._normal(keys[4 + k], (n, n), r_scale, dtype) for k in range(4)))
        b = Gates(*(jnp.full((n,), float(forget_bias) if g == "f" else 0.0, dtype)
                    for g in self.gates))
        return SLSTMParams(W, R, b)

    def initial_state(self, dtype: Any = None) -> SLSTMState:
        """Zeros: ``SLSTMState(c=0, n=0, m=0, h=0)``."""
        return _cells._zeros_state(SLSTMState, self.hidden_size, dtype)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _cells._check_tree(params, SLSTMParams, repr(self))
        n, m = self.hidden_size, self.input_size
        for field, shape in (("W", (n, m)), ("R", (n, n)), ("b", (n,))):
            group = getattr(params, field)
            _cells._check_tree(group, Gates, repr(self))
            for g in self.gates:
                _cells._check_leaf(getattr(group, g), shape, f"params.{field}.{g}")

    def _log_forget(self, fbar: Array) -> tuple[Array, Array]:
        """``(l, dl/df~)``: ``(f~, 1)`` or ``(log sigma(f~), sigma(-f~))``."""
        if self.forget_activation == "exp":
            return fbar, jnp.ones_like(fbar)
        return jax.nn.log_sigmoid(fbar), _cells.sigmoid(-fbar)

    def project(self, params: SLSTMParams, xs: Array) -> Array:
        """``u[t, g] = W_g x_t + b_g`` for every step and gate z, i, f, o: (T, 4, n)."""
        return _cells._projection(params.W, params.b, self.gates, xs)

    def forward(self, params: SLSTMParams, state: SLSTMState, x: Array,
                read: Callable[[str, Array], Array] = _cells._keep) -> dict[str, Array]:
        """One step with every intermediate. ``read(route, value)`` is applied to the
        previous state on each entry edge (``jax.lax.stop_gradient`` there cuts the
        route). Returns ``z, o``, ``f_s = f'`` and ``i_s = i'`` (stabilised gates),
        ``sel`` (1.0 where the forget branch is taken), ``dl = dl/df~``, the new
        ``c, n, m, h``, ``h_tilde = c'/n'`` and the activation derivatives ``dz =
        tanh'(z~)``, ``do = sigmoid'(o~)``, and the pre-activations ``zbar, ibar,
        fbar, obar``."""
        self.check_params(params)
        _checks.check_shape(x, (self.input_size,), "x")
        return self.forward_projected(params, state, self.project(params, x[None])[0], read)

    def forward_projected(self, params: SLSTMParams, state: SLSTMState, u: Array,
                          read: Callable[[str, Array], Array] = _cells._keep
                          ) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (4, n) of :meth:`project`."""
        c, n, m, h = state
        ux = dict(zip(self.gates, u, strict=True))
        rec = _cells._recurrent(params.R, self.gates, h, read)
        zbar, ibar = ux["z"] + rec["z"], ux["i"] + rec["i"]
        fbar, obar = ux["f"] + rec["f"], ux["o"] + rec["o"]
        z, o = _cells.tanh(zbar), _cells.sigmoid(obar)
        log_f, dl = self._log_forget(fbar)
        a = log_f + read("stabiliser", m)           # forget branch of the max
        forget_branch = a >= ibar                   # ties -> forget branch
        m_new = jnp.where(forget_branch, a, ibar)
        f_s = jnp.exp(a - m_new)                    # <= 1; exactly 1 in the forget branch
        i_s = jnp.exp(ibar - m_new)                 # <= 1; exactly 1 in the input branch
        c_new = f_s * read("carousel", c) + i_s * z
        n_new = f_s * read("normaliser", n) + i_s
        h_tilde = c_new / n_new
        return dict(z=z, o=o, f_s=f_s, i_s=i_s, sel=forget_branch.astype(c_new.dtype), dl=dl,
                    c=c_new, n=n_new, m=m_new, h=o * h_tilde, h_tilde=h_tilde,
                    dz=_cells.dtanh(zbar), do=_cells.dsigmoid(obar),
                    zbar=zbar, ibar=ibar, fbar=fbar, obar=obar)

    def step_projected(self, params: SLSTMParams, state: SLSTMState, u: Array) -> SLSTMState:
        """:meth:`step` from the projected input ``u`` (4, n) (the fused forward pass)."""
        g = self.forward_projected(params, state, u)
        return SLSTMState(g["c"], g["n"], g["m"], g["h"])

    def step(self, params: SLSTMParams, state: SLSTMState, x: Array,
             read: Callable[[str, Array], Array] = _cells._keep) -> SLSTMState:
        """``(c, n, m, h), x -> (c', n', m', h')``; pure. ``read`` as in :meth:`forward`."""
        g = self.forward(params, state, x, read)
        return SLSTMState(g["c"], g["n"], g["m"], g["h"])

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``z`` (tanh), ``f`` (with the sigmoid forget gate) and ``o`` (sigmoid). The
        exponential gates have no saturated range: they are left out."""
        return ("z", "f", "o") if self.forget_activation == "sigmoid" else ("z", "o")

    def activations(self, params: SLSTMParams, state: SLSTMState, x: Array
                    ) -> dict[str, Activation]:
        """Each saturating activation at its pre-activation (:attr:`activation_names`)."""
        return self._activations(self.forward(params, state, x))

    def activations_projected(self, params: SLSTMParams, state: SLSTMState, u: Array
                              ) -> tuple[SLSTMState, dict[str, Activation]]:
        """The next state and :meth:`activations` from the projected input ``u``
        (4, n) of :meth:`project`, one forward pass for both."""
        g = self.forward_projected(params, state, u)
        return SLSTMState(g["c"], g["n"], g["m"], g["h"]), self._activations(g)

    def _activations(self, g: dict[str, Array]) -> dict[str, Activation]:
        out = {"z": _cells._tanh_activation(g["zbar"])}
        if self.forget_activation == "sigmoid":
            out["f"] = _cells._sigmoid_activation(g["fbar"])
        out["o"] = _cells._sigmoid_activation(g["obar"])
        return out

    def gauge_directions(self, state: SLSTMState) -> Array:
        """The stabiliser's gauge tangents at ``state``: (4n, n), column j is
        ``v_j = (-c_j, -n_j, 1, 0)`` in the c, n, m, h rows of unit j. Moving the state
        along them changes no later ``h``; a step maps ``v_j`` to ``sel_j v_j'``."""
        eye = jnp.eye(self.hidden_size, dtype=state.c.dtype)
        return jnp.concatenate([-state.c[:, None] * eye, -state.n[:, None] * eye, eye,
                                jnp.zeros_like(eye)])

    def readout_field(self, block: Any = None) -> str | None:
        """``"h"`` for the whole state (what a readout reads, and all a gradient from it
        enters by: it never sees the gauge directions); None for a diagonal block (the
        blocks ``dc/dc``, ... are measured whole). See :class:`gradpaths._protocols.GaugedCell`."""
        return "h" if block is None else None

    def fixed_matrices(self, params: SLSTMParams) -> dict[str, tuple[str, Array]]:
        """The edge matrices that depend on the parameters only: route -> (source, R_g)."""
        return {g: ("h", getattr(params.R, g)) for g in self.gates}

    def edges(self, params: SLSTMParams, state: SLSTMState, x: Array) -> dict[str, Edge]:
        """Entry edges of one step (closed form); see :meth:`linearise`."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: SLSTMParams, state: SLSTMState, x: Array
                  ) -> tuple[SLSTMState, dict[str, Edge]]:
        """The next state and the entry edges of one step, from one forward pass.

        An edge that moves ``(c', n')`` by ``(v_c, v_n)`` moves ``h'`` by
        ``(o / n') (v_c - h~' v_n)``. The three edges through the max (stabiliser, i,
        f) move ``(c', n', m')`` by ``(k_c, k_n, sel)``, ``(-k_c, -k_n, 1 - sel)`` and
        ``l' (k_c, k_n, sel)`` per unit of their pre-activation (class docstring).
        """
        return self._linearised(params, state, self.forward(params, state, x))

    def linearise_projected(self, params: SLSTMParams, state: SLSTMState, u: Array
                            ) -> tuple[SLSTMState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (4, n) of :meth:`project`."""
        return self._linearised(params, state, self.forward_projected(params, state, u))

    def _linearised(self, params: SLSTMParams, state: SLSTMState, g: dict[str, Array]
                    ) -> tuple[SLSTMState, dict[str, Edge]]:
        nxt = SLSTMState(g["c"], g["n"], g["m"], g["h"])
        f_s, i_s, sel, z = g["f_s"], g["i_s"], g["sel"], g["z"]
        g_c = g["o"] / g["n"]                        # dh'/dc'
        h_tilde = g["h_tilde"]

        def out_h(v_c: Array | None, v_n: Array | None) -> Array:
            total = 0 if v_c is None else v_c
            return g_c * (total - (0 if v_n is None else h_tilde * v_n))

        k_c = state.c * f_s * (1 - sel) - z * i_s * sel
        k_n = state.n * f_s * (1 - sel) - i_s * sel
        k_h = out_h(k_c, k_n)
        dl = g["dl"]
        dz = i_s * g["dz"]
        edges = {
            "carousel": Edge("c", {"c": f_s, "h": out_h(f_s, None)}, None),
            "normaliser": Edge("n", {"n": f_s, "h": out_h(None, f_s)}, None),
            "stabiliser": Edge("m", {"c": k_c, "n": k_n, "m": sel, "h": k_h}, None),
            "z": Edge("h", {"c": dz, "h": g_c * dz}, params.R.z),
            "i": Edge("h", {"c": -k_c, "n": -k_n, "m": 1 - sel, "h": -k_h}, params.R.i),
            "f": Edge("h", {"c": dl * k_c, "n": dl * k_n, "m": dl * sel, "h": dl * k_h},
                      params.R.f),
            "o": Edge("h", {"h": h_tilde * g["do"]}, params.R.o),
        }
        return nxt, edges
