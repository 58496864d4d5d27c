"""Live parity: the fixture generators rerun against the installed frameworks.

Each framework's tests skip when it is not installed (CI installs none; the
stored fixtures in ``test_interop.py`` cover it there). The same builders that
made the fixtures run here, and the importers are fed both the plain arrays and
the framework's own objects.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import interop_cases as cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
I = gp.interop


def _load_module(path: pathlib.Path):
    name = f"_gradpaths_tests_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]




def _names(framework: str) -> list[str]:
    return sorted(n for n, c in cases.CASES.items() if c.framework == framework)


def _live(gen, name: str, via_objects: bool = True) -> None:
    """Parity from the live arrays, and from the live objects where there are some."""
    with framework_code():
        arrays, objects = gen.CASES[name]()
    case = cases.CASES[name]
    cases.check_fixture(name, arrays)
    if via_objects and objects:
        def import_layer(k, d):
            obj, kwargs = objects[(k, d)]
            return case.importer(obj, **kwargs)

        cases.check(case, arrays, import_layer)


def framework_code():
    """The frameworks broadcast by rank promotion, which conftest makes raise for gradpaths."""
    return jax.numpy_rank_promotion("allow")


def _same(a, b) -> None:
    assert a[0] == b[0]
    jax.tree_util.tree_map(assert_close, a[1], b[1])


# --------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch_gen():
    pytest.importorskip("torch")
    return _load_module(FIXTURES / "generate_torch.py")


@pytest.mark.parametrize("name", _names("torch"))
def test_torch_live_parity(torch_gen, name):
    _live(torch_gen, name)


@pytest.mark.parametrize("name", ["torch_lstmcell", "torch_grucell", "torch_rnncell"])
def test_torch_live_jacobians_equal_jacrev(torch_gen, name):
    arrays, objects = torch_gen.CASES[name]()
    cell, params = I.from_torch(objects[(0, "forward")][0])
    state0 = cases.state0_of(cases.CASES[name], cell, arrays)
    J = gp.step_jacobians(cell, params, arrays["xs"], state0)
    assert_close(J.matrix, arrays["jac"])


def test_torch_live_modules(torch_gen):
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2)  # float32
    cell, params = I.from_torch(lstm, layer=1)
    assert cell == gp.LSTM(4, 4)
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    _same((cell, params), I.from_torch(lstm.state_dict(), layer=1))  # tensors in a mapping

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.GRU(3, 4)
            self.head = torch.nn.Linear(4, 1)

    model = Model()
    _same(I.from_torch(model, prefix="encoder"), I.from_torch(model.encoder))
    _same(I.from_torch(model.state_dict(), prefix="encoder"), I.from_torch(model.encoder))
    with pytest.raises(ValueError, match="expected torch.nn.LSTM, GRU, RNN"):
        I.from_torch(model)
    with pytest.raises(KeyError, match="no such submodule"):
        I.from_torch(model, prefix="decoder")
    with pytest.raises(ValueError, match="proj_size > 0 is not supported"):
        I.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="proj_size > 0 is not supported.*weight_hr_l0"):
        I.from_torch(torch.nn.LSTM(3, 4, proj_size=2).state_dict())
    relu = torch.nn.RNN(3, 4, nonlinearity="relu")
    assert I.from_torch(relu)[0].nonlinearity == "relu"
    with pytest.raises(ValueError, match="the module uses 'relu', got 'tanh'"):
        I.from_torch(relu, nonlinearity="tanh")
    no_bias = torch.nn.GRUCell(3, 4, bias=False)
    _, params = I.from_torch(no_bias)
    assert all(np.all(np.asarray(b) == 0) for b in (*params.b, params.b_hn))


def test_torch_live_whole_modules(torch_gen):
    """A module imported whole: a Stack (num_layers > 1) or a Bidirectional, with the
    module's own output at every step."""
    import torch

    torch.manual_seed(1)
    xs = np.random.default_rng(1).standard_normal((5, 3))
    for module in (torch.nn.GRU(3, 4, num_layers=3, dtype=torch.float64),
                   torch.nn.LSTM(3, 2, bidirectional=True, dtype=torch.float64)):
        with torch.no_grad():
            out = module(torch.tensor(xs))[0].numpy()
        model, params = I.from_torch(module)
        if module.bidirectional:
            assert isinstance(model, gp.Bidirectional)
            assert_close(model.outputs(params, xs), out)
        else:
            assert model == gp.Stack([gp.GRU(3, 4), gp.GRU(4, 4), gp.GRU(4, 4)])
            assert_close(gp.unroll(model, params, xs).h[1:], out)


