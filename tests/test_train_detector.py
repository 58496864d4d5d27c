"""The explosion rule as an object: known answers, the judged steps, continuing a run."""

from __future__ import annotations

import numpy as np
import pytest

import gradpaths as gp


def test_known_events():
    norms = np.ones(30)
    norms[3] = 1e3            # before 5 norms: not judged
    norms[12] = 10.5          # above 10 x the median 1: an explosion
    norms[20] = 9.0           # below: none
    norms[25] = np.nan        # non-finite
    detector = gp.ExplosionDetector()
    events = detector.feed(norms)
    assert [(e.step, e.kind) for e in events] == [(12, "explosion"), (25, "nonfinite")]
    boom, bad = events
    assert boom.median == 1.0 and boom.grad_norm == 10.5
    assert boom.message == "step 12: gradient norm 10.5 is 10.5 x the running median 1"
    assert boom.dominant_route is None and boom.route_drop == {}
    assert bad.message == "step 25: gradient norm nan; NaN or inf"
    assert detector.next_step == 30
    # One at a time, with a loss that is not finite: the same rule.
    one = gp.ExplosionDetector(factor=5.0, window=3)
    got = [one.update(g, loss=loss) for g, loss in [(1, 0.1), (1, 0.1), (1, 0.1), (6, 0.1),
                                                    (1, np.inf)]]
    assert [e and e.kind for e in got] == [None, None, None, "explosion", "nonfinite"]
    assert got[4].message == "step 4: loss inf, gradient norm 1; NaN or inf"
    assert got[3].median == 1.0        # the window of 3 before step 3


def test_judging_follows_judged_steps():
    rng = np.random.default_rng(0)
    norms = rng.lognormal(size=60)
    norms[rng.integers(0, 60, 12)] = np.nan
    for window in (1, 3, 20):
        detector = gp.ExplosionDetector(window=window)
        judging = []
        for g in norms:
            judging.append(detector.judging)
            detector.update(g)
        np.testing.assert_array_equal(judging, gp.judged_steps(norms, window))


def test_continuing_a_run_gives_the_same_events():
    rng = np.random.default_rng(1)
    norms = rng.lognormal(sigma=1.5, size=80)
    whole = gp.ExplosionDetector(factor=4.0, window=7).feed(norms)
    assert len(whole) >= 3
    first = gp.ExplosionDetector(factor=4.0, window=7).feed(norms[:40])
    rest = gp.ExplosionDetector(factor=4.0, window=7, start_step=40,
                                previous=norms[:40]).feed(norms[40:])
    assert first + rest == whole


def test_events_get_their_routes_from_a_probe():
    probe = gp.Probe(0.1, 0.5, np.array([-0.2, 0.3, 0.1]), np.array([0.45, 0.1, -np.inf]),
                     np.zeros(0), 5, 40.0, ("carousel", "o", "z"), ())
    event = gp.ExplosionDetector(window=1).feed([1.0, 40.0])[0].with_routes(probe)
    # drops: carousel 0.05 (left out: it contracts alone), o 0.4, z inf (left out:
    # the rule of gp.explain compares finite drops only).
    assert event.dominant_route == "o"
    assert event.route_drop == {"carousel": 0.5 - 0.45, "o": 0.5 - 0.1, "z": np.inf}
    assert event.message.endswith("; dominant route 'o'")
    bare = gp.Probe(0.1, 0.5, np.zeros(0), np.zeros(0), np.zeros(0))
    assert event.with_routes(bare)[4:6] == (None, {})


def test_bad_settings():
    with pytest.raises(ValueError, match=r"factor: expected a finite float > 1.0, got 0.5"):
        gp.ExplosionDetector(factor=0.5)
    with pytest.raises(ValueError, match="window: expected an int >= 1, got 0"):
        gp.ExplosionDetector(window=0)
    with pytest.raises(ValueError, match=r"grad_norm: expected one number, got shape \(2,\)"):
        gp.ExplosionDetector().update([1.0, 2.0])
    with pytest.raises(ValueError, match=r"losses: expected shape \(2,\), got \(3,\)"):
        gp.ExplosionDetector().feed([1.0, 2.0], losses=[1.0, 2.0, 3.0])


def test_norms_and_steps_are_checked():
    """A string is not a norm (it used to fire an event), a norm is >= 0, steps only go
    forward; numbers of any library are one number each."""
    import jax.numpy as jnp

    detector = gp.ExplosionDetector(window=1)
    with pytest.raises(TypeError, match="grad_norm: expected a real number .*got str '500'"):
        detector.update("500")
    with pytest.raises(TypeError, match="grad_norm: expected a real number .*got bool"):
        detector.update(True)
    with pytest.raises(ValueError, match="grad_norm: expected a norm >= 0 .*got -1.0"):
        detector.update(-1.0)
    with pytest.raises(TypeError, match="loss: expected None or a real number, got str"):
        detector.update(1.0, loss="0.5")
    assert detector.next_step == 0                  # refused steps are not counted
    assert detector.update(jnp.array(1.0)) is None and detector.update(np.float32(1.0)) is None
    event = detector.update(jnp.array(50.0), step=jnp.array(7))
    assert (event.step, event.kind, event.grad_norm) == (7, "explosion", 50.0)
    with pytest.raises(ValueError, match=r"step: expected a step >= 8 \(steps only go forward"):
        detector.update(1.0, step=3)
    with pytest.raises(ValueError, match="step: expected a step >= 8"):
        detector.update(1.0, step=7)
    assert detector.update(np.nan).kind == "nonfinite"     # NaN: a step that diverged
    with pytest.raises(TypeError, match="grad_norms: expected real numbers, got dtype <U3"):
        gp.ExplosionDetector().feed(["1.0", "500"])
    with pytest.raises(ValueError, match="grad_norms: expected norms >= 0 .*got -2.0 at index 1"):
        gp.ExplosionDetector().feed([1.0, -2.0])
    with pytest.raises(ValueError, match="previous: expected norms >= 0"):
        gp.ExplosionDetector(previous=[1.0, -1.0])
    with pytest.raises(TypeError, match="previous: expected real numbers, got dtype bool"):
        gp.ExplosionDetector(previous=[True, False])
