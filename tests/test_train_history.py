"""History and Event JSON: one encoding of NaN and infinities, read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradpaths as gp

INF, NAN = np.inf, np.nan


def _history():
    """A hand-made history with NaN, inf and -inf wherever numbers live."""
    event = gp.Event(3, "nonfinite", INF, 2.0, "o", {"o": 0.5, "z": -INF, "f": NAN},
                     "step 3: gradient norm inf; NaN or inf")
    return gp.History(
        ("z", "o", "f"), ("i",), 1 / 6, step=np.arange(4), loss=np.array([1.0, NAN, INF, -INF]),
        task_loss=np.array([1.0, NAN, INF, -INF]), penalty=np.zeros(4),
        grad_norm=np.array([0.5, 1.0, 2.0, INF]), clipped=np.array([False, True, False, True]),
        probe_step=np.array([0, 4]), probe_loss=np.array([1.0, NAN]),
        top_exponent=np.array([-INF, 0.25]),
        route_exponents=np.array([[0.1, -INF, NAN], [INF, 0.0, -1.0]]),
        cut_exponents=np.array([[NAN, NAN, NAN], [1.0, 2.0, 3.0]]),
        saturation=np.array([[0.0], [1.0]]), events=[event], stopped="nonfinite")


def test_nan_and_infinities_round_trip_through_json():
    h = _history()
    d = h.to_dict()
    assert d["loss"] == [1.0, "nan", "inf", "-inf"]
    assert d["route_exponents"][0] == [0.1, "-inf", "nan"]
    assert d["events"][0]["grad_norm"] == "inf"
    assert d["events"][0]["route_drop"] == {"o": 0.5, "z": "-inf", "f": "nan"}
    back = gp.History.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    for name in ("step", "loss", "task_loss", "grad_norm", "clipped", "probe_step",
                 "probe_loss", "top_exponent", "route_exponents", "cut_exponents", "saturation"):
        np.testing.assert_array_equal(getattr(back, name), getattr(h, name), err_msg=name)
    (e,), (e0,) = back.events, h.events
    assert (e.step, e.kind, e.grad_norm, e.median, e.dominant_route, e.message) == (
        e0.step, e0.kind, e0.grad_norm, e0.median, e0.dominant_route, e0.message)
    assert e.route_drop["z"] == -INF and np.isnan(e.route_drop["f"])
    assert back.to_dict() == d
    assert (back.routes, back.gates, back.baseline, back.stopped) == (h.routes, h.gates, 1 / 6,
                                                                      "nonfinite")


def test_only_what_is_written_is_read():
    d = _history().to_dict()
    for field, bad in (("loss", [1.0, None, 2.0, 3.0]), ("top_exponent", ["NaN", 0.0]),
                       ("baseline", "x")):
        with pytest.raises(ValueError, match=rf"{field}: expected a number or 'nan'/'inf'/"
                           rf"'-inf', got"):
            gp.History.from_dict({**d, field: bad})
    with pytest.raises(ValueError, match=r"route_exponents: expected rows of 3 numbers"):
        gp.History.from_dict({**d, "route_exponents": [[0.0, 1.0], [2.0, 3.0]]})
    with pytest.raises(ValueError, match="kind: expected one of 'explosion', 'nonfinite'"):
        gp.History.from_dict({**d, "events": [{**d["events"][0], "kind": "boom"}]})


def test_records_of_a_history_build_it_back():
    """records() -> from_records() keeps the probes and events (steps become the
    probes' steps: a user's loop records probes, not every step)."""
    h = _history()
    records = h.records()
    assert [type(r).__name__ for r in records] == ["Probe", "Event", "Probe"]
    assert records[0].grad_norm == 0.5 and records[2].grad_norm is None    # no step 4
    back = gp.History.from_records(records, baseline=h.baseline)
    np.testing.assert_array_equal(back.probe_step, h.probe_step)
    np.testing.assert_array_equal(back.step, h.probe_step)
    np.testing.assert_array_equal(back.grad_norm, [0.5, NAN])
    for name in ("probe_loss", "top_exponent", "route_exponents", "cut_exponents",
                 "saturation"):
        np.testing.assert_array_equal(getattr(back, name), getattr(h, name), err_msg=name)
    assert back.events == h.events and back.routes == h.routes and back.gates == h.gates
    with pytest.raises(ValueError, match="expected every probe to carry its step"):
        gp.History.from_records([records[0]._replace(step=None)])
    with pytest.raises(ValueError, match="expected probes of one cell"):
        gp.History.from_records([records[0], records[2]._replace(routes=("c",) * 3)])