# --------------------------------------------------------------------------- keras


@pytest.fixture(scope="module")
def keras_gen():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    pytest.importorskip("keras")
    gen = _load_module(FIXTURES / "generate_keras.py")
    saved = gen.float64()
    yield gen
    gen.restore(saved)


@pytest.mark.parametrize("name", _names("keras"))
def test_keras_live_parity(keras_gen, name):
    _live(keras_gen, name)


def test_keras_live_sequential_is_a_stack_and_bidirectional_both_directions(keras_gen):
    import keras

    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 3))
    with framework_code():
        model = keras.Sequential([keras.Input((None, 3)),
                                  keras.layers.LSTM(4, return_sequences=True),
                                  keras.layers.GRU(2, return_sequences=True),
                                  keras.layers.Dense(1)])
        out = np.asarray(model.layers[1](model.layers[0](xs[None])))[0]
        bi = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))
        bi_out = np.asarray(bi(xs[None]))[0]
        repeat = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4),
                                   keras.layers.RepeatVector(5), keras.layers.LSTM(2)])
    stack, params = I.from_keras(model)
    assert stack == gp.Stack([gp.LSTM(3, 4), gp.GRU(4, 2)])
    assert_close(gp.unroll(stack, params, xs).h[1:], out)
    model_bi, params_bi = I.from_keras(bi)
    assert isinstance(model_bi, gp.Bidirectional)
    assert_close(model_bi.outputs(params_bi, xs), bi_out)
    with pytest.raises(ValueError, match="RepeatVector .* sits between recurrent layers"):
        I.from_keras(repeat)


