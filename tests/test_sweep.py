"""The gain x forget-bias sweep."""

import jax
from helpers import assert_close

import gradpaths as gp
from gradpaths import _inputs


def test_grid_sharded_equals_unsharded(monkeypatch):
    assert len(jax.devices()) == 4      # 3 x 2 = 6 grid points over 4 devices, padded
    kw = dict(gains=[1.0, 8.0, 16.0], forget_biases=[0.0, 4.0], steps=40, warmup=5, hidden=4)
    sharded = gp.sweep(**kw)
    monkeypatch.setattr(_inputs, "shard_batch", lambda xs: xs)
    plain = gp.sweep(**kw)
    for name in sharded.names:
        assert_close(sharded.exponent(name), plain.exponent(name))
