"""Importers of trained weights, checked against stored framework outputs (no framework needed).

The fixtures in ``tests/fixtures`` were made by the ``generate_*.py`` scripts
there with the real frameworks; ``test_interop_live.py`` reruns those scripts
when a framework is installed.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections import namedtuple

import interop_cases as cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


I = gp.interop


def source(name: str) -> dict[str, np.ndarray]:
    return cases.source_of(cases.load(name))


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_forward_parity_with_stored_framework_outputs(name):
    """Every layer and direction: outputs h_t, final state; stacks fed layer by layer."""
    cases.check_fixture(name)


# Forward-parity fixtures of gradpaths' own cells against a reference package (no
# importer reads them; tests/test_slstm.py does).
CELL_FIXTURES = {"xlstm_slstm"}


def test_every_fixture_has_a_case_and_a_generator():
    stored = {p.stem for p in FIXTURES.glob("*.npz")}
    assert stored - CELL_FIXTURES == set(cases.CASES)
    for name in CELL_FIXTURES:
        assert (FIXTURES / f"generate_{name.split('_')[0]}.py").exists()
    for name in stored - CELL_FIXTURES:
        framework = name.split("_")[0]
        assert (FIXTURES / f"generate_{framework}.py").exists()
        arrays = cases.load(name)
        assert all(a.dtype == np.float64 for k, a in arrays.items() if k != "version")


@pytest.mark.parametrize("name", ["torch_lstm", "torch_gru", "torch_rnn_relu", "keras_lstm",
                                  "flax_linen_lstm", "haiku_lstm"])
def test_stacks_have_several_layers(name):
    """The multi-layer cases really feed layer k with layer k-1's outputs."""
    case = cases.CASES[name]
    assert case.layers == 2
    cell1, _ = case.importer(source(name), **case.kwargs(1, "forward"))
    cell0, _ = case.importer(source(name), **case.kwargs(0, "forward"))
    assert cell1.input_size == case.directions * cell0.hidden_size


@pytest.mark.parametrize("name", ["torch_lstmcell", "torch_grucell", "torch_rnncell"])
@pytest.mark.parametrize("method", ["analytic", "jacrev"])
def test_torch_step_jacobians_equal_torch_func_jacrev(name, method):
    arrays = cases.load(name)
    case = cases.CASES[name]
    cell, params = I.from_torch(cases.source_of(arrays))
    state0 = cases.state0_of(case, cell, arrays)
    J = gp.step_jacobians(cell, params, arrays["xs"], state0, method=method)
    assert J.matrix.shape == arrays["jac"].shape
    assert_close(J.matrix, arrays["jac"])


# --------------------------------------------------------------------------- what comes back


def test_params_are_gradpaths_namedtuples_of_jax_arrays():
    cell, params = I.from_torch(source("torch_lstm"), layer=1, direction="reverse")
    assert isinstance(cell, gp.LSTM) and (cell.input_size, cell.hidden_size) == (6, 3)
    assert isinstance(params, gp.LSTMParams) and params.p is None
    assert all(isinstance(a, jax.Array) and a.dtype == jnp.float64
               for a in jax.tree_util.tree_leaves(params))
    cell, params = I.from_torch(source("torch_gru"), layer=0)
    assert isinstance(cell, gp.GRU) and isinstance(params, gp.GRUParams)
    cell, params = I.from_torch(source("torch_gru"))           # the whole 2-layer module
    assert cell == gp.Stack([gp.GRU(2, 3), gp.GRU(3, 3)])
    assert isinstance(params, tuple) and all(isinstance(p, gp.GRUParams) for p in params)
    cell, params = I.from_torch(source("torch_rnn_relu"), nonlinearity="relu", layer=0)
    assert cell == gp.RNN(2, 3, "relu") and isinstance(params, gp.RNNParams)
    cell, params = I.from_torch(source("torch_lstm_nobias"))   # one layer: the cell itself
    assert cell == gp.LSTM(2, 3)
    cell, params = I.from_torch(source("torch_lstm_bidirectional"))
    assert cell == gp.Bidirectional(gp.LSTM(2, 3), gp.LSTM(2, 3)) and len(params) == 2


