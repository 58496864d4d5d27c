"""Stacks: a multi-layer network analysed as one cell (gradpaths/_stack.py)."""

import dataclasses
import functools
import json
from typing import NamedTuple

import interop_cases as cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import HORIZON_ATOL, assert_close, finite_horizon

import gradpaths as gp
from gradpaths import _operator, _protocols
from gradpaths._products import orthonormal_start
from gradpaths._state import layout_of


def _stack(kinds=("lstm", "gru"), sizes=(3, 4, 3), gain=1.5):
    """A stack of the given layer kinds (m = sizes[0], layer k has n = sizes[k])."""
    make = {"lstm": gp.LSTM, "gru": gp.GRU, "rnn": gp.RNN}
    return gp.Stack([make[k](sizes[i], sizes[i + 1]) for i, k in enumerate(kinds)])


def _setup(kinds=("lstm", "gru"), sizes=(3, 4, 3), T=5, seed=0):
    stack = _stack(kinds, sizes)
    params = stack.init(jax.random.key(seed), recurrent_gain=1.5, input_gain=1.5)
    xs = jax.random.normal(jax.random.key(seed + 1), (T, sizes[0]))
    keys = jax.random.split(jax.random.key(seed + 2), 8)
    state0 = gp.StackState(
        jax.tree_util.tree_map(lambda a, k=k: 0.5 * jax.random.normal(k, a.shape, a.dtype),
                               cell.initial_state())
        for cell, k in zip(stack.layers, keys))
    return stack, params, xs, state0


def _layer_inputs(stack, params, xs, state0):
    """Each layer's input sequence, from running the layers one after another."""
    inputs, states = [xs], []
    for cell, p, s0 in zip(stack.layers, params, state0):
        traj = gp.unroll(cell, p, inputs[-1], s0)
        states.append(traj)
        inputs.append(traj.h[1:])
    return inputs, states


ROWS = [slice(0, 8), slice(8, 11), slice(11, 13)]     # the layers' rows in s = [c1; h1; h2; h3]


@pytest.fixture(scope="module")
def three():
    """A 3-layer LSTM / GRU / RNN stack, its trajectory, each layer's own inputs and J."""
    stack, params, xs, state0 = _setup(("lstm", "gru", "rnn"), (3, 4, 3, 2), T=4)
    inputs, states = _layer_inputs(stack, params, xs, state0)
    J = gp.step_jacobians(stack, params, xs, state0)
    return stack, params, xs, state0, inputs, states, J


def test_layout_and_forward_are_the_layers_in_order(three):
    stack, params, xs, state0, _, alone, _ = three
    states = gp.unroll(stack, params, xs, state0)
    assert layout_of(state0).names == ("1:c", "1:h", "2:h", "3:h")
    assert isinstance(states, gp.StackState) and stack.routes == (
        "1:carousel", "1:z", "1:i", "1:f", "1:o", "1>2",
        "2:carousel", "2:r", "2:z", "2:n", "2>3", "3:R")
    for got, want in zip(states, alone):
        for a, b in zip(got, want):
            assert_close(a, b)
    assert_close(states.h, alone[-1].h)


def test_jacobian_is_block_lower_triangular_and_methods_agree(three):
    stack, params, xs, state0, _, _, J = three
    for method in ("jacfwd", "jacrev"):
        assert_close(gp.step_jacobians(stack, params, xs, state0, method=method).matrix,
                     J.matrix, err_msg=method)
    blocks = [("1:c", "1:h"), ("2:h",), ("3:h",)]
    for k, rows in enumerate(blocks):
        for j, cols in enumerate(blocks):
            block = np.concatenate([np.concatenate([J.block(a, b) for b in cols], axis=2)
                                    for a in rows], axis=1)
            if j > k:
                assert np.all(block == 0), (k, j)        # exactly zero above the layer diagonal
            else:
                assert np.abs(block).max() > 1e-3, (k, j)


