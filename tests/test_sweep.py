"""The gain x forget-bias sweep."""

import json

import jax
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths import _inputs


@pytest.fixture(scope="module")
def small_sweep():
    return gp.sweep(gains=[1.0, 8.5, 16.0], forget_biases=[0.0, 4.0], steps=50, warmup=10,
                    hidden=6, scaled=("z", "o"))      # the command-line test's grid (and plots')




def test_grid_sharded_equals_unsharded(monkeypatch):
    assert len(jax.devices()) == 4      # 3 x 2 = 6 grid points over 4 devices, padded
    kw = dict(gains=[1.0, 8.0, 16.0], forget_biases=[0.0, 4.0], steps=40, warmup=5, hidden=4)
    sharded = gp.sweep(**kw)
    monkeypatch.setattr(_inputs, "shard_batch", lambda xs: xs)
    plain = gp.sweep(**kw)
    for name in sharded.names:
        assert_close(sharded.exponent(name), plain.exponent(name))


def _synthetic(points):
    """A Sweep over one gain and len(points) forget biases with the given exponents
    (full, each route alone, all but each route)."""
    names = ("full", *ROUTES, *(f"all but {r}" for r in ROUTES))
    exps = np.array([[[full, *alone, *cut] for full, alone, cut in points]])
    return gp.Sweep(np.array([1.0]), np.arange(float(len(points))), names, exps, ("o",),
                    dict(hidden=2, steps=10, warmup=0))


ROUTES = ("carousel", "z", "i", "f", "o")


def test_sweep_and_explain_share_the_driver_rule():
    """Where the old rules disagreed, both now answer as the driver rule does.

    Point 0: z grows alone but cutting o drops the exponent most; the sweep used to
    say o (largest drop, no override), explain z. Point 1: the carousel is within the
    margin (+0.0005) and its cut drops most; the sweep used to accept it (it tested
    > 0, not > margin), explain left it out.
    """
    from gradpaths._explain import GrowthRow, _driver

    points = [(0.05, [-0.1, 0.02, -0.3, -0.3, -0.01], [0.04, 0.04, 0.05, 0.05, -0.02]),
              (0.05, [0.0005, -0.2, -0.3, -0.3, -0.1], [-0.5, 0.03, 0.05, 0.05, -0.01]),
              (-0.2, [-0.3] * 5, [-0.25] * 5)]
    sw = _synthetic(points)
    assert list(sw.dominant()[0]) == ["z", "o", ""]
    assert list(sw.regions()[0]) == ["route", "interaction", "vanishes"]
    cell = gp.LSTM(2, 2)
    for b, (full, alone, cut) in enumerate(points):
        values = {"full": full, **dict(zip(ROUTES, alone)),
                  **{f"all but {r}": v for r, v in zip(ROUTES, cut)}}
        rows = {k: GrowthRow(k, "", None, None, v, v, (v,)) for k, v in values.items()}
        assert _driver(rows, cell, 1e-3) == sw.drivers()[0, b]
    text = str(sw)
    assert text.splitlines()[-3].split()[-2:] == ["route", "z"]
    data = json.loads(json.dumps(sw.to_dict(), allow_nan=False))
    assert data["dominant"] == [["z", "o", ""]] and data["regions"][0][2] == "vanishes"


def test_sweep_numbers(small_sweep):
    sw = small_sweep
    assert sw.names == ("full", "carousel", "z", "i", "f", "o", "all but carousel", "all but z",
                        "all but i", "all but f", "all but o")
    assert sw.exponents.shape == (3, 2, 11)
    # One grid point against explain on the same model.
    cell = gp.LSTM(4, 6)
    k_params, k_xs = jax.random.split(jax.random.key(0))
    p = cell.init(k_params, recurrent_gain=1.0)
    p = p._replace(R=p.R._replace(z=8.5 * p.R.z, o=8.5 * p.R.o, i=0.5 * p.R.i, f=0.5 * p.R.f),
                   b=p.b._replace(f=np.full(6, 4.0)))
    xs = jax.random.normal(k_xs, (50, 4))
    ex = gp.explain(cell, p, xs, warmup=10)
    for name in ("full", "carousel", "o", "all but o"):
        assert_close(sw.exponent(name)[1, 1], ex.row(name).exponent)
    assert (sw.exponent("carousel") < 0).all()
    regions = sw.regions()
    full = sw.exponent("full")
    assert ((regions == "vanishes") == (full < -1e-3)).all()
    with pytest.raises(ValueError, match="gains"):
        gp.sweep(gains=[-1.0])
    with pytest.raises(ValueError, match="scaled"):
        gp.sweep(scaled=("carousel",))
