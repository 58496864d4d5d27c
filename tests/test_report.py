"""Renderers: one table per result, as text (``str``) and Markdown (report folders), with
the same numbers in both."""

import math

import numpy as np
import pytest

import gradpaths as gp
from gradpaths import _explain, _render, _report, _sweep
from gradpaths._routesets import classify


def _explanation():
    rows = (gp.GrowthRow("full", "full", None, None, 0.0512, 0.0498, (0.0512,)),
            gp.GrowthRow("carousel", "alone", ("carousel",), None, -0.25, -0.26, (-0.25,)),
            gp.GrowthRow("o", "alone", ("o",), None, -math.inf, -math.inf, (-math.inf,)),
            gp.GrowthRow("all but o", "all but", ("carousel",), None, -0.031, -0.02,
                         (-0.031,), horizon_converged=False))
    driver = classify(0.0512, {"carousel": -0.25, "o": -math.inf})
    return gp.Explanation(
        cell="LSTM(input_size=1, hidden_size=2)", steps=40, batch=1, warmup=5, margin=1e-3,
        rows=rows, driver=driver, local=np.zeros(40), peak_steps=((7, 0.5), (3, 0.25)),
        units=(("c[0]", 0.6), ("h[1]", 0.3)),
        saturation={"i": {"low": 0.125, "high": 0.0}, "f": {"low": 0.0, "high": 0.5}},
        verdict="Gradients explode.")


def test_text_and_markdown_tables_carry_the_same_numbers():
    ex = _explanation()
    text = _explain.growth_table(ex, "text")
    markdown = _explain.growth_table(ex, "markdown")
    assert text[0].split() == ["Jacobian", "sequence", "top", "exponent", "horizon", "growth",
                               "e-fold", "steps"]
    assert markdown[0] == ("| Jacobian sequence | kind | top exponent (nats/step) | horizon "
                           "growth (nats/step) | e-fold steps |")
    expected = [["full", "+0.0512", "+0.0498", "19.5"], ["carousel", "-0.2500", "-0.2600", "4"],
                ["o", "-inf", "-inf", "-"], ["all but o", "-0.0310", "-0.0200*", "32.3"]]
    body = [line for line in text if line[:1].isalpha() and not line.startswith("Jacobian")]
    assert [line.replace("all but o", "all_but_o").split() for line in body] == [
        [c.replace("all but o", "all_but_o") for c in row] for row in expected]
    cells = [[c.strip().strip("`") for c in line.strip("|").split("|")] for line in markdown[2:6]]
    assert [row[:1] + row[2:] for row in cells] == expected
    assert [row[1] for row in cells] == ["full", "alone", "alone", "all but"]
    for lines in (text, markdown):      # the notes: lower bound and exactly zero
        assert any("not converged" in t for t in lines)
        assert any("-inf: that product is exactly zero" in t for t in lines)


def test_explanation_text_and_report_body():
    ex = _explanation()
    text = str(ex)
    assert text.splitlines()[0] == ("gradpaths explanation: LSTM(input_size=1, hidden_size=2), "
                                    "T = 40, warm-up 5")
    assert "largest local stretching at steps: 7 (+0.500), 3 (+0.250)" in text
    assert "leading direction lives in units: c[0] (60%), h[1] (30%)" in text
    assert text.endswith("verdict: Gradients explode.")
    sat = _explain.saturation_table(ex, "text")
    assert sat[1].split() == ["i", "12.5%", "0.0%"] and sat[2].split() == ["f", "0.0%", "50.0%"]
    md = _explain.render(ex, "markdown", source="weights.pt, layer 0")
    assert "**Model:** `LSTM(input_size=1, hidden_size=2)`, T = 40, warm-up 5." in md
    assert "**Weights:** weights.pt, layer 0." in md
    assert "| i | 12.5% | 0.0% |" in md
    assert "Largest local stretching at steps: 7 (+0.500 nats), 3 (+0.250 nats)." in md
    with pytest.raises(ValueError, match="fmt: expected one of"):
        _explain.render(ex, "html")


def test_sweep_grid_in_both_formats():
    names = ("full", "carousel", "z", "o", "all but carousel", "all but z", "all but o")
    exps = np.array([[[0.05, -0.2, 0.02, -0.01, 0.04, 0.04, -0.02],
                      [-0.3, -0.4, -0.5, -0.5, -0.3, -0.3, -0.3]]])
    sw = gp.Sweep(np.array([2.0]), np.array([0.0, 4.0]), names, exps, ("o",),
                  dict(hidden=2, steps=10, warmup=0))
    text = _sweep.grid(sw, "text")
    assert text[0].split() == ["gain", "b_f", "full", "carousel", "z", "o", "region", "driver"]
    assert text[1].split() == ["2", "0", "+0.0500", "-0.2000", "+0.0200", "-0.0100", "route",
                               "z"]
    assert text[2].split()[-2:] == ["vanishes", "-"]
    md = _sweep.grid(sw, "markdown")
    assert md[0] == "| gain | b_f | full | carousel | z | o | region | driver |"
    assert md[2] == "| 2 | 0 | +0.0500 | -0.2000 | +0.0200 | -0.0100 | route | z |"
    report = _report.sweep_report(sw)
    assert "\n".join(md) in report.markdown
    assert "1 vanishes, 0 neutral, 1 route, 0 interaction" in report.markdown
    assert str(sw).endswith("\n".join(text))


def test_table_formats():
    cols = [_render.Column("a", 4, "<"), _render.Column("b", 6, unit="u")]
    assert _render.table(cols, [["x", "1"]], "text") == ["a        b", "       (u)", "x        1"]
    assert _render.table(cols, [["x", "1"]], "markdown") == ["| a | b (u) |", "|---|---|",
                                                            "| x | 1 |"]
    assert _render.number(-math.inf) == "-inf" and _render.number(0.5, ".1f") == "0.5"
