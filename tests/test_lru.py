"""The LRU: the complex recurrence against numpy complex arithmetic, the real 2x2
rotation-scaling Jacobian, and its known exponents ``log |lambda|``, each twice."""

from __future__ import annotations

import battery
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths._lru import LRU, LRUParams, LRUState

MODULI = (0.95, 0.5, 0.1)     # log-moduli -0.05, -0.69, -2.30: gaps >= 0.64 nats/step


def setup(H=2, N=3, T=30, seed=0, moduli=None, dtype=jnp.float64):
    """(cell, params, xs, state0); ``moduli`` sets ``|lambda|``, else the paper's init."""
    cell = LRU(H, N)
    kp, kx, ks = jax.random.split(jax.random.key(seed), 3)
    params = cell.init(kp, dtype=dtype)
    if moduli is not None:
        params = params._replace(nu_log=jnp.log(-jnp.log(jnp.asarray(moduli, dtype))))
    xs = jax.random.normal(kx, (T, H), dtype)
    k1, k2 = jax.random.split(ks)
    return cell, params, xs, LRUState(jax.random.normal(k1, (N,), dtype),
                                      jax.random.normal(k2, (N,), dtype))


def reference_forward(params, xs, state):
    """The paper's recurrence in numpy complex arithmetic: (T, N) complex states."""
    lam = np.exp(-np.exp(np.asarray(params.nu_log)) + 1j * np.exp(np.asarray(params.theta_log)))
    B = np.asarray(params.B_re) + 1j * np.asarray(params.B_im)
    gamma = np.exp(np.asarray(params.gamma_log))
    x = np.asarray(state.re) + 1j * np.asarray(state.im)
    out = []
    for u in np.asarray(xs):
        x = lam * x + gamma * (B @ u)
        out.append(x)
    return np.stack(out), lam


def test_forward_matches_complex_arithmetic():
    cell, params, xs, s0 = setup()
    states = gp.unroll(cell, params, xs, s0)
    ref, lam = reference_forward(params, xs, s0)
    assert_close(states.re[1:], ref.real)
    assert_close(states.im[1:], ref.imag)
    battery.unroll_matches_loop(cell, params, xs, s0)
    # the paper's initialisation: the ring and gamma = sqrt(1 - |lambda|^2)
    assert np.all((np.abs(lam) >= 0.4) & (np.abs(lam) <= 0.99))
    assert_close(np.exp(np.asarray(params.gamma_log)), np.sqrt(1 - np.abs(lam) ** 2))


def test_jacobian_is_rotation_scaling_blocks():
    cell, params, xs, s0 = setup()
    J = np.asarray(battery.methods_agree(cell, params, xs, s0))
    _, lam = reference_forward(params, xs, s0)
    a, b = np.diag(lam.real), np.diag(lam.imag)
    expected = np.block([[a, -b], [b, a]])
    for t in range(30):                              # the same at every step
        assert_close(J[t], expected)
    battery.finite_differences_agree(cell, params, xs, s0, (0, 3))
    battery.routes_sum_to_jacobian(cell, params, xs, s0)


def test_exponents_are_the_log_moduli_twice():
    # Known answer: log |lambda_j| = -exp(nu_j), each twice. Within a unit the block is
    # |lambda| times a rotation (exact at every step); across units the QR frame
    # aligns during the warm-up (left ~e^{-2 * 0.64 * 20}).
    cell, params, xs, _ = setup(moduli=MODULI)
    expected = np.repeat(np.log(MODULI), 2)
    assert_close(-np.exp(np.asarray(params.nu_log)), np.log(MODULI))
    lam = gp.lyapunov_exponents(cell, params, xs, warmup=20)
    assert_close(lam, expected)
    assert_close(gp.lyapunov_exponents(cell, params, xs, k=2, method="jvp", warmup=20),
                 expected[:2])
    # the paper's random init: the sum is exact without any warm-up
    cell, params, xs, _ = setup(seed=3)
    lam = gp.lyapunov_exponents(cell, params, xs)
    assert_close(np.sum(lam), 2 * np.sum(-np.exp(np.asarray(params.nu_log))))


def test_growth_curve_is_the_largest_log_modulus():
    # J is normal: ||J^t||_2 = max_j |lambda_j|^t exactly, for every t and every start.
    cell, params, xs, s0 = setup(moduli=MODULI)
    top = np.log(MODULI[0])
    assert_close(gp.growth_curve(cell, params, xs, s0), top * np.arange(1, 31))
    assert_close(gp.growth_curve(cell, params, xs, s0, start=7), top * np.arange(1, 24))


