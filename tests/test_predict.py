"""Event-prediction statistics, on synthetic histories with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradpaths as gp

# Ten probes every 10 steps; alarms (score > 0) at probes 0, 2, 5, 6, 8.
PROBES = np.arange(0, 100, 10)
SCORE = np.array([0.4, -1, 0.5, -1, -1, 0.2, 0.3, -1, 0.1, -1])
EVENTS = [25, 45, 65, 95]


def test_known_history():
    p = gp.predict_events(EVENTS, PROBES, SCORE, window=2)
    # Run-ups (last 2 probes at or before e): 25 -> {10, 20}; 45 -> {30, 40};
    # 65 -> {50, 60}; 95 -> {80, 90}.
    np.testing.assert_array_equal(p.hit, [True, False, True, True])
    np.testing.assert_array_equal(p.lead, [5, np.nan, 15, 15])       # first alarm of the run-up
    np.testing.assert_array_equal(p.in_run_up, [0, 1, 1, 1, 1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(p.false_alarm, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert (p.n_events, p.n_hits, p.n_misses, p.n_alarms, p.n_false_alarms) == (4, 3, 1, 5, 1)
    assert p.recall == 3 / 4 and p.precision == 4 / 5
    assert p.false_alarm_rate == 1 / 2          # probes 0 and 7 are in no run-up
    s = p.summary()
    assert (s["lead_median"], s["lead_min"], s["lead_max"], s["leads"]) == (15, 5, 15, [5, 15, 15])


def test_a_wider_window_reaches_further_back():
    p = gp.predict_events(EVENTS, PROBES, SCORE, window=3)
    # 45 -> {20, 30, 40}: the alarm at 20 now counts, 25 steps ahead.
    np.testing.assert_array_equal(p.lead, [25, 25, 15, 15])
    assert p.n_false_alarms == 0 and p.precision == 1.0


def test_window_larger_than_the_history():
    p = gp.predict_events(EVENTS, PROBES, SCORE, window=1000)
    # Every run-up starts at probe 0, which alarms.
    np.testing.assert_array_equal(p.lead, np.array(EVENTS) - 0)
    assert p.in_run_up.all() and p.n_false_alarms == 0 and math.isnan(p.false_alarm_rate)


def test_no_events():
    p = gp.predict_events([], PROBES, SCORE, window=2)
    assert p.n_events == 0 and math.isnan(p.recall)
    assert p.n_false_alarms == p.n_alarms == 5 and p.precision == 0.0
    assert p.false_alarm_rate == 5 / 10
    assert p.summary()["lead_median"] is None


def test_no_probes():
    p = gp.predict_events(EVENTS, [], [], window=2)
    assert p.n_misses == 4 and p.recall == 0.0 and np.isnan(p.lead).all()
    assert math.isnan(p.precision) and math.isnan(p.false_alarm_rate)


def test_event_before_the_first_probe_is_a_miss():
    p = gp.predict_events([3, 12], [5, 10], [1.0, 1.0], window=5)
    np.testing.assert_array_equal(p.hit, [False, True])
    assert p.lead[1] == 7


def test_min_lead_excludes_the_probe_at_the_event_step():
    at = gp.predict_events([20], PROBES, SCORE, window=1)            # probe 20 alarms
    ahead = gp.predict_events([20], PROBES, SCORE, window=1, min_lead=1)
    assert at.hit[0] and at.lead[0] == 0
    assert not ahead.hit[0]                      # its run-up is probe 10, which is quiet
    assert ahead.false_alarm[2]                 # the alarm at 20 is then in no run-up


def test_nan_scores_never_alarm():
    score = SCORE.copy()
    score[2] = np.nan
    p = gp.predict_events(EVENTS, PROBES, score, window=2)
    assert not p.hit[0] and p.n_alarms == 4


def brute_force(events, probes, score, window, threshold, min_lead):
    """The definitions read the other way round: an alarm at probe j is followed by an
    event e when ``p_j <= e - min_lead < p_{j+K}``; an event is hit when such an alarm
    exists, with the earliest one giving the lead."""
    P = len(probes)
    nxt = lambda j: probes[j + window] if j + window < P else np.inf
    covers = lambda j, e: probes[j] <= e - min_lead < nxt(j)
    hits, leads = [], []
    for e in sorted(events):
        alarms = [j for j in range(P) if score[j] > threshold and covers(j, e)]
        hits.append(bool(alarms))
        leads.append(e - probes[alarms[0]] if alarms else np.nan)
    false = [score[j] > threshold and not any(covers(j, e) for e in events) for j in range(P)]
    return np.array(hits), np.array(leads), np.array(false, bool)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_the_definitions_read_the_other_way(seed):
    rng = np.random.default_rng(seed)
    probes = np.cumsum(rng.integers(1, 15, 30))
    score = rng.normal(0, 1, 30)
    events = rng.choice(np.arange(0, probes[-1] + 20), 12, replace=False)
    for window in (1, 3, 50):
        for min_lead in (0, 4):
            p = gp.predict_events(events, probes, score, window=window, threshold=0.3,
                                  min_lead=min_lead)
            hits, leads, false = brute_force(events, probes, score, window, 0.3, min_lead)
            np.testing.assert_array_equal(p.hit, hits)
            np.testing.assert_array_equal(p.lead, leads)
            np.testing.assert_array_equal(p.false_alarm, false)


def make_history():
    h = gp.History(("carousel", "o"), (), None)
    h.probe_step = PROBES
    h.top_exponent = SCORE
    h.route_exponents = np.stack([np.full(10, -0.5), SCORE - 0.45], axis=1)
    event = lambda step, kind: gp.Event(step, kind, 1e3, 1.0, "o", {}, "")
    h.events = [event(25, "explosion"), event(45, "explosion"), event(65, "nonfinite"),
                event(95, "other")]
    return h


def test_from_a_history_and_its_events():
    h = make_history()
    p = gp.history_prediction(h, window=2)
    np.testing.assert_array_equal(p.event_step, [25, 45, 65])    # "other" does not count
    np.testing.assert_array_equal(p.hit, [True, False, True])
    only = gp.history_prediction(h, window=2, kinds=("explosion",))
    np.testing.assert_array_equal(only.event_step, [25, 45])
    route = gp.history_prediction(h, window=2, score="o")         # alarms at probe 2 only
    np.testing.assert_array_equal(np.nonzero(route.alarm)[0], [2])
    np.testing.assert_array_equal(route.hit, [True, False, False])
    never = gp.history_prediction(h, window=2, score="carousel")
    assert never.n_alarms == 0 and never.recall == 0.0


def test_pooled_over_runs():
    a = gp.predict_events(EVENTS, PROBES, SCORE, window=2)
    b = gp.predict_events([], PROBES, SCORE, window=2)
    s = gp.pooled_predictions([a, b])
    assert (s["runs"], s["events"], s["hits"], s["alarms"], s["false_alarms"]) == (2, 4, 3, 10, 6)
    assert s["recall"] == 3 / 4 and s["precision"] == 4 / 10
    assert s["false_alarm_rate"] == 6 / 12 and s["leads"] == [5, 15, 15]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"window": 0}, ValueError, "window"),
    ({"window": 2, "min_lead": -1}, ValueError, "min_lead"),
    ({"window": 2, "threshold": math.nan}, ValueError, "threshold: expected a finite float"),
    ({"window": 2, "probe_step": PROBES[::-1]}, ValueError, "increasing"),
    ({"window": 2, "score": SCORE[:3]}, ValueError, r"score: expected shape \(10,\)"),
    ({"window": 2, "events": [2.5]}, TypeError, "integer steps"),
])
def test_bad_input(kwargs, error, match):
    args = {"events": EVENTS, "probe_step": PROBES, "score": SCORE, **kwargs}
    with pytest.raises(error, match=match):
        gp.predict_events(args.pop("events"), args.pop("probe_step"), args.pop("score"), **args)
    with pytest.raises(ValueError, match="at least one"):
        gp.pooled_predictions([])