def test_off_diagonal_blocks_are_products_through_the_layers(three):
    """J^{kj} = B_k H_{k-1} J^{k-1, j}, with B_k = dF_k/dx by jacfwd of layer k alone."""
    stack, params, xs, _, inputs, states, J = three
    h_rows = [slice(4, 8), slice(8, 11)]
    for k in (1, 2):
        cell, p = stack.layers[k], params[k]
        lay = layout_of(cell.initial_state())

        def input_jacobian(s, x, cell=cell, p=p, lay=lay):
            return jax.jacfwd(lambda u: lay.ravel(cell.step(p, s, u)))(x)

        prev = jax.tree_util.tree_map(lambda a: a[:-1], states[k])
        B = jax.jit(jax.vmap(input_jacobian))(prev, inputs[k])
        below = J.matrix[:, h_rows[k - 1], :ROWS[k].start]
        assert_close(J.matrix[:, ROWS[k], :ROWS[k].start], B @ below, err_msg=f"layer {k + 1}")


def test_one_step_matches_finite_differences():
    stack, params, xs, state0 = _setup(T=1)
    lay = layout_of(state0)
    s = lay.ravel(state0)

    @jax.jit
    def fd(s):
        f = jax.vmap(lambda v: lay.ravel(stack.step(params, lay.unravel(v), xs[0])))
        E = eps * jnp.eye(lay.size)
        return ((f(s[None] + E) - f(s[None] - E)) / (2 * eps)).T

    eps = 1e-6
    fd = fd(s)
    J = gp.step_jacobians(stack, params, xs, state0).matrix[0]
    np.testing.assert_allclose(J, fd, atol=1e-8)   # central differences: O(eps^2) + round-off/eps


def test_routes_sum_to_the_jacobian_and_sit_in_their_blocks(three):
    stack, params, xs, state0, inputs, states, J = three
    J, rows = J.matrix, ROWS
    routes = gp.route_jacobians(stack, params, xs, state0)
    auto = gp.route_jacobians(stack, params, xs, state0, method="jacrev")
    assert tuple(routes) == stack.routes
    assert_close(sum(R.matrix for R in routes.values()), J)
    own_routes = [gp.route_jacobians(cell, p, u, jax.tree_util.tree_map(lambda a: a[0], traj))
                  for cell, p, u, traj in zip(stack.layers, params, inputs, states)]
    for name, R in routes.items():
        assert_close(auto[name].matrix, R.matrix, err_msg=name)
        mask = np.zeros(J.shape[1:], bool)
        if ">" in name:       # block row k, left of the diagonal: all of it
            k = int(name.split(">")[1]) - 1
            mask[rows[k], :rows[k].start] = True
            assert_close(R.matrix[:, mask], J[:, mask], err_msg=name)
        else:                 # the layer's own route, on its diagonal block
            k, r = int(name.split(":")[0]) - 1, name.split(":")[1]
            mask[rows[k], rows[k]] = True
            assert_close(R.matrix[:, rows[k], rows[k]], own_routes[k][r].matrix, err_msg=name)
        assert np.all(R.matrix[:, ~mask] == 0), name


def test_operator_matrix_free_agrees_with_matrices(three):
    """apply/apply_T (one spec, many specs) of the closed form, with the inter-layer
    routes' matrix-free edge, against its matrices and against autodiff."""
    stack, params, xs, state0 = three[:4]
    lay = layout_of(state0)
    specs = [_operator.Spec(*s) for s in (
        (None, None), (("1>2",), None), (("2>3", "1:o"), None), (("1>2", "2>3"), None),
        (("1:z", "1>2"), ("2:h", "2:h")), (None, ("1:c", "1:c")))]
    V = jax.random.normal(jax.random.key(7), (lay.size, len(specs)))

    @jax.jit
    def run(V):
        out = {}
        for backend in ("analytic", "jacfwd"):
            at = _operator.step_operator(stack, params, lay, specs, backend).at(state0, xs[0])
            out[backend] = (at.apply_many(specs, V), at.apply_T_many(specs, V),
                            [at.matrix(s) for s in specs])
            if backend == "analytic":
                out["apply"] = [(at.apply(s, V[:at.matrix(s).shape[0], :2]),
                                 at.apply_T(s, V[:at.matrix(s).shape[0], :2])) for s in specs]
        return out

    out = run(V)
    closed, auto = out["analytic"], out["jacfwd"]
    assert_close(closed[0], auto[0])
    assert_close(closed[1], auto[1])
    for spec, M, M_auto, (JV, JTV) in zip(specs, closed[2], auto[2], out["apply"]):
        assert_close(M, M_auto, err_msg=str(spec))
        v = V[:M.shape[0], :2]
        assert_close(JV, M @ v, err_msg=str(spec))
        assert_close(JTV, M.T @ v, err_msg=str(spec))