def test_dtype_follows_the_source_or_the_argument():
    weights = {k: v.astype(np.float32) for k, v in source("equinox_lstm").items()}
    _, params = I.from_equinox(weights)
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    _, params = I.from_equinox(weights, dtype=jnp.float64)
    assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float64")}
    with pytest.raises(TypeError, match="dtype"):
        I.from_equinox(weights, dtype=jnp.int32)


def test_float64_source_without_x64_gives_float32_quietly():
    with jax.enable_x64(False):
        _, params = I.from_torch(source("torch_lstmcell"))
        assert {a.dtype for a in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}


def test_biases_are_summed_where_the_framework_adds_them():
    w = source("torch_grucell")
    _, params = I.from_torch(w)
    b_ih, b_hh = w["bias_ih"], w["bias_hh"]
    assert_close(params.b.r, b_ih[:4] + b_hh[:4])
    assert_close(params.b.z, b_ih[4:8] + b_hh[4:8])
    assert_close(params.b.n, b_ih[8:])
    assert_close(params.b_hn, b_hh[8:])
    _, params = I.from_haiku(source("haiku_lstm"), prefix="lstm")
    b = source("haiku_lstm")["lstm/linear/b"]
    assert_close(params.b.f, b[6:9] + 1.0)  # gates i, g, f, o; forget bias +1
    assert_close(params.b.z, b[3:6])


def test_torch_without_bias_imports_zero_biases():
    _, params = I.from_torch(source("torch_lstm_nobias"))
    assert all(np.all(np.asarray(b) == 0) for b in params.b)


def test_the_source_is_not_modified():
    w = source("torch_lstm")
    before = dict(w)
    I.from_torch(w, layer=1)
    assert w.keys() == before.keys() and all(w[k] is before[k] for k in w)


# --------------------------------------------------------------------------- accepted forms


def test_an_open_npz_file_is_a_mapping(tmp_path):
    np.savez(tmp_path / "lstm.npz", **source("torch_lstmcell"))
    with np.load(tmp_path / "lstm.npz") as data:
        cell, params = I.from_torch(data)
    expected = I.from_torch(source("torch_lstmcell"))
    assert cell == expected[0]
    jax.tree_util.tree_map(assert_close, params, expected[1])


def test_torch_state_dict_of_a_larger_model_with_prefix():
    w = {f"encoder.rnn.{k}": v for k, v in source("torch_gru").items()}
    w["decoder.weight"] = np.ones((2, 3))
    _, params = I.from_torch(w, layer=1, prefix="encoder.rnn")
    _, expected = I.from_torch(source("torch_gru"), layer=1)
    jax.tree_util.tree_map(assert_close, params, expected)
    with pytest.raises(ValueError, match="decoder.weight"):
        I.from_torch(w)
    with pytest.raises(KeyError, match="no key starts with 'encoder.cnn."):
        I.from_torch(w, prefix="encoder.cnn")


def test_keras_get_weights_list_and_bare_names():
    arrays = cases.load("keras_bidirectional_lstm")
    w = cases.source_of(arrays)
    fw = [w[f"bi/forward_lstm/lstm_cell/{n}"] for n in ("kernel", "recurrent_kernel", "bias")]
    bw = [w[f"bi/backward_lstm/lstm_cell/{n}"] for n in ("kernel", "recurrent_kernel", "bias")]
    for direction, weights in (("forward", fw), ("reverse", bw)):
        _, expected = I.from_keras(w, prefix=cases._KERAS_BI[direction])
        _, params = I.from_keras(fw + bw, direction=direction)
        jax.tree_util.tree_map(assert_close, params, expected)
        _, params = I.from_keras(dict(zip(("kernel", "recurrent_kernel", "bias"), weights)))
        jax.tree_util.tree_map(assert_close, params, expected)


def test_flax_nested_flat_and_wrapped_variables_agree():
    flat = source("flax_linen_gru")  # keys "params/ir/kernel", ...
    _, expected = I.from_flax(flat)
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *heads, last = key.split("/")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    wrapped = {"params": {"RNN_0": {"cell": nested["params"]}}}
    for variables, kwargs in ((nested, {}), (nested["params"], {}),
                              (wrapped, {"prefix": "RNN_0"}),
                              (wrapped, {"prefix": "params/RNN_0"})):
        _, params = I.from_flax(variables, **kwargs)
        jax.tree_util.tree_map(assert_close, params, expected)