def test_keras_live_layers(keras_gen):
    import keras

    zeros = {"kernel_initializer": "zeros", "recurrent_initializer": "zeros"}

    def built(layer, m=3):  # (zeros initializers: the weights do not matter here)
        with framework_code():
            layer.build((None, None, m))
        return layer

    hard = built(keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", **zeros))
    with pytest.raises(ValueError, match="recurrent_activation 'hard_sigmoid' is not supported"):
        I.from_keras(hard)
    with pytest.raises(ValueError, match="the layer uses 'hard_sigmoid', got 'sigmoid'"):
        I.from_keras(hard, recurrent_activation="sigmoid")
    before = gp.GRU(3, 4, reset_after=False)
    assert I.from_keras(built(keras.layers.GRU(4, reset_after=False, **zeros)))[0] == before
    assert I.from_keras(built(keras.layers.GRU(4, reset_after=False, use_bias=False,
                                               **zeros)))[0] == before
    with pytest.raises(ValueError, match="reset_after: the layer uses False, got True"):
        I.from_keras(built(keras.layers.GRU(4, reset_after=False, **zeros)), reset_after=True)
    with pytest.raises(ValueError, match="'linear' is not supported for a Keras SimpleRNN"):
        I.from_keras(built(keras.layers.SimpleRNN(4, activation=None, **zeros)))
    with pytest.raises(ValueError, match="not built"):
        I.from_keras(keras.layers.LSTM(4, **zeros))
    with pytest.raises(ValueError, match="only a Bidirectional layer"):
        I.from_keras(built(keras.layers.LSTM(4, **zeros)), direction="reverse")
    with pytest.raises(ValueError, match="expected a Keras LSTM, GRU, SimpleRNN"):
        I.from_keras(built(keras.layers.Dense(4)))
    cell = keras.layers.GRUCell(4, **zeros)
    with framework_code():
        cell.build((None, 3))
    layer = built(keras.layers.GRU(4, use_bias=False, **zeros))
    assert I.from_keras(cell)[0] == gp.GRU(3, 4)
    _, params = I.from_keras(layer)
    assert all(np.all(np.asarray(b) == 0) for b in (*params.b, params.b_hn))


# --------------------------------------------------------------------------- flax


@pytest.fixture(scope="module")
def flax_gen():
    pytest.importorskip("flax")
    return _load_module(FIXTURES / "generate_flax.py")


@pytest.mark.parametrize("name", _names("flax"))
def test_flax_live_parity(flax_gen, name):
    _live(flax_gen, name)


def test_flax_live_modules(flax_gen):
    import flax.linen as nn
    from flax import nnx

    variables = cases.source_of(cases.load("flax_linen_lstm"))
    with pytest.raises(ValueError, match="gate_fn 'hard_sigmoid' is not supported"):
        I.from_flax(variables, prefix="lstm0", module=nn.LSTMCell(3, gate_fn=jax.nn.hard_sigmoid))
    with pytest.raises(ValueError, match="GRUCell does not match variables laid out as a LSTM"):
        I.from_flax(variables, prefix="lstm0", module=nn.GRUCell(3))
    with pytest.raises(ValueError, match="expected a Flax LSTMCell"):
        I.from_flax(variables, prefix="lstm0", module=nn.Dense(3))
    # a residual SimpleCell: h' = tanh(W x + b + R h + h), imported as R + I
    normal = nnx.initializers.normal(0.5)
    cell = nnx.SimpleCell(2, 3, residual=True, rngs=nnx.Rngs(1), param_dtype=jnp.float64,
                          dtype=jnp.float64, kernel_init=normal, recurrent_kernel_init=normal)
    xs = np.random.default_rng(0).standard_normal((5, 2))
    h, outs = jnp.zeros(3), []
    with framework_code():
        for x in xs:
            h, y = cell(h, jnp.asarray(x))
            outs.append(y)
    gp_cell, params = I.from_flax(cell)
    assert_close(gp.unroll(gp_cell, params, xs).h[1:], np.stack(outs))
    zeros = nnx.initializers.zeros
    rnn = nnx.RNN(nnx.GRUCell(2, 3, rngs=nnx.Rngs(2), kernel_init=zeros,
                              recurrent_kernel_init=zeros))
    assert I.from_flax(rnn)[0] == gp.GRU(2, 3)
    with pytest.raises(ValueError, match="pass an NNX cell as the first argument only"):
        I.from_flax(rnn, module=nn.GRUCell(3))


# --------------------------------------------------------------------------- equinox


@pytest.fixture(scope="module")
def equinox_gen():
    pytest.importorskip("equinox")
    return _load_module(FIXTURES / "generate_equinox.py")


@pytest.mark.parametrize("name", _names("equinox"))
def test_equinox_live_parity(equinox_gen, name):
    _live(equinox_gen, name)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_equinox_live_without_bias(equinox_gen, kind):
    import equinox as eqx

    cell = getattr(eqx.nn, kind)(2, 3, use_bias=False, key=jax.random.key(0),
                                 dtype=jnp.float64)
    xs = np.random.default_rng(0).standard_normal((5, 2))
    start = (jnp.zeros(3), jnp.zeros(3)) if kind == "LSTMCell" else jnp.zeros(3)
    with framework_code():
        _, outs = equinox_gen._unroll(cell, xs, start)
    gp_cell, params = I.from_equinox(cell)
    assert_close(gp.unroll(gp_cell, params, xs).h[1:], outs)


# --------------------------------------------------------------------------- haiku


@pytest.fixture(scope="module")
def haiku_gen():
    pytest.importorskip("haiku")
    return _load_module(FIXTURES / "generate_haiku.py")


@pytest.mark.parametrize("name", _names("haiku"))
def test_haiku_live_parity(haiku_gen, name):
    _live(haiku_gen, name, via_objects=False)  # Haiku keeps weights in params only