def test_spectrum_of_a_product_is_the_union_of_the_layers_own(three):
    """Block-triangular steps: eig(J_{T-1} ... J_0) = the union over layers of the eig of
    the product of the diagonal blocks (each layer's own Jacobians, which the routes test
    checks against the layer run alone)."""
    J = np.asarray(three[-1].matrix)
    P = np.linalg.multi_dot(list(J[::-1]))
    own = [np.linalg.eigvals(np.linalg.multi_dot(list(J[::-1, r, r]))) for r in ROWS]
    got, want = np.linalg.eigvals(P), np.concatenate(own)
    assert np.abs(got).max() > 1e-2

    def ordered(z):
        z = np.array(sorted(z, key=lambda v: (round(abs(v), 6), round(v.imag, 6))))
        return np.concatenate([z.real, z.imag])

    # eigenvalues of a non-normal product: round-off times its condition number
    assert_close(ordered(got), ordered(want))


def test_lyapunov_exponents_of_linear_layers_are_the_union_of_the_layers():
    """ReLU layers with positive pre-activations are linear: J = [[R_1, 0], [W_2 R_1, R_2]]
    every step, whose exponents are log|eig R_1| with log|eig R_2|."""
    stack = gp.Stack([gp.RNN(2, 2, "relu"), gp.RNN(2, 3, "relu")])
    d1, d2 = np.array([0.9, 0.4]), np.array([0.7, 0.55, 0.2])
    params = (gp.RNNParams(jnp.full((2, 2), 0.3), jnp.diag(d1), jnp.ones(2)),
              gp.RNNParams(jnp.full((3, 2), 0.2), jnp.diag(d2), jnp.ones(3)))
    xs = jnp.abs(jax.random.normal(jax.random.key(0), (260, 2)))
    lam = gp.lyapunov_exponents(stack, params, xs)
    expected = np.sort(np.log(np.concatenate([d1, d2])))[::-1]
    # the volume (k = d: mean log |det J|) is exact; each exponent carries the random
    # start frame's transient (the window restarts the frame: a warm-up cannot align it)
    assert_close(np.sum(lam), np.sum(expected))
    assert_close(lam, expected, bias=finite_horizon(260))


def test_inter_layer_route_alone_is_nilpotent():
    """A strictly lower block-triangular step: any L of them multiply to exactly zero."""
    stack, params, xs, state0 = _setup(T=4)
    curve = gp.growth_curve(stack, params, xs, state0, routes={"1>2"})
    assert np.isfinite(curve[0]) and np.all(curve[1:] == -np.inf)


def test_analyses_take_a_stack():
    stack, params, xs, state0 = _setup(T=8)
    # matrix-free (jvp) exponents without warm-up = log |diag R| / T of the QR of the
    # product applied to the same orthonormal start
    lam = gp.lyapunov_exponents(stack, params, xs, state0, k=2)
    J = gp.step_jacobians(stack, params, xs, state0).matrix
    P = np.linalg.multi_dot(list(np.asarray(J)[::-1]))
    R = np.linalg.qr(P @ np.asarray(orthonormal_start(0, J.shape[1], 2, J.dtype)))[1]
    assert_close(lam, np.sort(np.log(np.abs(np.diag(R))) / xs.shape[0])[::-1])
    counts = gp.route_use_counts(stack, params, xs, state0, route="1>2")
    total = np.asarray(counts.coefficients).sum(axis=0) * np.exp(float(counts.log_scale))
    assert_close(total, np.linalg.multi_dot(list(np.asarray(J)[::-1])))
    assert np.all(counts.log_norms[2:] == -np.inf)   # the nilpotent route is used at most once
    model = gp.Model(stack, 2)
    mp = model.init(jax.random.key(3))
    mp = mp._replace(cell=params)
    targets = jax.random.normal(jax.random.key(4), (8, 2))
    auto = gp.state_gradients(model, mp, xs, targets, state0, weights="all")
    closed = gp.state_gradients(model, mp, xs, targets, state0, weights="all",
                                method="jacobians")
    assert_close(closed.g, auto.g)
    assert_close(auto.field("2:h")[-1], auto.direct[-1][layout_of(state0).slice("2:h")])