def test_haiku_finds_a_single_core_or_takes_the_linear_alone():
    w = source("haiku_lstm")
    one = {k: v for k, v in w.items() if k.startswith("lstm_1/")}
    _, expected = I.from_haiku(w, prefix="lstm_1")
    for params_in in (one, {"w": one["lstm_1/linear/w"], "b": one["lstm_1/linear/b"]},
                      {"model/~/" + k: v for k, v in one.items()}):
        _, params = I.from_haiku(params_in)
        jax.tree_util.tree_map(assert_close, params, expected)


def test_equinox_mapping_with_prefix():
    w = {f"cell/{k}": v for k, v in source("equinox_gru").items()}
    w["linear/weight"] = np.ones((2, 4))
    cell, _ = I.from_equinox(w, prefix="cell")
    assert cell == gp.GRU(3, 4)


# --------------------------------------------------------------------------- states


LSTMStateLike = namedtuple("LSTMStateLike", ["hidden", "cell"])  # Haiku's field names


@pytest.mark.parametrize("framework", I.FRAMEWORKS)
def test_state_order_round_trips(framework):
    cell = gp.LSTM(2, 3)
    h, c = np.arange(3.0), -np.arange(3.0) - 1
    pair = (c, h) if framework == "flax" else (h, c)
    state = I.state_from(framework, cell, pair)
    assert isinstance(state, gp.LSTMState)
    assert_close(state.c, c)
    assert_close(state.h, h)
    back = I.state_to(framework, cell, state)
    assert all(np.array_equal(a, b) for a, b in zip(back, pair))
    gru = gp.GRU(2, 3)
    assert isinstance(I.state_from(framework, gru, h), gp.GRUState)
    assert np.array_equal(I.state_to(framework, gru, gp.GRUState(jnp.asarray(h))), h)


def test_state_from_haiku_lstm_state_and_keras_list():
    cell = gp.LSTM(2, 3)
    h, c = np.ones(3), np.zeros(3)
    state = I.state_from("haiku", cell, LSTMStateLike(hidden=h, cell=c))
    assert_close(state.h, h)
    assert_close(state.c, c)
    state = I.state_from("keras", gp.RNN(2, 3), [h])
    assert isinstance(state, gp.RNNState)


