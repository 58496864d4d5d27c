"""The state vector: a state pytree raveled field by field (LSTM: s = [c; h])."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradpaths as gp
from gradpaths._state import layout_of


def test_lstm_state_is_c_then_h():
    state = gp.LSTMState(jnp.arange(3.0), 10 + jnp.arange(3.0))
    layout = layout_of(state)
    assert layout.names == ("c", "h") and layout.sizes == (3, 3) and layout.size == 6
    np.testing.assert_array_equal(layout.ravel(state), [0, 1, 2, 10, 11, 12])
    assert layout.slice("h") == slice(3, 6)
    back = layout.unravel(layout.ravel(state))
    assert isinstance(back, gp.LSTMState)
    np.testing.assert_array_equal(back.h, state.h)


def test_nested_pytrees_are_named_by_path_and_round_trip():
    state = {"a": jnp.ones((2, 2)), "b": (jnp.zeros(3), jnp.full((1,), 5.0))}
    layout = layout_of(state)
    assert layout.names == ("a", "b.0", "b.1") and layout.shapes == ((2, 2), (3,), (1,))
    s = jnp.arange(8.0)
    back = layout.unravel(s)
    assert back["a"].shape == (2, 2)
    np.testing.assert_array_equal(layout.ravel(back), s)
    assert hash(layout) == hash(layout_of(jax.eval_shape(lambda: state)))   # static data


def test_bad_states():
    with pytest.raises(ValueError, match="at least one array"):
        layout_of(())
    with pytest.raises(ValueError, match=r"state field: expected one of \('c', 'h'\), got 'x'"):
        layout_of(gp.LSTMState(jnp.zeros(2), jnp.zeros(2))).slice("x")