def test_float32_stack():
    stack = _stack()
    params = stack.init(jax.random.key(0), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (4, 3), jnp.float32)
    state0 = stack.initial_state(jnp.float32)
    J = gp.step_jacobians(stack, params, xs, state0)
    assert J.matrix.dtype == jnp.float32
    assert_close(gp.step_jacobians(stack, params, xs, state0, method="jacrev").matrix, J.matrix)


def test_bad_stacks_raise_clear_errors():
    with pytest.raises(ValueError, match=r"layers\[1\]: expected input_size 4"):
        gp.Stack([gp.LSTM(3, 4), gp.GRU(5, 2)])
    with pytest.raises(ValueError, match="at least one cell"):
        gp.Stack([])
    with pytest.raises(TypeError, match=r"layers\[0\]: expected a cell"):
        gp.Stack([object()])
    with pytest.raises(TypeError, match="list or tuple"):
        gp.Stack(gp.LSTM(3, 4))
    stack = _stack()
    with pytest.raises(ValueError, match=r"layer: expected an int in 1\.\.2, got 3"):
        stack.layer(3)
    assert stack.layer(2) is stack.layers[1]
    params = stack.init(jax.random.key(0))
    with pytest.raises(ValueError, match="expected 2 layers' params, got 1"):
        gp.unroll(stack, params[:1], jnp.ones((3, 3)))
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 3\)"):
        gp.unroll(stack, params, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match="layer 2: params"):
        gp.unroll(stack, (params[0], params[0]), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="routes: expected names among"):
        gp.lyapunov_exponents(stack, params, jnp.ones((3, 3)), routes={"2>3"})
    bad = (params[0], params[1]._replace(b_hn=params[1].b_hn.at[0].set(jnp.nan)))
    with pytest.raises(gp.NonFiniteError, match="params"):
        gp.unroll(stack, bad, jnp.ones((3, 3)))


# --------------------------------------------------------------------------- imported stacks

I = gp.interop


def _stack_state0(framework, stack, arrays, direction="f"):
    parts = []
    for k in range(stack.num_layers):
        count = sum(key.startswith(f"state0/{k}{direction}/") for key in arrays)
        start = tuple(arrays[f"state0/{k}{direction}/{i}"] for i in range(count))
        parts.append(start if count > 1 else start[0])
    return I.state_from(framework, stack, parts)


def _check_stack(framework, stack, params, arrays):
    """Every step's top output and every layer's final state against the framework's."""
    states = gp.unroll(stack, params, arrays["xs"], _stack_state0(framework, stack, arrays))
    assert_close(states.h[1:], arrays["out"], err_msg="top layer's output, every step")
    final = I.state_to(framework, stack, jax.tree_util.tree_map(lambda a: a[-1], states))
    for k, got in enumerate(final):
        got = got if isinstance(got, tuple) else (got,)
        for i, a in enumerate(got):
            assert_close(a, arrays[f"final/{k}f/{i}"], err_msg=f"final state, layer {k + 1}")


@pytest.mark.parametrize("name", ["torch_lstm_stack2", "torch_lstm_stack3", "torch_gru_stack2",
                                  "torch_gru_stack3"])