def test_state_errors():
    cell = gp.LSTM(2, 3)
    with pytest.raises(ValueError, match="framework"):
        I.state_from("mxnet", cell, (np.ones(3), np.ones(3)))
    with pytest.raises(ValueError, match=r"state.h: expected shape \(3,\), got \(2, 3\).*"
                                         r"num_directions"):
        I.state_from("torch", cell, (np.ones((2, 3)), np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"expected a pair \(c, h\)"):
        I.state_from("flax", cell, np.ones(3))
    with pytest.raises(TypeError, match="cell"):
        I.state_from("torch", object(), np.ones(3))
    with pytest.raises(TypeError, match="LSTMState"):
        I.state_to("torch", cell, gp.GRUState(jnp.ones(3)))


# --------------------------------------------------------------------------- bad input


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def _with(mapping, key, value):
    return {**mapping, key: value}


def test_torch_bad_input():
    w = source("torch_lstm")
    with pytest.raises(KeyError, match=r"weight_hh_l1_reverse: missing"):
        I.from_torch(_without(w, "weight_hh_l1_reverse"))
    with pytest.raises(ValueError, match=r"bias_hh_l0: missing"):
        I.from_torch({k: v for k, v in w.items() if not k.startswith("bias_hh")})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weight_xx_l0'\]"):
        I.from_torch(_with(w, "weight_xx_l0", np.ones(3)))
    with pytest.raises(ValueError, match=r"weight_ih_l1: expected shape \(12, 6\)"):
        I.from_torch(_with(w, "weight_ih_l1", np.ones((12, 5))))
    with pytest.raises(ValueError, match=r"bias_ih_l0: expected shape \(12,\)"):
        I.from_torch(_with(w, "bias_ih_l0", np.ones(13)))
    with pytest.raises(ValueError, match=r"weight_hh_l0: shape \(10, 3\) is no known layout"):
        I.from_torch({k: (np.ones((10, 3)) if k.startswith("weight_hh") else v)
                      for k, v in w.items()})
    with pytest.raises(ValueError, match=r"layer: expected 0..1 .* got 2"):
        I.from_torch(w, layer=2)
    with pytest.raises(ValueError, match="direction='reverse'.*not bidirectional"):
        I.from_torch(source("torch_gru"), direction="reverse")
    with pytest.raises(ValueError, match="direction"):
        I.from_torch(w, direction="backward")
    with pytest.raises(KeyError, match="layer 1"):
        I.from_torch({k.replace("_l1", "_l2"): v for k, v in source("torch_gru").items()})
    with pytest.raises(ValueError, match="single cell"):
        I.from_torch(source("torch_lstmcell"), layer=1)
    with pytest.raises(ValueError, match="nonlinearity: applies to an RNN only"):
        I.from_torch(w, nonlinearity="relu")
    with pytest.raises(ValueError, match="nonlinearity"):
        I.from_torch(source("torch_rnncell"), nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"proj_size > 0 is not supported.*weight_hr_l0"):
        I.from_torch(_with(w, "weight_hr_l0", np.ones((2, 3))))
    with pytest.raises(ValueError, match="mixes cell keys"):
        I.from_torch({**source("torch_lstmcell"), **w})
    with pytest.raises(ValueError, match="weight_ih_l0: expected a floating array"):
        I.from_torch(_with(w, "weight_ih_l0", np.ones((12, 2), np.int64)))
    with pytest.raises(gp.NonFiniteError, match="bias_hh_l0"):
        I.from_torch(_with(w, "bias_hh_l0", np.full(12, np.nan)))
    with pytest.raises(TypeError, match="state dict"):
        I.from_torch([np.ones(3)])


def test_keras_reset_after_false_reads_the_bias_shape():
    w = source("keras_gru_reset_before")
    cell, params = I.from_keras(w)
    assert cell == gp.GRU(3, 4, reset_after=False)
    assert I.from_keras(w, reset_after=False)[0] == cell
    assert np.all(np.asarray(params.b_hn) == 0)
    bias = w["gru/gru_cell/bias"]
    assert_close(params.b.z, bias[:4])
    assert_close(params.b.r, bias[4:8])
    assert_close(params.b.n, bias[8:])
    nobias = {key: v for key, v in w.items() if not key.endswith("bias")}
    assert I.from_keras(nobias, reset_after=False)[0] == cell
    assert I.from_keras(nobias)[0] == gp.GRU(3, 4)


def test_keras_bad_input():
    w = source("keras_gru")
    k = "gru/gru_cell/"
    with pytest.raises(ValueError, match="recurrent_activation 'hard_sigmoid' is not supported"):
        I.from_keras(w, recurrent_activation="hard_sigmoid")
    with pytest.raises(ValueError, match="activation 'relu' is not supported for a Keras GRU"):
        I.from_keras(w, activation="relu")
    with pytest.raises(ValueError, match=r"bias: expected shape \(12,\) \(3\*H,\) \(reset_after"):
        I.from_keras(w, reset_after=False)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 12\)"):
        I.from_keras(source("keras_gru_reset_before"), reset_after=True)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 12\)"):
        I.from_keras(_with(w, k + "bias", np.ones((3, 12))))
    with pytest.raises(ValueError, match="reset_after: applies to a GRU only"):
        I.from_keras(source("keras_lstm"), prefix="lstm0", reset_after=True)
    with pytest.raises(ValueError, match="a SimpleRNN has neither"):
        I.from_keras(source("keras_simplernn_relu"), activation="relu", reset_after=True)
    with pytest.raises(KeyError, match=r"gru/gru_cell/recurrent_kernel: missing"):
        I.from_keras(_without(w, k + "recurrent_kernel"))
    with pytest.raises(ValueError, match=r"unknown key 'gru/gru_cell/gamma'"):
        I.from_keras(_with(w, k + "gamma", np.ones(3)))
    with pytest.raises(ValueError, match=r"kernel: expected shape \(3, 12\)"):
        I.from_keras(_with(w, k + "kernel", np.ones((3, 8))))
    with pytest.raises(ValueError, match=r"recurrent_kernel: shape \(4, 10\) is no known layout"):
        I.from_keras(_with(w, k + "recurrent_kernel", np.ones((4, 10))))
    with pytest.raises(ValueError, match=r"several layers \['lstm0/lstm_cell', "
                                         r"'lstm1/lstm_cell'\]; pass prefix"):
        I.from_keras(source("keras_lstm"))
    with pytest.raises(ValueError, match="for a mapping pick the layer with prefix"):
        I.from_keras(w, direction="reverse")
    with pytest.raises(ValueError, match="a list of 5"):
        I.from_keras([np.ones((3, 12))] * 5)
    with pytest.raises(ValueError, match="a list of 3 arrays is one direction"):
        I.from_keras(list(w.values()), direction="reverse")
    with pytest.raises(ValueError, match="relu"):
        I.from_keras(source("keras_simplernn_relu"), activation="sigmoid")


