"""Figures: each plot function returns a Figure with the expected axes, labels and data
(the numbers behind them are tested in test_views.py, test_sweep.py and others)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from helpers import assert_close
from matplotlib.figure import Figure

import gradpaths as gp
from gradpaths._train import Event, History

T, N, WARMUP = 60, 8, 15          # the sizes of the command-line tests: compiled code is shared


@pytest.fixture(scope="module")
def model():
    cell, params, xs = gp.exploding_lstm(hidden=N, steps=T)
    return cell, params, xs, gp.explain(cell, params, xs, warmup=WARMUP)


def labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_namespace_is_lazy_and_explicit():
    assert gp.plot.__all__ == ["gate_saturation", "growth_curves", "jacobian_blocks",
                               "lyapunov_spectrum", "phase_diagram", "route_use_counts",
                               "step_spectra", "training_curves"]
    for name in gp.plot.__all__:
        assert getattr(gp.plot, name).__doc__


# --------------------------------------------------------------------------- growth curves


def test_plot_growth_curves(model):
    cell, params, xs, _ = model
    curves = gp.growth_curves(cell, params, xs, sets=["full", "carousel", "all but o"])
    fig = gp.plot.growth_curves(curves)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "horizon j (steps)"
    assert "nats" in ax.get_ylabel()
    assert ax.get_title() == "Growth of the Jacobian product by route set"
    assert labels(ax) == [f"{k}: {v[-1] / T:+.4f} nats/step" for k, v in curves.items()]
    lines = [line for line in ax.get_lines() if line.get_label() in labels(ax)]
    np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(1, T + 1))
    np.testing.assert_array_equal(lines[0].get_ydata(), curves["full"])


def test_plot_growth_curves_gap_for_exact_zero():
    fig = gp.plot.growth_curves({"f": np.array([0.0, -1.0, -np.inf, -np.inf])})
    (ax,) = fig.axes
    assert labels(ax) == ["f: exactly 0"]
    assert np.isnan(ax.get_lines()[0].get_ydata()[2:]).all()
    with pytest.raises(ValueError, match="non-empty mapping"):
        gp.plot.growth_curves({})


# --------------------------------------------------------------------------- step spectra


def test_plot_step_spectra_marks_input_events(model):
    cell, params, xs, ex = model
    spectra = gp.step_spectra(cell, params, xs)
    fig = gp.plot.step_spectra(spectra, xs=xs, local=ex.local)
    top, bottom = fig.axes
    assert bottom.get_xlabel() == "step t"
    assert top.get_ylabel() == "log factor per step\n(nats/step)"
    events = gp.input_events(xs)
    size = np.linalg.norm(np.asarray(xs), axis=1)
    assert len(events) == 5 and set(events) == set(np.argsort(-size)[:5])
    marked = sorted({line.get_xdata()[0] for line in top.get_lines()
                     if line.get_linestyle() == "--"})
    np.testing.assert_array_equal(marked, events)
    text = labels(top)
    assert text[0].endswith(f"mean {np.mean(np.log(np.asarray(spectra.norm))):+.3f}")
    assert text[1].endswith(f"mean {np.mean(np.log(np.asarray(spectra.radius))):+.3f}")
    assert "largest inputs" in text
    assert bottom.get_ylabel() == r"input $|x_t|_2$"
    # Without inputs: one axes, events given explicitly.
    fig = gp.plot.step_spectra(spectra, events=[3, 7])
    (ax,) = fig.axes
    assert ax.get_xlabel() == "step t"
    with pytest.raises(ValueError, match="events"):
        gp.plot.step_spectra(spectra, events=[T])


# --------------------------------------------------------------------------- Jacobian blocks


def test_plot_jacobian_blocks(model):
    cell, params, xs, _ = model
    step = 10
    mats = gp.route_jacobians(cell, params, xs[: step + 1])
    fig = gp.plot.jacobian_blocks(mats, step=step)
    heatmaps = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title().split()[0] for ax in heatmaps] == ["full", "carousel", "z", "i", "f",
                                                              "o"]
    assert len(fig.axes) == 12                       # six heatmaps, six colour bars
    full = heatmaps[0].get_images()[0].get_array()
    J = np.asarray(gp.step_jacobians(cell, params, xs[: step + 1]).matrix[step])
    assert_close(full, J)
    assert heatmaps[0].get_title() == f"full   max |J| = {np.max(np.abs(J)):.3g}"
    ax = heatmaps[0]
    assert ax.get_xlabel() == "from state unit at t" and ax.get_ylabel() == "to state unit at t+1"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["$c_t$", "$h_t$"]
    assert fig._suptitle.get_text() == (f"Step Jacobian by route at step t = {step}\n"
                                        "(rows: outputs, columns: inputs)")
    with pytest.raises(ValueError, match="step"):
        gp.plot.jacobian_blocks(mats)
    single = gp.plot.jacobian_blocks(J)
    assert len([a for a in single.axes if a.get_images()]) == 1


# --------------------------------------------------------------------------- spectrum, counts


def test_plot_lyapunov_spectrum(model):
    cell, params, xs, ex = model
    lam = np.asarray(gp.lyapunov_exponents(cell, params, xs, k=2 * N, warmup=WARMUP))
    assert_close(lam[0], ex.exponent)
    fig = gp.plot.lyapunov_spectrum({"full": lam, "singular": np.array([0.1, -np.inf])})
    (ax,) = fig.axes
    assert ax.get_ylabel() == r"Lyapunov exponent $\lambda_i$  (nats/step)"
    assert ax.get_xlabel().startswith("index i")
    assert labels(ax)[:2] == [f"full: λ₁ = {lam[0]:+.4f}, Σλ = {lam.sum():+.3f}",
                              "singular: λ₁ = +0.1000 (1 at -inf, not drawn)"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), lam)


def test_plot_route_use_counts(model):
    cell, params, xs, _ = model
    counts = gp.route_use_counts(cell, params, xs, route="o", start=WARMUP, stop=T)
    fig = gp.plot.route_use_counts(counts, route="o")
    (ax,) = fig.axes
    L = T - WARMUP
    assert ax.get_xlabel() == f"k: uses of route o in the window of {L} steps"
    assert ax.get_ylabel() == r"$\log\|C_k\|_2$  (nats)"
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(L + 1))
    np.testing.assert_allclose(line.get_ydata(), np.asarray(counts.log_norms))
    best = int(np.argmax(np.asarray(counts.log_norms)))
    assert f"largest at k = {best} of {L}" in labels(ax)
    # The sum of all coefficients is the whole product over the window.
    whole = np.log(np.linalg.norm(np.asarray(counts.coefficients).sum(0), 2))
    product = gp.product_singular_values(cell, params, xs, start=WARMUP, stop=T)[0]
    assert_close(whole, product)
    assert any(f"= {whole:.2f}" in t for t in labels(ax))


# --------------------------------------------------------------------------- saturation


def test_plot_gate_saturation(model):
    cell, params, xs, _ = model
    sat = gp.gate_saturation(cell, params, xs)
    fig = gp.plot.gate_saturation(sat, window=5)
    high, low = fig.axes
    assert low.get_xlabel() == "step t"
    assert high.get_ylabel() == "units saturated\nat the high end (%)"
    assert low.get_ylabel() == "units saturated\nat the low end (%)"
    assert labels(high) == [f"{g} (mean {100 * sat.high[:, k].mean():.0f}%)"
                            for k, g in enumerate(sat.gates)]
    assert "5-step average" in high.get_title()
    with pytest.raises(ValueError, match="window"):
        gp.plot.gate_saturation(sat, window=0)


# --------------------------------------------------------------------------- training


def _history(scale=1.0):
    routes = ("carousel", "z", "i", "f", "o")
    h = History(routes, ("z", "i", "f", "o"), 1 / 6)
    h.step = np.arange(40)
    h.loss = np.linspace(1.0, 0.1, 40) * scale
    h.task_loss, h.penalty = h.loss, np.zeros(40)
    h.grad_norm = np.full(40, 0.5)
    h.grad_norm[[12, 30]] = [80.0, 40.0]
    h.clipped = h.grad_norm > 1.0
    h.probe_step = np.array([0, 20, 40])
    h.probe_loss = np.array([1.0, 0.5, 0.1])
    h.top_exponent = np.array([0.05, 0.01, -0.02])
    h.route_exponents = np.array([[-0.01, -2.0, -3.0, -4.0, -0.5]] * 3)
    h.saturation = np.zeros((3, 4))
    h.events = [Event(12, "explosion", 80.0, 0.5, "o", {}, "step 12"),
                Event(30, "explosion", 40.0, 0.5, "o", {}, "step 30"),
                Event(35, "nonfinite", np.nan, 0.5, "o", {}, "step 35")]
    return h


def test_plot_training_curves_single_run():
    h = _history()
    fig = gp.plot.training_curves(h, clip=1.0)
    loss, grad, exp = fig.axes
    assert exp.get_xlabel() == "training step"
    assert loss.get_yscale() == grad.get_yscale() == "log"
    assert exp.get_yscale() == "symlog" and exp.get_ylabel().endswith("(nats/step, symlog)")
    assert loss.get_title() == "Training curves (2 explosion events marked)"
    crosses = [line for line in grad.get_lines() if line.get_marker() == "x"][0]
    np.testing.assert_array_equal(crosses.get_xdata(), [12, 30])
    np.testing.assert_array_equal(crosses.get_ydata(), [80.0, 40.0])
    assert "explosions: 2\n  (dominant route: o x2)" in labels(grad)
    assert "clipping threshold 1" in labels(grad)
    assert "NaN/inf step" in labels(grad)
    assert "trivial baseline 0.167" in labels(loss)
    assert labels(exp) == ["full product", "carousel alone", "z alone", "i alone", "f alone",
                           "o alone"]


def test_plot_training_curves_compare_runs():
    fig = gp.plot.training_curves({"no clipping": _history(), "clip 1": _history(0.5)})
    loss, grad, exp = fig.axes
    assert [t for t in labels(loss) if "final" in t] == ["no clipping (final 0.1)",
                                                         "clip 1 (final 0.05)"]
    assert exp.get_yscale() == "linear"
    assert labels(exp) == ["no clipping: full product", "clip 1: full product"]
    assert loss.get_title() == "Training curves (4 explosion events marked)"
    with pytest.raises(TypeError, match="History"):
        gp.plot.training_curves({"x": object()})


def test_plot_training_curves_from_records(tmp_path):
    """A records file (or the list read from it) is drawn as its History of records:
    one point per probe, the explosions marked where the events say."""
    h = _history()
    h.cut_exponents = h.route_exponents - 0.5
    path = tmp_path / "run.jsonl"
    for r in h.records():
        gp.append_record(path, r)
    for given in (path, str(path), gp.read_records(path), {"mine": path}):
        loss, grad, exp = gp.plot.training_curves(given).axes
        full = [line for line in exp.get_lines() if line.get_label().endswith("full product")]
        np.testing.assert_array_equal(full[0].get_xdata(), [0, 20, 40])
        np.testing.assert_array_equal(full[0].get_ydata(), [0.05, 0.01, -0.02])
        norms = [line for line in grad.get_lines() if line.get_label().endswith("gradient norm")]
        np.testing.assert_array_equal(norms[0].get_xdata(), [0, 20, 40])
        np.testing.assert_array_equal(norms[0].get_ydata(), [0.5, 0.5, np.nan])  # none at 40
        crosses = [line for line in grad.get_lines() if line.get_marker() == "x"][0]
        np.testing.assert_array_equal(crosses.get_xdata(), [12, 30])
        assert len(loss.get_lines()[0].get_xdata()) == 3
    with pytest.raises(ValueError, match="records: no such file"):
        gp.plot.training_curves(tmp_path / "none.jsonl")
    result = gp.TrainResult(None, None, h)          # a TrainResult is a tuple, not records
    np.testing.assert_array_equal(gp.plot.training_curves(result).axes[0].get_lines()[0]
                                  .get_xdata(), np.arange(40))


def _drawn(fig):
    """Render ``fig`` to PNG bytes (matplotlib's log-scale errors come at drawing)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["no grad_norm", "NaN norms"])
def test_plot_training_curves_without_a_positive_gradient_norm(case):
    """Probes taken without grad_norm (it is optional) or a run whose norms are all NaN:
    the figure is drawn, the gradient panel stays linear and says why it is empty, and
    the probes' exponents are drawn as usual."""
    routes = ("carousel", "o")
    probe = gp.Probe(None, -0.25, np.array([0.1, -0.3]), np.array([-0.2, 0.2]), np.zeros(0),
                     None, None, routes, ())
    records = [probe._replace(step=s, top_exponent=-0.1 * k) for k, s in enumerate((0, 5, 10))]
    if case == "NaN norms":
        records = [r._replace(grad_norm=np.nan, loss=np.nan) for r in records]
        records.append(Event(7, "nonfinite", np.nan, np.nan, None, {}, "step 7: NaN"))
    fig = gp.plot.training_curves(records)
    assert _drawn(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    loss, grad, exp = fig.axes
    assert grad.get_yscale() == "linear" and loss.get_yscale() == "linear"
    assert [t.get_text() for t in grad.texts] == [
        "no positive finite gradient norm recorded\n(probes taken without grad_norm, or "
        "NaN/inf norms)"]
    assert [t.get_text() for t in loss.texts] == ["no positive finite loss recorded"]
    assert grad.get_ylabel() == "gradient norm\nbefore clipping"
    full = [line for line in exp.get_lines() if line.get_label() == "full product"][0]
    np.testing.assert_array_equal(full.get_xdata(), [0, 5, 10])
    np.testing.assert_allclose(full.get_ydata(), [0.0, -0.1, -0.2])
    # One positive norm is enough for the log scale (and no note).
    records[0] = records[0]._replace(grad_norm=2.0, loss=1.0)
    loss, grad, _ = gp.plot.training_curves(records).axes
    assert grad.get_yscale() == loss.get_yscale() == "log" and not grad.texts


# --------------------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def small_sweep():
    return gp.sweep(gains=[1.0, 8.5, 16.0], forget_biases=[0.0, 4.0], steps=50, warmup=10,
                    hidden=6, scaled=("z", "o"))      # the command-line test's grid


def test_plot_phase_diagram(small_sweep):
    fig = gp.plot.phase_diagram(small_sweep)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.collections and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["full product", "carousel alone", "z alone",
                                                 "o alone", "all but z", "all but o"]
    ax = panels[0]
    assert ax.get_xlabel() == "forget bias $b_f$" and ax.get_ylabel() == "gain of R_z, R_o"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "8.5", "16"]
    mesh = ax.collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 2),
                               small_sweep.exponent("full"))
    v = small_sweep.exponent("full")[2, 1]
    assert any(t.get_text() == (f"{v:+.2f}" if abs(v) >= 0.1 else f"{v:+.3f}")
               for t in ax.texts)
    colourbar = [a for a in fig.axes if a.get_ylabel().startswith("top Lyapunov exponent")]
    assert len(colourbar) == 1 and "nats/step" in colourbar[0].get_ylabel()
    fig = gp.plot.phase_diagram(small_sweep, names=["full"])
    assert len([a for a in fig.axes if a.get_title()]) == 1


def test_no_pyplot_state():
    """Figures are built without pyplot: nothing global to close."""
    import sys

    gp.plot.growth_curves({"full": np.arange(3.0)})
    if "matplotlib.pyplot" in sys.modules:
        assert matplotlib.pyplot.get_fignums() == []
