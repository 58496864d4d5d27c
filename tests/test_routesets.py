"""Route sets (names, parsing, the standard sets of each cell) and the driver rule."""

import json
import math

import pytest
from cells import CONFIGS, Henon

import gradpaths as gp
from gradpaths._routesets import (
    DRIVER_KINDS,
    GROWTHS,
    RouteSet,
    classify,
    describe,
    standard_sets,
)
from gradpaths._state import layout_of

LSTM = gp.LSTM(2, 3)
LAYOUT = layout_of(LSTM.initial_state())


# --------------------------------------------------------------------------- route sets


def test_standard_sets_of_an_lstm():
    sets = standard_sets(LSTM, LAYOUT)
    assert [s.name for s in sets] == [
        "full", "dc/dc", "dh/dh", "carousel", "z", "i", "f", "o", "carousel+z", "carousel+i",
        "carousel+f", "carousel+o", "all but carousel", "all but z", "all but i", "all but f",
        "all but o"]
    by_name = {s.name: s for s in sets}
    assert by_name["full"] == RouteSet("full", "full", None, None)
    assert by_name["dh/dh"].spec == gp._operator.Spec(None, ("h", "h"))
    assert by_name["carousel+o"].routes == ("carousel", "o")
    assert by_name["all but f"].routes == ("carousel", "z", "i", "o")
    assert by_name["all but f"].focus == "f" and by_name["o"].focus == "o"
    assert by_name["full"].focus is None and str(by_name["all but o"]) == "all but o"
    assert [s.name for s in standard_sets(LSTM, kinds=("full", "alone"))] == [
        "full", "carousel", "z", "i", "f", "o"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_standard_sets_follow_the_cells_routes(name):
    cell = CONFIGS[name](2, 3)
    layout = layout_of(cell.initial_state())
    sets = standard_sets(cell, layout)
    routes = cell.routes
    alone = [s.focus for s in sets if s.kind == "alone"]
    assert alone == (list(routes) if len(routes) > 1 else [])
    cut = [s.focus for s in sets if s.kind == "all but"]
    assert cut == (list(routes) if len(routes) > 2 else [])
    beside = [s.focus for s in sets if s.kind == "with carousel"]
    assert beside == ([r for r in routes if r != "carousel"] if "carousel" in routes else [])
    for s in sets:          # every name parses back to the same set
        assert RouteSet.parse(s.name, cell, layout) == s


def test_standard_sets_of_a_cell_without_routes():
    henon = Henon()
    layout = layout_of(henon.initial_state())
    assert [s.name for s in standard_sets(henon, layout)] == ["full", "dx/dx", "dy/dy"]


def test_parse_unions_in_the_cells_order():
    assert RouteSet.parse(" o+carousel ", LSTM) == RouteSet("carousel+o", "with carousel",
                                                          ("carousel", "o"), None)
    assert RouteSet.parse("o+z", LSTM) == RouteSet("z+o", "set", ("z", "o"), None)
    assert describe("z+o") == ("set", None) and describe("dc/dc") == ("block", None)


def test_parse_errors():
    with pytest.raises(TypeError, match="expected a name"):
        RouteSet.parse(3, LSTM)
    with pytest.raises(ValueError, match="cuts 'q'; expected one of"):
        RouteSet.parse("all but q", LSTM)
    with pytest.raises(ValueError, match="expected route names among"):
        RouteSet.parse("z+q", LSTM)
    with pytest.raises(ValueError, match="needs the state layout"):
        RouteSet.parse("dc/dc", LSTM)
    with pytest.raises(ValueError, match="diagonal block"):
        RouteSet.parse("dc/dh", LSTM, LAYOUT)
    with pytest.raises(ValueError, match="defines no routes"):
        RouteSet.parse("o", Henon())
    with pytest.raises(ValueError, match="leaves no route"):
        RouteSet.parse("all but R", gp.RNN(2, 3))
    with pytest.raises(ValueError, match="kinds: expected names among"):
        standard_sets(LSTM, kinds=("alone", "pairs"))


# --------------------------------------------------------------------------- the driver rule


ROUTES = ("carousel", "z", "i", "f", "o")


def lstm_driver(full, alone, cut, beside=None, margin=1e-3):
    return classify(full, dict(zip(ROUTES, alone)), dict(zip(ROUTES, cut)),
                    None if beside is None else dict(zip(ROUTES[1:], beside)), margin=margin)


def test_a_route_growing_alone_drives_even_when_another_cut_drops_more():
    # z grows alone (+0.02); cutting o lowers the exponent most (0.05 -> -0.02).
    d = lstm_driver(0.05, [-0.1, 0.02, -0.3, -0.3, -0.01], [0.04, 0.04, 0.05, 0.05, -0.02])
    assert (d.growth, d.kind, d.route, d.cut) == ("explodes", "route", "z", "o")
    assert d.alone == ("z",) and d.necessary == ("o",) and d.dominant == "z"


def test_interaction_picks_the_largest_drop_without_a_contracting_carousel():
    # No route grows alone; the carousel's cut drops most but it contracts alone
    # (+0.0005 is within the margin: neutral, not growing).
    d = lstm_driver(0.05, [0.0005, -0.2, -0.3, -0.3, -0.1], [-0.5, 0.03, 0.05, 0.05, -0.01],
                    beside=[0.01, -0.1, -0.1, 0.0])
    assert (d.kind, d.route, d.cut) == ("interaction", "o", "o")
    assert d.necessary == ("carousel", "o") and d.with_carousel == ("z",)
    # With the carousel growing alone (above the margin) it is a driver like any route.
    d = lstm_driver(0.05, [0.002, -0.2, -0.3, -0.3, -0.1], [-0.5, 0.03, 0.05, 0.05, -0.01])
    assert (d.kind, d.route, d.cut) == ("route", "carousel", "carousel")


def test_an_exactly_zero_cut_is_the_largest_drop():
    d = lstm_driver(0.05, [-0.1, -0.2, -0.3, -0.3, -0.1], [0.02, 0.03, -math.inf, 0.05, -0.5])
    assert d.cut == d.route == "i"
    # Both exactly zero: nothing to compare, no route is a candidate.
    d = lstm_driver(-math.inf, [-math.inf] * 5, [-math.inf] * 5)
    assert (d.growth, d.kind, d.route, d.cut) == ("vanishes", "none", None, None)


def test_growth_vocabulary_and_the_margin():
    alone, cut = [-0.1] * 5, [-0.1] * 5
    assert lstm_driver(1e-3, alone, cut).growth == "neutral"        # the band is closed
    assert lstm_driver(-1e-3, alone, cut).growth == "neutral"
    assert lstm_driver(-2e-3, alone, cut).growth == "vanishes"
    assert lstm_driver(2e-3, alone, cut).growth == "explodes"
    assert lstm_driver(0.02, alone, cut, margin=0.05).growth == "neutral"
    assert {lstm_driver(v, alone, cut).growth for v in (-1, 0, 1)} == set(GROWTHS)
    assert lstm_driver(1.0, alone, cut).kind in DRIVER_KINDS


def test_fewer_than_two_routes():
    assert classify(0.4, {}).kind == "unknown"
    assert classify(0.4, {"R": 0.4}).kind == "unknown"
    assert classify(-0.4, {"R": -0.4}) == gp.Driver("vanishes", "none", None, None, (), (), (),
                                                     -0.4, 1e-3)


def test_two_routes_cut_one_keeps_the_other():
    d = classify(0.1, {"a": -0.2, "b": 0.01})
    assert (d.kind, d.route, d.cut, d.necessary) == ("route", "b", "b", ("b",))


def test_classify_errors_and_json():
    with pytest.raises(gp.NonFiniteError, match="route 'z' alone is NaN"):
        classify(0.1, {"carousel": 0.0, "z": math.nan})
    with pytest.raises(gp.NonFiniteError, match="full product's exponent is NaN"):
        classify(math.nan, {})
    with pytest.raises(ValueError, match="margin: expected a number >= 0"):
        classify(0.1, {}, margin=-1)
    d = lstm_driver(0.05, [-0.1, 0.02, -0.3, -0.3, -0.01], [0.04, 0.04, 0.05, 0.05, -0.02])
    data = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert data == dict(growth="explodes", kind="route", route="z", cut="o", dominant="z",
                        alone=["z"], necessary=["o"], with_carousel=[], exponent=0.05,
                        margin=1e-3, layer=None)
    assert classify(-math.inf, {}).to_dict()["exponent"] == "-inf"
