"""Cell configurations shared by the test modules (one battery over every cell)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradpaths as gp

CONFIGS = {
    "lstm": lambda m, n: gp.LSTM(m, n),
    "lstm-peep": lambda m, n: gp.LSTM(m, n, peepholes=True),
    "lstm-nof": lambda m, n: gp.LSTM(m, n, forget_gate=False),
    "lstm-peep-nof": lambda m, n: gp.LSTM(m, n, peepholes=True, forget_gate=False),
    "gru": lambda m, n: gp.GRU(m, n),
    "gru-reset-before": lambda m, n: gp.GRU(m, n, reset_after=False),
    "rnn-tanh": lambda m, n: gp.RNN(m, n),
    "rnn-relu": lambda m, n: gp.RNN(m, n, nonlinearity="relu"),
}

# The modern gated recurrences, kept apart from CONFIGS (whose batteries also check the
# LSTM/GRU/RNN activation functions); their own test modules run the cell battery.
MODERN = {
    "slstm": lambda m, n: gp.SLSTM(m, n),
    "slstm-sigmoid": lambda m, n: gp.SLSTM(m, n, forget_activation="sigmoid"),
    "mingru": lambda m, n: gp.MinGRU(m, n),
    "minlstm": lambda m, n: gp.MinLSTM(m, n),
    "lru": lambda m, n: gp.LRU(m, n),
}


def random_state(cell, key, scale=0.8, dtype=jnp.float64):
    """A non-zero initial state, so that every term of the Jacobian is exercised."""
    state = cell.initial_state(dtype)
    keys = jax.random.split(key, len(state))
    return type(state)(*(scale * jax.random.normal(k, s.shape, dtype) for k, s in zip(keys, state)))


def setup(name, m=3, n=5, T=6, seed=0, gain=1.5, dtype=jnp.float64):
    """(cell, params, xs, state0) with random biases too."""
    cell = CONFIGS[name](m, n) if name in CONFIGS else MODERN[name](m, n)
    kp, kx, ks, kb = jax.random.split(jax.random.key(seed), 4)
    # The cells without a recurrent matrix (minGRU, minLSTM, LRU) take no gain.
    gains = {"recurrent_gain": gain} if name in CONFIGS or name.startswith("slstm") else {}
    params = cell.init(kp, dtype=dtype, **gains)
    # Random biases: the default init sets most to 0, which would hide sign errors.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    bkeys = jax.random.split(kb, len(leaves))
    leaves = [leaf + 0.3 * jax.random.normal(k, leaf.shape, dtype) if leaf.ndim == 1 else leaf
              for k, leaf in zip(bkeys, leaves)]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    xs = jax.random.normal(kx, (T, m), dtype)
    return cell, params, xs, random_state(cell, ks, dtype=dtype)


class HenonState(NamedTuple):
    x: jax.Array
    y: jax.Array


class Henon:
    """The Henon map x' = 1 - a x^2 + y, y' = b x as an autonomous custom cell."""

    def step(self, params, state, x):
        a, b = params
        return HenonState(1.0 - a * state.x**2 + state.y, b * state.x)

    def initial_state(self):
        return HenonState(jnp.array([0.1]), jnp.array([0.1]))


class LinearState(NamedTuple):
    s: jax.Array


@dataclasses.dataclass(frozen=True)
class Linear:
    """``s' = A s`` (params: the matrix ``A``), a custom autonomous cell whose
    Lyapunov exponents are ``log |eig(A)|``."""

    d: int

    def step(self, params, state, x):
        return LinearState(params @ state.s)

    def initial_state(self):
        return LinearState(jnp.zeros((self.d,)))   # stays 0: a bounded trajectory


# --------------------------------------------------------------------------- numpy references


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


# Saturation by value (docs/maths.md: a derivative below 10% of its maximum):
# sigmoid' = s (1 - s) < 0.025 <=> s < 0.0256 or s > 0.9744; tanh' < 0.1 <=> |tanh| > 0.9487.
SIGMOID_EDGE = 0.5 * (1 - np.sqrt(0.9))
TANH_EDGE = np.sqrt(0.9)


def lstm_saturation_numpy(params, prev, xs):
    """gate -> ``(low, high)``, each (T,): the fraction of units saturated at each end,
    from the LSTM equations in plain numpy (no peepholes; ``prev`` the states entering
    each step)."""
    W, R, b = (jax.tree_util.tree_map(np.asarray, g) for g in (params.W, params.R, params.b))
    c, h, xs = np.asarray(prev.c), np.asarray(prev.h), np.asarray(xs)

    def pre(g):
        return xs @ getattr(W, g).T + h @ getattr(R, g).T + getattr(b, g)

    z, i, f = np.tanh(pre("z")), _sigmoid(pre("i")), _sigmoid(pre("f"))
    c_new = z * i + c * f
    o = _sigmoid(pre("o"))

    def sig(v):
        return np.mean(v < SIGMOID_EDGE, axis=1), np.mean(v > 1 - SIGMOID_EDGE, axis=1)

    def tanh(v):
        return np.mean(v < -TANH_EDGE, axis=1), np.mean(v > TANH_EDGE, axis=1)

    return {"z": tanh(z), "i": sig(i), "f": sig(f), "o": sig(o), "tanh(c)": tanh(np.tanh(c_new))}


def closed_gate_lstm(w=50, T=200):
    """LSTM(1, 2) with R = 0: unit 0's forget gate is shut by the warm-up (x = -1,
    ``W_f = 20``) and open in the window (x = +1); unit 1's is 0.9 throughout. The
    window's product grows at 0 (unit 0's carousel), not at log 0.9."""
    cell = gp.LSTM(1, 2)
    p = cell.init(jax.random.key(0))
    p = p._replace(R=jax.tree_util.tree_map(jnp.zeros_like, p.R),
                   W=p.W._replace(f=jnp.array([[20.0], [0.0]])),
                   b=p.b._replace(f=jnp.array([0.0, 2.2])))
    xs = jnp.concatenate([-jnp.ones((w, 1)), jnp.ones((T - w, 1))])
    return cell, p, xs
