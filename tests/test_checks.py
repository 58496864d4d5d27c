"""Bad input: clear errors from gradpaths' own checks, never an XLA error or a NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import Henon, setup

import gradpaths as gp


@pytest.fixture
def lstm():
    return setup("lstm", m=3, n=4, T=5)


def test_xs_shape_and_length(lstm):
    cell, params, xs, s0 = lstm
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\).*got \(5, 2\)"):
        gp.step_jacobians(cell, params, xs[:, :2])
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\), got \(3,\)"):
        gp.unroll(cell, params, xs[0])
    with pytest.raises(ValueError, match=r"T >= 1.*\(0, 3\)"):
        gp.step_jacobians(cell, params, xs[:0])
    with pytest.raises(TypeError, match="xs: expected an array, got str"):
        gp.unroll(cell, params, "abc")


def test_state_shape_and_type(lstm):
    cell, params, xs, s0 = lstm
    with pytest.raises(ValueError, match=r"state0.h: expected shape \(4,\), got \(3,\)"):
        gp.step_jacobians(cell, params, xs, gp.LSTMState(s0.c, s0.h[:3]))
    with pytest.raises(TypeError, match=r"state0: expected LSTMState\('c', 'h'\).*got tuple"):
        gp.step_jacobians(cell, params, xs, (s0.c, s0.h))


def test_params_shapes_and_types(lstm):
    cell, params, xs, s0 = lstm
    bad = params._replace(R=params.R._replace(o=params.R.o[:, :3]))
    with pytest.raises(ValueError, match=r"params.R.o: expected shape \(4, 4\), got \(4, 3\)"):
        gp.step_jacobians(cell, bad, xs)
    with pytest.raises(TypeError, match="params: expected LSTMParams.*got GRUParams"):
        gp.step_jacobians(cell, gp.GRU(3, 4).init(jax.random.key(0)), xs)
    with pytest.raises(ValueError, match=r"params.p: expected Peepholes \(peepholes=True\)"):
        gp.step_jacobians(gp.LSTM(3, 4, peepholes=True), params, xs)
    with pytest.raises(ValueError, match=r"params.W.f: expected None \(forget_gate=False\)"):
        gp.step_jacobians(gp.LSTM(3, 4, forget_gate=False), params, xs)
    ints = params._replace(b=params.b._replace(z=jnp.zeros(4, jnp.int32)))
    with pytest.raises(TypeError, match="params.b.z: expected a floating dtype, got int32"):
        gp.unroll(cell, ints, xs)


def test_options():
    cell, params, xs, s0 = setup("rnn-tanh")
    with pytest.raises(ValueError, match="method: expected one of 'analytic', 'jacfwd', 'jacrev'"):
        gp.step_jacobians(cell, params, xs, method="jvp")
    with pytest.raises(ValueError, match="nonlinearity: expected one of 'tanh', 'relu', got 'ge"):
        gp.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size: expected an int >= 1, got 0"):
        gp.LSTM(3, 0)
    with pytest.raises(TypeError, match="input_size: expected an int, got float"):
        gp.GRU(3.0, 4)
    with pytest.raises(TypeError, match="peepholes: expected a bool"):
        gp.LSTM(3, 4, peepholes="yes")
    with pytest.raises(ValueError, match="forget_bias: this LSTM has no forget gate"):
        gp.LSTM(3, 4, forget_gate=False).init(jax.random.key(0), forget_bias=1.0)
    with pytest.raises(TypeError, match="dtype: expected a floating dtype, got int32"):
        gp.LSTM(3, 4).init(jax.random.key(0), dtype=jnp.int32)
    with pytest.raises(ValueError, match="'analytic' needs a cell with a closed form"):
        gp.step_jacobians(Henon(), (1.4, 0.3), jnp.zeros((3, 0)))
    with pytest.raises(TypeError, match="cell: expected an object with step"):
        gp.unroll(object(), None, jnp.zeros((3, 0)))


def test_custom_cell_state_errors():
    class NoInit:
        def step(self, params, state, x):
            return state * 2

    with pytest.raises(ValueError, match="NoInit has no initial_state"):
        gp.unroll(NoInit(), None, jnp.zeros((3, 0)))

    class Grows:
        def step(self, params, state, x):
            return jnp.concatenate([state, state])

    with pytest.raises(ValueError, match="same structure and shapes as state0"):
        gp.unroll(Grows(), None, jnp.zeros((3, 0)), jnp.ones(2))


@pytest.mark.parametrize("where", ["params", "xs", "state0"])
def test_non_finite_inputs_are_named(lstm, where):
    cell, params, xs, s0 = lstm
    if where == "params":
        params = params._replace(R=params.R._replace(f=params.R.f.at[1, 2].set(jnp.nan)))
        match = r"params\.R\.f: expected finite values, got 1 non-finite \(first at index \(1, 2\)"
    elif where == "xs":
        xs = xs.at[3, 0].set(jnp.inf)
        match = r"xs: expected finite values, got 1 non-finite \(first at index \(3, 0\): inf\)"
    else:
        s0 = s0._replace(c=s0.c.at[2].set(jnp.nan))
        match = r"state0\.c: expected finite values"
    with pytest.raises(gp.NonFiniteError, match=match):
        gp.step_jacobians(cell, params, xs, s0)
    with pytest.raises(ValueError):  # NonFiniteError is a ValueError
        gp.unroll(cell, params, xs, s0)


def test_checked_keeps_value_checks_inside_jit(lstm):
    cell, params, xs, s0 = lstm
    f = gp.checked(jax.jit(lambda p, x: gp.step_jacobians(cell, p, x, s0).matrix))
    good = f(params, xs)
    np.testing.assert_allclose(good, gp.step_jacobians(cell, params, xs, s0).matrix)
    with pytest.raises(gp.NonFiniteError, match=r"xs: expected finite values, got NaN or inf"):
        f(params, xs.at[0, 0].set(jnp.nan))


@pytest.mark.parametrize("half", [jnp.float16, jnp.bfloat16])
def test_half_precision_is_computed_in_float32(half):
    # XLA's CPU QR/SVD/eig have no half-precision kernels; gradpaths computes in float32.
    cell = gp.LSTM(3, 4)
    params = cell.init(jax.random.key(0), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (30, 3), jnp.float32)
    p_half = jax.tree_util.tree_map(lambda a: a.astype(half), params)
    p_back = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p_half)
    xs_half = xs.astype(half)
    expected = gp.lyapunov_exponents(cell, p_back, xs_half.astype(jnp.float32), k=2)
    got = gp.lyapunov_exponents(cell, p_half, xs_half, k=2)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, expected)
    assert gp.growth_curve(cell, p_half, xs_half).dtype == jnp.float32
    assert gp.step_spectra(cell, p_half, xs_half).radius.dtype == jnp.float32
    assert np.isfinite(gp.explain(cell, p_half, xs_half).exponent)


def test_custom_cell_must_keep_the_state_dtype():
    class Rounds:
        def initial_state(self):
            return jnp.zeros(3)

        def step(self, params, s, x):
            return (2 * s).astype(jnp.int32)

    with pytest.raises(TypeError, match="keep the dtype of state0"):
        gp.unroll(Rounds(), None, jnp.zeros((4, 0)))

    class Half:   # a float16 state is widened to float32, and so is its step
        def initial_state(self):
            return jnp.zeros(3, jnp.float16)

        def step(self, params, s, x):
            return jnp.tanh(params * s + 1)

    lam = gp.lyapunov_exponents(Half(), jnp.float16(0.5), jnp.zeros((10, 0)), method="jvp")
    assert lam.dtype == jnp.float32 and np.isfinite(lam).all()


def test_input_errors_share_one_class(lstm):
    """Every check on what a user passes raises gp.InputError; type errors are also
    TypeErrors, so `except ValueError` and `except TypeError` keep working."""
    cell, params, xs, s0 = lstm
    with pytest.raises(gp.InputError, match="xs: expected shape") as info:
        gp.unroll(cell, params, xs[0])
    assert type(info.value) is gp.InputError and isinstance(info.value, ValueError)
    with pytest.raises(gp.InputTypeError, match="xs: expected an array") as info:
        gp.unroll(cell, params, "abc")
    assert isinstance(info.value, TypeError) and isinstance(info.value, gp.InputError)
    with pytest.raises(gp.NonFiniteError) as info:
        gp.unroll(cell, params, xs.at[2, 1].set(jnp.nan))
    assert isinstance(info.value, gp.InputError)
    with pytest.raises(gp.interop.MissingKeyError) as info:
        gp.interop.from_haiku({"lstm/linear": {"w": np.zeros((7, 12))}}, prefix="gru")
    assert isinstance(info.value, gp.InputError) and isinstance(info.value, KeyError)
    assert "prefix 'gru'" in str(info.value) and not str(info.value).startswith('"')


def test_json_numbers_round_trip_and_nothing_else_is_read():
    import json

    from gradpaths._checks import json_number, number_from_json

    for x in (0.5, -3, np.inf, -np.inf, np.float32(1.5)):
        assert number_from_json(json.loads(json.dumps(json_number(x))), "x") == float(x)
    assert np.isnan(number_from_json(json_number(np.nan), "x"))
    for bad in (None, "NaN", "1.5", True, [1.0]):
        with pytest.raises(gp.InputError, match="x: expected a number or 'nan'/'inf'/'-inf'"):
            number_from_json(bad, "x")


def test_key_and_positive_float_validators():
    from gradpaths._checks import check_key, check_positive_float

    key = jax.random.key(3)
    assert check_key(key) is key
    data = jax.random.key_data(key)
    np.testing.assert_array_equal(jax.random.key_data(check_key(data)), data)
    with pytest.raises(gp.InputTypeError, match=r"key: expected a PRNG key \(jax.random.key"
                       r"\(seed\)\) or an int seed"):
        check_key("3")
    with pytest.raises(ValueError, match=r"seed: expected a single PRNG key, got shape \(2,\)"):
        check_key(jax.random.split(key), "seed")
    assert check_positive_float(np.float32(2.0), "lr") == 2.0
    with pytest.raises(ValueError, match=r"lr: expected a finite float > 1.0, got 1.0"):
        check_positive_float(1.0, "lr", above=1.0)
    with pytest.raises(ValueError, match=r"lr: expected a finite float > 0.0, got inf"):
        check_positive_float(np.inf, "lr")
    with pytest.raises(gp.InputTypeError, match="lr: expected a float, got bool True"):
        check_positive_float(True, "lr")


def test_one_rule_for_scalar_arguments():
    """Ints: Python, numpy and 0-d integer arrays of any library; floats: also floating
    numbers and 0-d real arrays; bools, strings, complex numbers, other shapes and
    traced values refused (TypeError)."""
    from gradpaths._checks import scalar

    for v in (5, np.int64(5), np.uint8(5), np.array(5), jnp.array(5), jnp.array(5, jnp.int8)):
        got = scalar(v, "x", integer=True)
        assert got == 5 and type(got) is int
        assert scalar(v, "x") == 5.0 and type(scalar(v, "x")) is float
    for v in (0.5, np.float32(0.5), np.float64(0.5), np.array(0.5), jnp.array(0.5),
              jnp.array(0.5, jnp.bfloat16), jnp.array(0.5, jnp.float16)):
        assert scalar(v, "x") == 0.5 and type(scalar(v, "x")) is float
        with pytest.raises(gp.InputTypeError, match="x: expected an int, got"):
            scalar(v, "x", integer=True)
    for v in (True, np.bool_(False), np.array(True), jnp.array(True), "5", b"5", 1 + 2j,
              np.complex64(1), np.array([5]), jnp.ones((1,)), None, [5], object()):
        for integer in (True, False):
            with pytest.raises(gp.InputTypeError, match="x: expected an? (int|float), got"):
                scalar(v, "x", integer=integer)
    with pytest.raises(gp.InputTypeError, match="x: expected a float known outside jax.jit, "
                       "got a traced value"):
        jax.jit(lambda s: scalar(s, "x"))(1.0)
    assert scalar(10**400, "x") == np.inf          # the caller's range check refuses it


def test_the_api_follows_the_scalar_rule(lstm):
    """``probe(step=jnp.array(5))`` was refused while ``np.int64`` was accepted,
    ``margin=np.float32`` refused while ``horizon_tol=np.float32`` was accepted."""
    cell, params, xs, s0 = lstm
    base = gp.probe(cell, params, xs, step=5, grad_norm=2.0, growth_only=True)
    for step, norm in ((jnp.array(5), jnp.array(2.0)), (np.int64(5), np.float32(2.0))):
        got = gp.probe(cell, params, xs, step=step, grad_norm=norm, growth_only=True)
        assert (got.step, got.grad_norm) == (5, 2.0) and type(got.step) is int
        assert got.top_exponent == base.top_exponent
    for bad in (True, 5.0, "5"):
        with pytest.raises(gp.InputTypeError, match="step: expected an int, got"):
            gp.probe(cell, params, xs, step=bad)
    with pytest.raises(gp.InputError, match="grad_norm: expected None or a norm >= 0"):
        gp.probe(cell, params, xs, grad_norm=-1.0)
    ex = gp.explain(cell, params, xs, s0, margin=0.01, horizon_tol=1e-3)
    for margin, tol in ((np.float32(0.01), np.float32(1e-3)), (jnp.array(0.01), jnp.array(1e-3))):
        other = gp.explain(cell, params, xs, s0, margin=margin, horizon_tol=tol)
        assert other.margin == float(margin) and other.verdict == ex.verdict
    for name in ("margin", "horizon_tol"):
        with pytest.raises(gp.InputTypeError, match=f"{name}: expected .*got bool"):
            gp.explain(cell, params, xs, s0, **{name: True})
    driver = gp.classify(0.1, {"a": 0.2, "b": -0.3}, margin=np.float32(0.05))
    assert driver == gp.classify(0.1, {"a": 0.2, "b": -0.3}, margin=float(np.float32(0.05)))
    assert gp.ExplosionDetector(factor=np.float32(4.0), window=jnp.array(3)).window == 3


def test_checked_outside_jit_only_and_host_functions_refuse_tracers(lstm):
    """``jax.jit(gp.checked(f))`` cannot raise after the run: refused, naming the right
    nesting; functions that return host values refuse traced arguments, naming the fix."""
    cell, params, xs, s0 = lstm
    f = gp.checked(lambda p, x: gp.step_jacobians(cell, p, x, s0).matrix)
    with pytest.raises(gp.InputError, match=r"gp\.checked\(jax\.jit\(f\)\), not "
                                            r"jax\.jit\(gp\.checked\(f\)\)"):
        jax.jit(f)(params, xs)
    for name, fn in [("explain", lambda p, x: gp.explain(cell, p, x)),
                     ("growth_curves", lambda p, x: gp.growth_curves(cell, p, x)),
                     ("gate_saturation", lambda p, x: gp.gate_saturation(cell, p, x)),
                     ("input_events", lambda p, x: gp.input_events(x))]:
        with pytest.raises(gp.InputError, match=rf"gp\.{name}: expected concrete arrays, "
                                                r"got a traced (params|xs).*outside"):
            jax.jit(fn)(params, xs)