def test_torch_stack_forward_and_state_gradients_match_torch(name):
    arrays = cases.load(name)
    stack, params = I.from_torch(cases.source_of(arrays))
    L = int(name[-1])
    assert isinstance(stack, gp.Stack) and stack.num_layers == L
    _check_stack("torch", stack, params, arrays)
    # dL/d(initial state) of every layer equals torch autograd of the same loss
    W, b = arrays["readout/W"], arrays["readout/b"]
    model = gp.Model(stack, W.shape[0])
    mp = gp.ModelParams(params, gp.Readout(jnp.asarray(W), jnp.asarray(b)))
    state0 = _stack_state0("torch", stack, arrays)
    sg = gp.state_gradients(model, mp, arrays["xs"], arrays["targets"], state0, weights="all")
    assert_close(sg.loss, arrays["loss"])
    lstm = "lstm" in name
    for k in range(L):
        assert_close(sg.field(f"{k + 1}:h")[0], arrays[f"grad/{k}f/0"], err_msg=f"h, layer {k}")
        if lstm:
            assert_close(sg.field(f"{k + 1}:c")[0], arrays[f"grad/{k}f/1"],
                         err_msg=f"c, layer {k}")


def test_torch_bidirectional_layer_and_its_explanation():
    arrays = cases.load("torch_lstm_bidirectional")
    model, params = I.from_torch(cases.source_of(arrays))
    assert model == gp.Bidirectional(gp.LSTM(2, 3), gp.LSTM(2, 3))
    state0 = tuple(cases.state0_of(cases.CASES["torch_lstm_bidirectional"], model.forward,
                                   arrays, tag) for tag in ("0f", "0r"))
    assert_close(model.outputs(params, arrays["xs"], state0), arrays["out"])
    ex = gp.explain_bidirectional(model, params, arrays["xs"], state0, warmup=1)
    assert str(ex.reverse) == str(gp.explain(model.reverse, params[1], arrays["xs"][::-1],
                                             state0[1], warmup=1))
    text = str(ex).splitlines()
    assert text[0].startswith("forward (reads x_0") and "reverse (reads x_{T-1}" in text[0]
    one, _ = I.from_torch(cases.source_of(arrays), direction="reverse")   # one direction
    assert one == gp.LSTM(2, 3)
    with pytest.raises(ValueError, match="2-layer bidirectional module"):
        I.from_torch(cases.source_of(cases.load("torch_lstm")))
    with pytest.raises(TypeError, match="expected a gp.Bidirectional"):
        gp.explain_bidirectional(model.forward, params, arrays["xs"])


def _per_layer(source, heads):
    return [{k[len(h) + 1:]: v for k, v in source.items() if k.startswith(h + "/")}
            for h in heads]


def test_keras_flax_and_equinox_lists_of_layers_are_stacks():
    arrays = cases.load("keras_lstm")
    keras_layers = _per_layer(cases.source_of(arrays), ("lstm0", "lstm1"))
    stack, params = I.from_keras(keras_layers)
    assert stack == gp.Stack([gp.LSTM(2, 3), gp.LSTM(3, 3)])
    _check_stack("keras", stack, params, arrays)
    arrays = cases.load("flax_linen_lstm")
    layers = _per_layer(cases.source_of(arrays), ("params/lstm0", "params/lstm1"))
    stack, params = I.from_flax(layers)
    _check_stack("flax", stack, params, arrays)
    eqx = cases.source_of(cases.load("equinox_lstm"))      # LSTM(3, 4) cannot read 4 inputs
    with pytest.raises(ValueError, match=r"layers\[1\]: expected input_size 4"):
        I.from_equinox([eqx, eqx])
    with pytest.raises(ValueError, match=r"layers\[1\]: .*recurrent_kernel"):
        I.from_keras([keras_layers[0], {"kernel": np.ones((3, 12))}])


class _LeakyState(NamedTuple):
    h: jax.Array


@dataclasses.dataclass(frozen=True)
class _Leaky:
    """A custom cell without closed form or routes: ``h' = h / 2 + tanh(A h + W x)``."""

    input_size: int
    hidden_size: int

    def step(self, params, state, x):
        A, W = params
        return _LeakyState(state.h / 2 + jnp.tanh(A @ state.h + W @ x))

    def initial_state(self, dtype=None):
        return _LeakyState(jnp.zeros((self.hidden_size,), dtype or jnp.float64))