def test_float32_jit_and_vmap():
    cell, params, xs, s0 = setup()
    battery.float32_agrees(cell, params, xs, s0)
    battery.jit_and_vmap_agree(cell, params, xs, s0)


def test_explain_and_training_run():
    cell, params, xs, _ = setup(moduli=MODULI)
    assert cell.jacobian_structure == "complex-diagonal"
    # closed form; a linear recurrence has no activation to saturate
    assert isinstance(cell, gp.ClosedFormCell) and not isinstance(cell, gp.SaturatingCell)
    assert type(cell).routes.__class__ is property    # as on every cell
    ex = gp.explain(cell, params, xs, warmup=20)
    assert_close(ex.exponent, np.log(MODULI[0]))
    # re and im are the halves of one recurrence, not routes: only the full product
    assert [row.name for row in ex.rows] == ["full"]
    # the readout sees s = [re; im] (no h field): Re(C x) with C = W_re - i W_im
    battery.trains_one_step(lambda m: LRU(m, 4), {"r_min": 0.5})


def test_bad_inputs():
    cell, params, xs, s0 = setup()
    with pytest.raises(ValueError, match=r"params.B_im: expected shape \(3, 2\), got \(2, 3\)"):
        cell.check_params(params._replace(B_im=params.B_im.T))
    with pytest.raises(ValueError, match=r"params.nu_log: expected shape \(3,\), got \(4,\)"):
        gp.unroll(cell, params._replace(nu_log=jnp.zeros(4)), xs, s0)
    with pytest.raises(ValueError, match=r"xs: expected shape \(T, 2\) for LRU.*got \(4, 3\)"):
        gp.step_jacobians(cell, params, jnp.ones((4, 3)), s0)
    with pytest.raises(TypeError, match="expected LRUParams"):
        cell.check_params(tuple(params))
    with pytest.raises(gp.InputError, match="r_min, r_max: expected 0 < r_min <= r_max < 1"):
        cell.init(jax.random.key(0), r_min=0.9, r_max=1.0)
    with pytest.raises(gp.NonFiniteError, match="params"):
        gp.unroll(cell, params._replace(nu_log=params.nu_log.at[0].set(jnp.inf)), xs, s0)
    assert isinstance(params, LRUParams)


def test_explain_reports_the_exact_exponent_where_lambda_underflows():
    """``nu_log >= 4.5`` in float32: ``|lambda| = e^{-e^{nu_log}}`` underflows to 0, but
    ``log |lambda| = -e^{nu_log}`` is known: the table and the verdict give it, with no
    warning (warnings are errors here)."""
    cell, params, xs, _ = setup(dtype=jnp.float32)
    nu_log = jnp.asarray([4.5, 5.0, 4.6], jnp.float32)
    ex = gp.explain(cell, params._replace(nu_log=nu_log), xs)
    top = -float(np.exp(np.float64(4.5)))                    # -90.0171
    assert_close(ex.row("full").exponent, top, jnp.float32)
    assert_close(ex.row("full").horizon, top, jnp.float32)
    assert_close(cell.log_moduli(params._replace(nu_log=nu_log)),
                 -np.exp(np.asarray(nu_log, np.float64)), jnp.float32)
    assert f"{top:+.4f}" in ex.verdict and "-inf" not in str(ex)
    # the exponents too (they read -inf from the underflowed step images)
    lam = gp.lyapunov_exponents(cell, params._replace(nu_log=nu_log), xs, k=3)
    assert_close(lam, np.sort(np.repeat(-np.exp(np.asarray(nu_log, np.float64)), 2))[::-1][:3],
                 jnp.float32)


def test_explain_shows_the_exact_top_log_modulus():
    """The LRU's product is normal: exponent and horizon are max log|lambda| exactly,
    not a start-dependent estimate (issue 24, item 4)."""
    cell, params, xs, _ = setup(moduli=MODULI)
    for key in (0, 1):
        ex = gp.explain(cell, params, xs[:30], warmup=5, key=key)
        assert_close(ex.exponent, np.log(max(MODULI)))
        assert_close(ex.row("full").horizon, np.log(max(MODULI)))
