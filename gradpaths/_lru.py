r"""The linear recurrent unit, LRU (Orvieto et al. 2023): a complex diagonal recurrence.

.. math::

    \lambda_j = \exp(-e^{\nu_j} + i\, e^{\theta_j}), \qquad
    x' = \lambda \odot x + \gamma \odot (B u), \qquad \gamma_j = e^{\gamma^{\log}_j}

with ``x`` complex (N,), ``B = B_re + i B_im`` (N, H) and the input normalisation
``gamma`` initialised to ``sqrt(1 - |lambda|^2)`` (trainable, as in the paper). The
state is kept as its real and imaginary parts, ``s = [Re x; Im x]``, so every
Jacobian is real: with ``a = Re lambda``, ``b = Im lambda``,

.. math::

    J = \begin{pmatrix} \mathrm{diag}(a) & -\mathrm{diag}(b) \\
                        \mathrm{diag}(b) & \mathrm{diag}(a) \end{pmatrix},

a 2x2 rotation-scaling block ``|lambda_j| R(arg lambda_j)`` per unit after reordering. It
is the same at every step (independent of the state and the input). The Lyapunov
exponents are ``log |lambda_j| = -e^{nu_j}``, each twice, and the product's norm after
``t`` steps is ``exp(t max_j log |lambda_j|)`` (a normal matrix): the LRU never
amplifies while ``nu`` is finite.

The paper's output map ``y = Re(C x) + D u`` is not part of the step: a linear readout of
``s`` (as :class:`gradpaths.Model` uses for a state without an ``h`` field) is
``Re(C x)`` with ``C = W_re - i W_im``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from gradpaths import _cells, _checks
from gradpaths._cells import Edge

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


class LRUParams(NamedTuple):
    """LRU parameters.

    Attributes:
      nu_log: (N,), ``log nu``: ``|lambda| = exp(-exp(nu_log))``.
      theta_log: (N,), ``log theta``: ``arg lambda = exp(theta_log)``.
      gamma_log: (N,), the log input normalisation.
      B_re, B_im: (N, H), the input matrix's real and imaginary parts.
    """

    nu_log: Any
    theta_log: Any
    gamma_log: Any
    B_re: Any
    B_im: Any


class LRUState(NamedTuple):
    """LRU state, the complex ``x`` as two real fields, each (N,): ``s = [re; im]``."""

    re: Array
    im: Array


@dataclasses.dataclass(frozen=True)
class LRU:
    r"""Linear recurrent unit (Orvieto et al. 2023), state ``x`` complex (N,) kept as
    ``(re, im)``.

    .. math::

        \lambda = \exp(-e^{\nu} + i e^{\theta}), \quad
        x' = \lambda \odot x + e^{\gamma^{\log}} \odot ((B_{re} + i B_{im}) u)

    Routes: ``re`` and ``im``, the previous state entering through its real or its
    imaginary part (each one column block of ``J``; they are the two halves of one
    complex diagonal recurrence, not separate mechanisms: only their sum, the whole
    Jacobian, has the rotation-scaling structure).

    Args:
      input_size: H, the width of ``u``.
      hidden_size: N, the number of complex units; ``d = 2N``.

    Example::

        cell = gp.LRU(3, 8)
        params = cell.init(jax.random.key(0), r_min=0.9, r_max=0.99)
        gp.lyapunov_exponents(cell, params, jnp.ones((50, 3)))   # log|lambda|, twice
    """

    input_size: int
    hidden_size: int

    @property
    def routes(self) -> tuple[str, ...]:
        """``re`` and ``im``: the previous state entering through its real or imaginary
        part."""
        return ("re", "im")

    #: How the step Jacobian is structured (read by explanations): 2x2 rotation-scaling
    #: blocks ``|lambda_j| R(arg lambda_j)``, the same at every step.
    jacobian_structure: ClassVar[str] = "complex-diagonal"

    def __post_init__(self) -> None:
        _cells._check_sizes(self)

    def init(self, key: Array, *, r_min: float = 0.4, r_max: float = 0.99,
             max_phase: float = 2 * math.pi, dtype: Any = None) -> LRUParams:
        """The paper's initialisation: ``lambda`` uniform on the ring ``r_min <= |lambda|
        <= r_max`` with phase in ``[0, max_phase)``, ``gamma = sqrt(1 - |lambda|^2)``,
        ``B ~ N(0, 1 / (2H))`` (real and imaginary parts)."""
        dtype = _checks.resolve_dtype(dtype)
        if not 0 < r_min <= r_max < 1:
            raise _checks.InputError(
                f"r_min, r_max: expected 0 < r_min <= r_max < 1, got {r_min}, {r_max}")
        if not max_phase > 0:
            raise _checks.InputError(f"max_phase: expected > 0, got {max_phase}")
        N, H = self.hidden_size, self.input_size
        k1, k2, k3, k4 = jax.random.split(key, 4)
        u1 = jax.random.uniform(k1, (N,), dtype)
        u2 = jax.random.uniform(k2, (N,), dtype, minval=1e-6)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = jnp.log(max_phase * u2)
        gamma_log = 0.5 * jnp.log1p(-jnp.exp(-2 * jnp.exp(nu_log)))   # sqrt(1 - |lambda|^2)
        scale = 1 / (2 * max(H, 1)) ** 0.5
        return LRUParams(nu_log, theta_log, gamma_log, _cells._normal(k3, (N, H), scale, dtype),
                         _cells._normal(k4, (N, H), scale, dtype))

    def initial_state(self, dtype: Any = None) -> LRUState:
        """Zeros: ``LRUState(re=0, im=0)``."""
        return _cells._zeros_state(LRUState, self.hidden_size, dtype)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this cell."""
        _cells._check_tree(params, LRUParams, repr(self))
        N, H = self.hidden_size, self.input_size
        for field in ("nu_log", "theta_log", "gamma_log"):
            _cells._check_leaf(getattr(params, field), (N,), f"params.{field}")
        for field in ("B_re", "B_im"):
            _cells._check_leaf(getattr(params, field), (N, H), f"params.{field}")

    def eigenvalues(self, params: LRUParams) -> tuple[Array, Array]:
        """``(Re lambda, Im lambda)``, each (N,)."""
        modulus = jnp.exp(-jnp.exp(params.nu_log))
        phase = jnp.exp(params.theta_log)
        return modulus * jnp.cos(phase), modulus * jnp.sin(phase)

    def log_moduli(self, params: LRUParams) -> Array:
        """``log |lambda_j| = -exp(nu_log_j)`` (N,), nats/step: the exponents, each
        twice, in closed form (finite where ``|lambda_j|`` itself underflows, e.g.
        ``nu_log >= 4.5`` in float32, ``|lambda| < e^-90``)."""
        return -jnp.exp(params.nu_log)

    def project(self, params: LRUParams, xs: Array) -> Array:
        """``gamma * (B u_t)`` for every step, real and imaginary parts: (T, 2, N)."""
        B = jnp.stack([params.B_re, params.B_im])                 # (2, N, H)
        Bu = jnp.einsum("th,knh->tkn", xs, B, precision=_HIGHEST)
        return jnp.exp(params.gamma_log)[None, None] * Bu

    def forward(self, params: LRUParams, state: LRUState, x: Array,
                read: Callable[[str, Array], Array] = _cells._keep) -> dict[str, Array]:
        """One step with intermediates ``a = Re lambda``, ``b = Im lambda`` and the new
        ``re``, ``im``. ``read(route, value)`` is applied to the previous state's real
        and imaginary parts (routes ``re``, ``im``)."""
        self.check_params(params)
        _checks.check_shape(x, (self.input_size,), "x")
        return self.forward_projected(params, state, self.project(params, x[None])[0], read)

    def forward_projected(self, params: LRUParams, state: LRUState, u: Array,
                          read: Callable[[str, Array], Array] = _cells._keep
                          ) -> dict[str, Array]:
        """:meth:`forward` from the projected input ``u`` (2, N) of :meth:`project`."""
        a, b = self.eigenvalues(params)
        re, im = read("re", state.re), read("im", state.im)
        return dict(a=a, b=b, re=a * re - b * im + u[0], im=b * re + a * im + u[1])

    def step_projected(self, params: LRUParams, state: LRUState, u: Array) -> LRUState:
        """:meth:`step` from the projected input ``u`` (2, N) (the fused forward pass)."""
        g = self.forward_projected(params, state, u)
        return LRUState(g["re"], g["im"])

    def step(self, params: LRUParams, state: LRUState, x: Array,
             read: Callable[[str, Array], Array] = _cells._keep) -> LRUState:
        """``x, u -> lambda x + gamma B u`` on ``(re, im)``; pure."""
        g = self.forward(params, state, x, read)
        return LRUState(g["re"], g["im"])

    def fixed_matrices(self, params: LRUParams) -> dict[str, tuple[str, Array]]:
        """No edge has a matrix: ``{}``."""
        del params
        return {}

    def edges(self, params: LRUParams, state: LRUState, x: Array) -> dict[str, Edge]:
        """The two entry edges; see :meth:`linearise`."""
        return self.linearise(params, state, x)[1]

    def linearise(self, params: LRUParams, state: LRUState, x: Array
                  ) -> tuple[LRUState, dict[str, Edge]]:
        """The next state and the entry edges: ``re -> (re', im')`` with ``(a, b)`` and
        ``im -> (re', im')`` with ``(-b, a)``."""
        return self._linearised(self.forward(params, state, x))

    def linearise_projected(self, params: LRUParams, state: LRUState, u: Array
                            ) -> tuple[LRUState, dict[str, Edge]]:
        """:meth:`linearise` from the projected input ``u`` (2, N) of :meth:`project`."""
        return self._linearised(self.forward_projected(params, state, u))

    @staticmethod
    def _linearised(g: dict[str, Array]) -> tuple[LRUState, dict[str, Edge]]:
        a, b = g["a"], g["b"]
        return LRUState(g["re"], g["im"]), {"re": Edge("re", {"re": a, "im": b}, None),
                                            "im": Edge("im", {"re": -b, "im": a}, None)}