def test_a_custom_layer_takes_autodiff_and_has_no_routes():
    lstm = gp.LSTM(2, 3)
    stack = gp.Stack([lstm, _Leaky(3, 2)])
    params = (lstm.init(jax.random.key(0)),
              (jax.random.normal(jax.random.key(1), (2, 2)),
               jax.random.normal(jax.random.key(2), (2, 3))))
    xs = jax.random.normal(jax.random.key(3), (3, 2))
    assert stack.routes == () and stack.edges is None
    J = gp.step_jacobians(stack, params, xs, method="jacfwd")
    assert J.layout.names == ("1:c", "1:h", "2:h") and np.all(J.matrix[:, :6, 6:] == 0)
    assert_close(gp.step_jacobians(stack, params, xs, method="jacrev").matrix, J.matrix)
    with pytest.raises(ValueError, match="'analytic' needs a cell with a closed form"):
        gp.step_jacobians(stack, params, xs)
    with pytest.raises(TypeError, match=r"layers\[0\]: expected a cell whose initial_state"):
        gp.Stack([_NoOutput(), lstm])      # h a property, not a field: no rows to read


def test_a_stack_declares_its_layers_gauge_directions():
    # An sLSTM layer's gauge directions (its stabiliser shifts) move no later output of
    # that layer, so none of the layers above: they are the stack's, each in its layer's
    # rows, carried by the stack's step as by the layer's (J G_t = G_{t+1} diag(sel)).
    # A stack without such a layer declares none; the readout field is the top output
    # for the whole state and a gauged layer's own output for its block
    slstm = gp.SLSTM(4, 3)
    stack = gp.Stack([gp.LSTM(2, 4), slstm, gp.GRU(3, 2)])
    assert gp.Stack([gp.LSTM(2, 4)]).gauge_directions is None
    assert _protocols.readout_field(gp.Stack([gp.LSTM(2, 4)])) is None
    assert _protocols.has_gauge(stack) and isinstance(stack, _protocols.GaugedCell)
    assert _protocols.readout_field(stack) == "3:h"
    fields = lambda k, names: tuple(f"{k}:{f}" for f in names)
    assert _protocols.readout_field(stack, (fields(2, "cnmh"),) * 2) == "2:h"
    assert _protocols.readout_field(stack, ("2:c", "2:c")) is None
    assert _protocols.readout_field(stack, (fields(1, "ch"),) * 2) is None
    params = stack.init(jax.random.key(0), recurrent_gain=1.5)
    xs = jax.random.normal(jax.random.key(1), (6, 2))
    states = gp.unroll(stack, params, xs)
    J = np.asarray(gp.step_jacobians(stack, params, xs).matrix)
    at = lambda t: jax.tree_util.tree_map(lambda a: a[t], states)
    lay = layout_of(at(0))
    for t in range(xs.shape[0]):
        G = np.asarray(stack.gauge_directions(at(t)))
        assert G.shape == (lay.size, 3)
        rows = np.zeros(lay.size, bool)
        rows[lay.slice("2:c").start:lay.slice("2:h").stop] = True
        assert_close(G[rows], np.asarray(slstm.gauge_directions(at(t)[1])))
        assert not G[~rows].any()
        x_2 = stack.layers[0].step(params[0], at(t)[0], xs[t]).h     # what layer 2 reads
        sel = np.asarray(slstm.forward(params[1], at(t)[1], x_2)["sel"])
        assert_close(J[t] @ G, np.asarray(stack.gauge_directions(at(t + 1))) * sel[None, :])


class _PropertyH(NamedTuple):
    s: jax.Array

    @property
    def h(self):
        return jnp.tanh(self.s)


@dataclasses.dataclass(frozen=True)
class _NoOutput:
    """A cell whose ``h`` is computed from its state, not a field of it."""

    def step(self, params, state, x):
        return _PropertyH(state.s)

    def initial_state(self, dtype=None):
        return _PropertyH(jnp.zeros((2,)))


# --------------------------------------------------------------------------- layers without h


