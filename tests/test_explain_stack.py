"""explain on a stack: the layer that drives the growth and the route within it,
checked against the layers' blocks measured on their own and dense float64 products."""

import json

import jax
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths._examples import with_output_gain
from gradpaths._state import layout_of

WARMUP, T = 50, 300


def hot(m, input_gain):
    """A layer whose routes together explode (+0.05 nats/step where it is used below):
    forget gates near 1, large recurrent matrices."""
    cell = gp.LSTM(m, 4)
    params = cell.init(jax.random.key(1), forget_bias=4.0, recurrent_gain=6.0,
                       input_gain=input_gain)
    return cell, with_output_gain(params, 6.0, 2)


def cold(m, key=1):
    """A contracting layer (forget gates near 1/2, small recurrent matrices)."""
    cell = gp.LSTM(m, 4)
    return cell, cell.init(jax.random.key(key), forget_bias=0.0, recurrent_gain=0.5)


def stack_of(layers):
    return gp.Stack([c for c, _ in layers]), tuple(p for _, p in layers)


def fields(k):
    return (f"{k}:c", f"{k}:h")


@pytest.fixture(scope="module")
def xs():
    return jax.random.normal(jax.random.key(3), (T, 3))


@pytest.fixture(scope="module")
def cold_hot(xs):
    stack, params = stack_of([cold(3), hot(4, 1.0)])
    return stack, params, gp.explain(stack, params, xs, warmup=WARMUP)


@pytest.fixture(scope="module")
def hot_cold(xs):
    stack, params = stack_of([hot(3, 0.3), cold(4)])
    return stack, params, gp.explain(stack, params, xs, warmup=WARMUP)


def _dense_top(J, rows=None):
    """Top exponent of a (T, d, d) float64 sequence (block ``rows``) over the window, from
    one tangent (numpy): the dense reference."""
    J = np.asarray(J, np.float64)
    if rows is not None:
        J = J[:, rows][:, :, rows]
    v = np.random.default_rng(0).standard_normal(J.shape[1])
    v /= np.linalg.norm(v)
    total = 0.0
    for t in range(J.shape[0]):
        w = J[t] @ v
        total += np.log(np.linalg.norm(w)) if t >= WARMUP else 0.0
        v = w / np.linalg.norm(w)
    return total / (J.shape[0] - WARMUP)


@pytest.mark.parametrize("case, lead", [("cold_hot", 2), ("hot_cold", 1)])
def test_the_driving_layer_is_the_largest_block(case, lead, xs, request):
    stack, params, ex = request.getfixturevalue(case)
    other = 3 - lead
    blocks = {k: ex.row(f"ds^{k}/ds^{k}").exponent for k in (1, 2)}
    # the layers' blocks as gp.lyapunov_exponents measures them (same start: round-off)
    for k in (1, 2):
        lam = gp.lyapunov_exponents(stack, params, xs, k=1, warmup=WARMUP,
                                    block=(fields(k), fields(k)))
        assert_close(blocks[k], lam[0], err_msg=f"layer {k}")
    assert blocks[lead] > 0.01 and blocks[other] < -0.1
    # the dense float64 reference: the full exponent is the largest block's (block
    # lower-triangular); another start vector differs by O(1 / window) at most
    J = gp.step_jacobians(stack, params, xs).matrix
    d1 = 8
    dense = {1: _dense_top(J, slice(0, d1)), 2: _dense_top(J, slice(d1, 2 * d1))}
    full = _dense_top(J)
    assert abs(full - max(dense.values())) < 2e-3
    assert abs(ex.exponent - full) < 0.01 and abs(blocks[lead] - dense[lead]) < 0.01
    # the whole driver speaks of the driving layer's routes; per-layer drivers agree
    d = ex.driver
    assert d.layer == lead and d.growth == "explodes" and d.exponent == ex.row("full").rate
    assert d.route is not None and d.route.startswith(f"{lead}:")
    assert [x.layer for x in ex.layers] == [1, 2]
    assert ex.layers[lead - 1].growth == "explodes" and ex.layers[other - 1].growth == "vanishes"
    assert ex.layers[lead - 1].route == d.route
    # the driver's own numbers: the route whose cut lowers the exponent most
    cuts = {r: ex.row(f"all but {r}").rate for r in (f"{lead}:{g}" for g in "zifo")}
    if d.kind == "interaction":
        assert d.route == max(cuts, key=lambda r: ex.row("full").rate - cuts[r])
    else:
        assert ex.row(d.route).rate > ex.margin


def test_inter_layer_routes_carry_but_never_drive(cold_hot):
    stack, params, ex = cold_hot
    names = [r.name for r in ex.rows]
    assert "1>2" not in names       # nilpotent alone: any 2 of its steps multiply to 0
    # cutting it leaves the asymptotic rate (the blocks are unchanged); O(1/window) apart
    assert abs(ex.row("all but 1>2").exponent - ex.exponent) < 2e-3
    assert ex.driver.route != "1>2" and "1>2" not in ex.driver.necessary
    assert "The inter-layer route 1>2 carries the signal" in ex.verdict
    assert f"all but 1>2: {ex.row('all but 1>2').horizon:+.4f}" in ex.verdict


def test_verdict_names_the_layer_and_the_route(cold_hot, hot_cold):
    for ex, lead, other in ((cold_hot[2], 2, 1), (hot_cold[2], 1, 2)):
        block = ex.row(f"ds^{lead}/ds^{lead}").rate
        assert f"layer {lead} drives it (its block ds^{lead}/ds^{lead} grows at {block:+.4f}" \
            in ex.verdict
        assert f"layer {other} at {ex.row(f'ds^{other}/ds^{other}').rate:+.4f}" in ex.verdict
        assert f"Within layer {lead}, its carousel {lead}:carousel alone contracts" in ex.verdict
        assert f"({ex.driver.route})" in ex.verdict      # the driving route, by name


