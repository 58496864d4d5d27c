"""The built-in example models: what they promise, and the one convention for keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradpaths as gp
from gradpaths import _checks


def test_with_output_gain_replaces_R_o_alone():
    n, gain = 100, 7.0
    cell = gp.LSTM(2, n)
    params = cell.init(jax.random.key(0), forget_bias=3.0)
    new = gp.with_output_gain(params, gain, jax.random.key(1))
    R_o = np.asarray(new.R.o)
    # R_o ~ N(0, gain^2 / n): n^2 = 10^4 samples pin the std to about 0.7 %; the mean
    # is zero within 5 standard errors.
    assert abs(R_o.std() * n**0.5 / gain - 1) < 0.03
    assert abs(R_o.mean()) < 5 * gain / n**0.5 / n
    # ||R_o||_2 ~ 2 gain for a square Gaussian matrix (the o route's growth scale).
    assert abs(np.linalg.norm(R_o, 2) / (2 * gain) - 1) < 0.05
    assert new.R.o.dtype == params.R.o.dtype
    for field in ("W", "R", "b"):
        for g in "zif":
            np.testing.assert_array_equal(getattr(getattr(new, field), g),
                                          getattr(getattr(params, field), g))
    np.testing.assert_array_equal(new.W.o, params.W.o)
    np.testing.assert_array_equal(new.b.o, params.b.o)
    # The same draw from an int seed, a typed key and a raw key.
    for key in (1, np.int64(1), jax.random.PRNGKey(1)):
        np.testing.assert_array_equal(gp.with_output_gain(params, gain, key).R.o, R_o)
    assert gp.with_output_gain(params._replace(R=params.R._replace(
        o=params.R.o.astype(jnp.float32))), gain, 1).R.o.dtype == jnp.float32


def test_exploding_lstm_is_built_from_its_parts():
    cell, params, xs = gp.exploding_lstm(hidden=6, inputs=3, steps=20, key=4)
    k_params, k_ro, k_xs = jax.random.split(jax.random.key(4), 3)
    want = gp.with_output_gain(
        cell.init(k_params, forget_bias=3.0, recurrent_gain=0.5), 48.0, k_ro)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(xs, jax.random.normal(k_xs, (20, 3)))
    same = gp.exploding_lstm(hidden=6, inputs=3, steps=20, key=jax.random.key(4))
    np.testing.assert_array_equal(same[1].R.o, params.R.o)
    # The story it tells: forget gates near 1, so the carousel alone contracts.
    f = jax.nn.sigmoid(params.b.f)
    assert bool(jnp.all((f > 0.94) & (f < 0.96)))


def test_bad_keys_and_gains():
    params = gp.LSTM(1, 3).init(jax.random.key(0))
    cases = [
        (dict(key="abc"), gp.InputTypeError, "key: expected a PRNG key .* got str 'abc'"),
        (dict(key=True), gp.InputTypeError, "key: expected a PRNG key"),
        (dict(key=-1), gp.InputError, "key: expected a PRNG key or an int seed >= 0, got -1"),
        (dict(key=jax.random.split(jax.random.key(0))), gp.InputError,
         r"key: expected a single PRNG key, got shape \(2,\)"),
    ]
    for kwargs, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            gp.exploding_lstm(**kwargs)
    with pytest.raises(gp.InputError, match="gain: expected a finite number >= 0, got -1.0"):
        gp.with_output_gain(params, -1.0, 0)
    with pytest.raises(gp.InputError, match="gain: .*got inf"):
        gp.with_output_gain(params, float("inf"), 0)
    with pytest.raises(gp.InputTypeError, match="params: expected LSTMParams, got GRUParams"):
        gp.with_output_gain(gp.GRU(1, 3).init(jax.random.key(0)), 1.0, 0)
    assert _checks.check_key(np.uint32(5)).shape == ()