def _lru_stacks():
    """An LRU on top of an LSTM, and below one: a layer without h outputs its whole state."""
    out = []
    for k, stack in enumerate((gp.Stack([gp.LSTM(3, 4), gp.LRU(4, 3)]),
                               gp.Stack([gp.LRU(3, 2), gp.LSTM(4, 3)]))):
        keys = jax.random.split(jax.random.key(k), 2)
        out.append((stack, tuple(
            cell.init(key, r_min=0.6, r_max=0.95) if isinstance(cell, gp.LRU)
            else cell.init(key, recurrent_gain=1.5) for cell, key in zip(stack.layers, keys))))
    return out


@functools.partial(jax.jit, static_argnums=0)
def _central_differences(cell, params, state, x, eps=1e-6):
    """d step / d s at ``state`` by central differences, (d, d)."""
    lay = layout_of(state)
    f = jax.vmap(lambda v: lay.ravel(cell.step(params, lay.unravel(v), x)))
    E = eps * jnp.eye(lay.size)
    s = lay.ravel(state)
    return (f(s[None] + E) - f(s[None] - E)).T / (2 * eps)


def test_a_layer_without_h_outputs_its_whole_state():
    """Each layer reads the layer below's output, h or (the LRU) [re; im]; the readout
    reads the top's. Forward, Jacobians (closed form, autodiff, finite differences,
    routes summing to J), the inter-layer route's matrix-free edge and a model's
    gradients all take it."""
    xs = jax.random.normal(jax.random.key(5), (6, 3))
    for stack, params in _lru_stacks():
        lru_top = isinstance(stack.layers[-1], gp.LRU)
        assert stack.hidden_size == (6 if lru_top else 3)
        states = gp.unroll(stack, params, xs)
        u = xs
        for k, (cell, p) in enumerate(zip(stack.layers, params)):      # layer by layer
            alone = gp.unroll(cell, p, u)
            for a, b in zip(states[k], alone):
                assert_close(a, b, err_msg=f"layer {k + 1}")
            u = (jnp.concatenate([alone.re, alone.im], axis=1) if isinstance(cell, gp.LRU)
                 else alone.h)[1:]
        assert_close(jax.vmap(lambda s: s.h)(states), jnp.concatenate(
            [states[-1].re, states[-1].im], axis=1) if lru_top else states[-1].h)
        J = gp.step_jacobians(stack, params, xs)
        assert_close(gp.step_jacobians(stack, params, xs, method="jacfwd").matrix, J.matrix)
        state = jax.tree_util.tree_map(lambda a: a[2], states)
        np.testing.assert_allclose(J.matrix[2], _central_differences(stack, params, state, xs[2]),
                                   atol=1e-8)
        routes = gp.route_jacobians(stack, params, xs)
        assert "1>2" in routes
        assert_close(sum(R.matrix for R in routes.values()), J.matrix)
        model = gp.Model(stack, 2)
        assert model.feature_size == stack.hidden_size
        mp = model.init(jax.random.key(3))._replace(cell=params)
        targets = jax.random.normal(jax.random.key(4), (6, 2))
        auto = gp.state_gradients(model, mp, xs, targets, weights="all")
        closed = gp.state_gradients(model, mp, xs, targets, weights="all", method="jacobians")
        assert_close(closed.g, auto.g)


def test_an_lru_on_top_is_explained_with_its_exact_block():
    """The LRU's block is the same normal matrix every step: its horizon growth is
    exactly max_j log|lambda_j| = -exp(min nu_log); the full product's exponent is the
    larger of the two blocks'."""
    (stack, params), _ = _lru_stacks()
    xs = jax.random.normal(jax.random.key(6), (40, 3))
    ex = gp.explain(stack, params, xs, warmup=10)
    top = float(jnp.max(stack.layers[1].log_moduli(params[1])))
    assert_close(ex.row("ds^2/ds^2").horizon, top, bias=HORIZON_ATOL[jnp.dtype("float64")])
    # the layer's driver reads the block's window rate: its exact horizon here
    assert ex.layers[1].exponent == ex.row("ds^2/ds^2").rate
    assert_close(ex.layers[1].exponent, top, bias=HORIZON_ATOL[jnp.dtype("float64")])
    lam = gp.lyapunov_exponents(stack, params, xs, warmup=10, k=2)
    assert np.all(np.isfinite(lam))