def test_flax_bad_input():
    w = source("flax_linen_lstm")
    with pytest.raises(ValueError, match="match no Flax cell.*prefix"):
        I.from_flax(w)
    w = {k[len("params/lstm0/"):]: v for k, v in w.items() if k.startswith("params/lstm0/")}
    with pytest.raises(KeyError, match=r"hf/bias: missing; expected an array of shape \(3,\)"):
        I.from_flax(_without(w, "hf/bias"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['ii/bias'\]"):
        I.from_flax(_with(w, "ii/bias", np.ones(3)))
    with pytest.raises(ValueError, match=r"hg/kernel: expected shape \(3, 3\)"):
        I.from_flax(_with(w, "hg/kernel", np.ones((3, 4))))
    with pytest.raises(ValueError, match=r"dense_h/kernel: shape \(4, 8\) is no known layout"):
        I.from_flax({"dense_i": {"kernel": np.ones((3, 8))},
                     "dense_h": {"kernel": np.ones((4, 8))}})
    with pytest.raises(KeyError, match="no key starts with 'lstm9/'"):
        I.from_flax(source("flax_linen_lstm"), prefix="lstm9")
    with pytest.raises(TypeError, match="variables"):
        I.from_flax(np.ones(3))


def test_equinox_bad_input():
    w = source("equinox_gru")
    with pytest.raises(KeyError, match="bias_n: missing"):
        I.from_equinox(_without(w, "bias_n"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bias_n'\].*GRUCell"):
        I.from_equinox({**source("equinox_lstm"), "bias_n": np.ones(4)})
    with pytest.raises(ValueError, match=r"weight_hh: shape \(4, 4\) is no known layout"):
        I.from_equinox({"weight_ih": np.ones((4, 3)), "weight_hh": np.ones((4, 4))})
    with pytest.raises(ValueError, match=r"bias: expected shape \(12,\)"):
        I.from_equinox(_with(w, "bias", np.ones(4)))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['linear/weight'\].*prefix"):
        I.from_equinox(_with(w, "linear/weight", np.ones(4)))


def test_haiku_bad_input():
    w = source("haiku_lstm")
    with pytest.raises(ValueError, match=r"pass prefix= one of \['lstm', 'lstm_1'\]"):
        I.from_haiku(w)
    with pytest.raises(ValueError, match="hk.GRU is not supported"):
        I.from_haiku({"gru": {"w_i": np.ones((2, 9)), "w_h": np.ones((3, 9)), "b": np.ones(9)}})
    with pytest.raises(ValueError, match=r"lstm/linear/w: expected shape \(input \+ H, 4\*H\)"):
        I.from_haiku({"lstm/linear/w": np.ones((5, 10)), "lstm/linear/b": np.ones(10)})
    with pytest.raises(KeyError, match=r"lstm/linear/b: missing"):
        I.from_haiku({"lstm/linear/w": np.ones((5, 12))})
    with pytest.raises(ValueError, match=r"linear_1/w: expected shape \(3, 3\)"):
        I.from_haiku({**source("haiku_vanilla_rnn"), "vanilla_rnn/linear_1/w": np.ones((2, 3))})


# --------------------------------------------------------------------------- hygiene


def test_importing_gradpaths_imports_no_framework():
    code = ("import sys, gradpaths; "
            "print(sorted(m for m in ('torch', 'keras', 'flax', 'equinox', 'haiku') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