def test_table_shows_the_driving_layers_routes(cold_hot):
    *_, ex = cold_hot
    text = str(ex)
    table = text.split("\ngate saturation")[0]             # the growth table, not the gates'
    first = {line.split()[0] for line in table.splitlines() if line[:1].isalnum()}
    assert {"full", "ds^1/ds^1", "ds^2/ds^2", "2:o", "2:carousel+2:o"} <= first
    assert "1:o" not in first and "1:carousel+1:o" not in first
    assert "(the route rows of layer 1 are measured too: Explanation.rows)" in text
    assert "1:o" in {r.name for r in ex.rows}       # measured, kept, not printed
    d = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    assert d["driver"]["layer"] == 2 and [x["layer"] for x in d["layers"]] == [1, 2]
    row = next(r for r in d["rows"] if r["name"] == "ds^2/ds^2")
    assert row["block"] == [["2:c", "2:h"], ["2:c", "2:h"]]


def test_three_layers(xs):
    stack, params = stack_of([cold(3), cold(4, 2), hot(4, 1.0)])
    ex = gp.explain(stack, params, xs, warmup=WARMUP)
    blocks = {k: ex.row(f"ds^{k}/ds^{k}").exponent for k in (1, 2, 3)}
    assert ex.driver.layer == max(blocks, key=blocks.__getitem__)
    assert abs(ex.exponent - max(blocks.values())) < 2e-3
    table = str(ex).split("\ngate saturation")[0]          # the growth table, not the gates'
    shown = [line for line in table.splitlines() if line[:1].isalnum() and "  " in line]
    # full, 3 blocks, 5 + 4 + 5 rows of the driving layer, 2 inter-layer cuts (+ header)
    assert len(shown) <= 21 and len(ex.rows) == 1 + 3 + 15 + 12 + 15 + 2
    assert "The inter-layer routes 1>2, 2>3 carry the signal" in ex.verdict


def test_layer_blocks_by_name_and_bad_blocks(xs):
    stack, params = stack_of([cold(3), cold(4, 2)])
    layout = layout_of(stack.initial_state())
    rs = gp.RouteSet.parse("ds^2/ds^2", stack, layout)
    assert rs.kind == "block" and rs.spec.block == (fields(2), fields(2))
    assert gp.RouteSet.parse("2:carousel+2:o", stack).kind == "with carousel"
    with pytest.raises(ValueError, match="diagonal block"):
        gp.RouteSet.parse("ds^3/ds^3", stack, layout)
    with pytest.raises(TypeError, match="distinct field names"):
        gp.growth_curve(stack, params, xs[:5], block=(("2:c", "2:c"), ("2:c", "2:c")))
    with pytest.raises(ValueError, match="field names among"):
        gp.growth_curve(stack, params, xs[:5], block=(("2:c", "9:h"), ("2:c", "9:h")))
    with pytest.raises(ValueError, match="square diagonal block"):
        gp.growth_curve(stack, params, xs[:5], block=(fields(1), fields(2)))


def test_stack_of_an_slstm_is_explained_as_the_bare_cell():
    # The sLSTM's full state carries neutral gauge directions that no loss of h sees;
    # explain measures the bare cell through its h rows. A stack of it declares the same
    # gauge directions (its layers'), so its rows are the bare cell's, to round-off:
    # the whole state and the layer's block through 1:h, each route row through 1:h
    # (measured on the whole state, the gauge's neutral exponents showed instead)
    cell = gp.SLSTM(3, 6)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (80, 3))
    bare = gp.explain(cell, params, xs, warmup=20)
    stack = gp.explain(gp.Stack([cell]), (params,), xs, warmup=20)
    rows = {r.name: r for r in bare.rows}
    named = {"full": "full", "ds^1/ds^1": "full"}
    compared = 0
    for r in stack.rows:
        own = rows[named.get(r.name, r.name.replace("1:", ""))]
        assert r.exponent == pytest.approx(own.exponent, rel=1e-9, abs=1e-12)
        assert r.horizon == pytest.approx(own.horizon, rel=1e-9, abs=1e-12)
        compared += 1
    assert compared == len(stack.rows) == 1 + 1 + 7 + 6 + 7
    assert stack.driver.growth == bare.driver.growth == "vanishes"
    assert stack.exponent < -0.01
    assert any("what a loss of 1:h sees" in note for note in stack.notes)


def test_an_slstm_layers_block_is_the_bare_cell_on_its_inputs():
    # Layer 2's block ds^2/ds^2 is the product of its own step Jacobians along the
    # stack's trajectory: the bare sLSTM fed layer 1's outputs. An sLSTM layer's block
    # is read through its own output 2:h (the gauge left out), as the bare cell's full
    # row is through h: the same numbers, the exact horizon certifying both
    lstm, slstm = gp.LSTM(2, 3), gp.SLSTM(3, 3)
    stack = gp.Stack([lstm, slstm])
    params = stack.init(jax.random.key(3), recurrent_gain=1.5)
    xs = jax.random.normal(jax.random.key(4), (60, 2))
    ex = gp.explain(stack, params, xs, warmup=10, horizon="exact")
    h1 = gp.unroll(lstm, params[0], xs).h[1:]
    bare = gp.explain(slstm, params[1], h1, warmup=10, horizon="exact")
    block = ex.row("ds^2/ds^2")
    assert_close(block.exponent, bare.exponent)
    assert_close(block.horizon, bare.row("full").horizon)
    assert any("ds^2/ds^2: a loss of 2:h" in note for note in ex.notes)