# --------------------------------------------------------------------------- bidirectional


def test_bidirectional_batch_reads_each_sequence_backwards_in_time():
    """For a batch (B, T, m) the reverse direction reads each sequence from its last step
    (time is axis -2), not the batch in reverse order: its per-sequence rows equal
    explain of the reverse cell over ``xs[b][::-1]``; the outputs of a batch are the
    outputs of each sequence; ``to_dict`` holds both explanations."""
    bi = gp.Bidirectional(gp.LSTM(2, 3), gp.LSTM(2, 3))
    params = bi.init(jax.random.key(0), recurrent_gain=1.5)
    xs = jax.random.normal(jax.random.key(1), (2, 12, 2))
    ex = gp.explain_bidirectional(bi, params, xs, warmup=2)
    for b in range(2):
        alone = gp.explain(bi.reverse, params[1], xs[b][::-1], warmup=2)
        for row in alone.rows:
            assert_close(ex.reverse.row(row.name).per_sequence[b], row.exponent,
                         err_msg=f"sequence {b}, {row.name}")
        assert_close(bi.inputs(xs)[1][b], xs[b][::-1])
        assert_close(bi.outputs(params, xs)[b], bi.outputs(params, xs[b]))
    data = ex.to_dict()
    assert data["kind"] == "bidirectional" and data["reverse"]["reads"] == "x_{T-1} .. x_0"
    assert {k: v for k, v in data["forward"].items() if k != "reads"} == ex.forward.to_dict()
    assert json.loads(json.dumps(data)) == data
    with pytest.raises(TypeError, match="model.reverse with params\\[1\\] over "
                                        "model.inputs\\(xs\\)\\[1\\]"):
        gp.step_jacobians(bi, params, xs[0], method="jacfwd")
    with pytest.raises(TypeError, match="two recurrences, one per direction"):
        gp.step_jacobians(bi, params, xs[0])        # not "use method='jacfwd'"


def test_a_stack_reports_each_layers_gate_saturation():
    """``"k:g"`` per layer that has activations (the LRU has none), each equal to the
    layer's own saturation on the inputs it reads; explain reports them."""
    stack = gp.Stack([gp.LSTM(3, 4), gp.LRU(4, 2), gp.GRU(4, 2)])
    keys = jax.random.split(jax.random.key(0), 3)
    params = (stack.layers[0].init(keys[0], input_gain=3.0), stack.layers[1].init(keys[1]),
              stack.layers[2].init(keys[2], input_gain=3.0))
    xs = 2 * jax.random.normal(jax.random.key(1), (10, 3))
    sat = gp.gate_saturation(stack, params, xs)
    assert sat.gates == ("1:z", "1:i", "1:f", "1:o", "1:tanh(c)", "3:r", "3:z", "3:n")
    states = gp.unroll(stack, params, xs)
    lru_out = jnp.concatenate([states[1].re, states[1].im], axis=1)[1:]
    for k, u in ((0, xs), (2, lru_out)):
        own = gp.gate_saturation(stack.layers[k], params[k], u)
        cols = [sat.gates.index(f"{k + 1}:{g}") for g in own.gates]
        assert_close(sat.low[:, cols], own.low)
        assert_close(sat.high[:, cols], own.high)
    assert sat.high.max() > 0          # something saturates, so the comparison can fail
    ex = gp.explain(stack, params, xs)
    assert set(ex.saturation) == set(sat.gates)
    assert_close(ex.saturation["3:z"]["high"], sat.high[:, sat.gates.index("3:z")].mean())


def test_a_gauged_layer_needs_a_top_layer_with_h():
    # the readout's gradient enters a stack with an sLSTM layer by the top layer's h
    with pytest.raises(gp.InputError, match=r"layers\[1\]: expected a top layer with an "
                                            r"output h.*got LRU"):
        gp.Stack([gp.SLSTM(3, 4), gp.LRU(4, 3)])
    gp.Stack([gp.SLSTM(3, 4), gp.LSTM(4, 3)])
