r"""Figures: each function takes results and returns a ``matplotlib.figure.Figure``.

Nothing here computes gradients: the numbers come from the library
(:func:`gradpaths.growth_curves`, :func:`gradpaths.step_spectra`,
:func:`gradpaths.route_jacobians`, :func:`gradpaths.lyapunov_exponents`,
:func:`gradpaths.route_use_counts`, :func:`gradpaths.gate_saturation`,
:func:`gradpaths.train`, :func:`gradpaths.sweep`). Figures are built with
``matplotlib.figure.Figure`` directly, never through ``pyplot``: no global state,
no display needed, nothing to close. matplotlib is imported when a function is
called, not when gradpaths is imported. Rates are in nats/step (natural logs).

Save with ``fig.savefig("name.png")``; in a notebook a returned figure is shown
as the cell's output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradpaths import _checks, _routesets
from gradpaths._checks import InputError, InputTypeError

_ROUTE_COLOURS = {
    "full": "black", "carousel": "#1f77b4", "z": "#ff7f0e", "i": "#2ca02c", "f": "#9467bd",
    "o": "#d62728", "peep_i": "#8c564b", "peep_f": "#e377c2", "r": "#2ca02c", "n": "#9467bd",
    "R": "#d62728",
}
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
_EVENT_COLOUR = "#d62728"


def _figure(nrows: int = 1, ncols: int = 1, *, width: float = 8.0, height: float = 4.5,
            **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _colour(name: str, k: int) -> str:
    """A route set's colour: its focus route's (``"o"``, ``"all but o"``,
    ``"carousel+o"`` share the o route's); else the k-th of the cycle."""
    if name in _ROUTE_COLOURS:
        return _ROUTE_COLOURS[name]
    focus = _routesets.describe(name)[1]
    return _ROUTE_COLOURS.get(focus or "", _CYCLE[k % len(_CYCLE)])


_LINESTYLES = {"all but": "--", "with carousel": "-.", "set": "-."}


def _linestyle(name: str) -> str:
    """A route set's line style by kind: dashed for "all but", dash-dot for unions."""
    return _LINESTYLES.get(_routesets.describe(name)[0], "-")


def _finite(a: Any) -> np.ndarray:
    """Float array with infinities turned into NaN (matplotlib leaves gaps there)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _as_1d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise InputError(f"{name}: expected a non-empty 1-D array, got shape {arr.shape}")
    return arr


def _neutral(ax: Any, label: str | None = None) -> None:
    ax.axhline(0.0, color="0.5", lw=0.8, ls=":", zorder=0, label=label)


# --------------------------------------------------------------------------- growth curves


def growth_curves(curves: Mapping[str, Any], *, title: str | None = None) -> Any:
    r"""Growth of the Jacobian product by route set: ``log ||J_{j} ... J_0||_2`` against j.

    The y axis is the log of the norm (natural log, nats), so a straight line is
    exponential growth; the slope, the horizon growth rate ``g[-1] / T`` in
    nats/step, is written in the legend. ``-inf`` (an exactly singular
    restricted product) leaves a gap.

    Args:
      curves: ``name -> (T,)`` log norms, e.g. from :func:`gradpaths.growth_curves`
        or :func:`gradpaths.growth_curve`.
      title: None for the default.

    Returns:
      Figure with one axes: x "horizon j (steps)", y in nats, one legend.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise InputError("curves: expected a non-empty mapping name -> (T,) log norms")
    fig, axes = _figure(width=8.5, height=4.8)
    ax = axes[0, 0]
    for k, (name, g) in enumerate(curves.items()):
        g = _as_1d(g, f"curves[{name!r}]")
        steps = np.arange(1, g.size + 1)
        end = g[-1]
        rate = f"{end / g.size:+.4f} nats/step" if math.isfinite(end) else "exactly 0"
        full = name == "full"
        ax.plot(steps, _finite(g), color=_colour(name, k), ls=_linestyle(name),
                lw=2.2 if full else 1.4, label=f"{name}: {rate}", zorder=3 if full else 2)
    _neutral(ax)
    ax.set_xlabel("horizon j (steps)")
    ax.set_ylabel(r"log $\Vert J_j \cdots J_0 \Vert_2$  (nats; log scale of the norm)")
    ax.set_title(title or "Growth of the Jacobian product by route set")
    ax.legend(title="route set: horizon growth", loc="best", fontsize=8.5, title_fontsize=9)
    ax.grid(alpha=0.25)
    return fig


# --------------------------------------------------------------------------- step spectra


def step_spectra(spectra: Any, *, xs: Any = None, events: Sequence[int] | None = None,
                 top_events: int = 5, local: Any = None, title: str | None = None) -> Any:
    r"""Per-step spectral radius and spectral norm of ``J_t`` over time, inputs marked.

    Plots ``log rho(J_t)`` and ``log ||J_t||_2`` (nats/step: above 0 the step
    stretches), with their means in the legend, and optionally the local
    stretching of the leading direction (``Explanation.local``, whose mean after
    the warm-up is the top exponent). Input events are marked with vertical
    lines: ``events`` if given, else the ``top_events`` steps with the largest
    ``|x_t|`` (:func:`gradpaths.input_events`); with ``xs`` a lower panel shows
    ``|x_t|_2``.

    Args:
      spectra: a :class:`gradpaths.StepSpectra` (``radius``, ``norm`` of shape (T,)).
      xs: None or the inputs (T, m).
      events: None or steps to mark.
      top_events: how many largest-input steps to mark when ``events`` is None.
      local: None or (T,) per-step log stretching of the leading direction (nats).
      title: None for the default.

    Returns:
      Figure with one axes (two with ``xs``), x "step t".
    """
    from gradpaths._views import input_events

    radius = _as_1d(getattr(spectra, "radius", None), "spectra.radius")
    norm = _as_1d(getattr(spectra, "norm", None), "spectra.norm")
    T = radius.size
    if norm.size != T:
        raise InputError(f"spectra: radius and norm differ in length ({T} and {norm.size})")
    if xs is not None:
        xs = np.asarray(xs, np.float64)
        if xs.ndim != 2 or xs.shape[0] != T:
            raise InputError(f"xs: expected shape ({T}, m), got {xs.shape}")
    if events is None:
        chosen = input_events(xs, top=top_events) if xs is not None else np.zeros((0,), int)
    else:
        chosen = np.asarray(events)
    steps = np.asarray(chosen, np.int64).reshape(-1)
    if steps.size and (steps.min() < 0 or steps.max() >= T):
        raise InputError(f"events: expected steps in [0, {T}), got {steps.tolist()}")
    if local is not None:
        local = _as_1d(local, "local")
        if local.size != T:
            raise InputError(f"local: expected shape ({T},), got {local.shape}")
    with_inputs = xs is not None and xs.shape[1] > 0
    fig, axes = _figure(2 if with_inputs else 1, 1, width=10.5, height=5.6 if with_inputs else 4.2,
                        sharex=True, gridspec_kw={"height_ratios": [3, 1]} if with_inputs else None)
    ax = axes[0, 0]
    t = np.arange(T)
    with np.errstate(divide="ignore"):
        log_norm, log_radius = np.log(norm), np.log(radius)
    for series, colour, label in ((log_norm, "#d62728", r"log $\Vert J_t \Vert_2$ (spectral norm)"),
                                  (log_radius, "#1f77b4", r"log $\rho(J_t)$ (spectral radius)")):
        ax.plot(t, _finite(series), color=colour, lw=1.0,
                label=f"{label}, mean {np.nanmean(_finite(series)):+.3f}")
    if local is not None:
        ax.plot(t, _finite(local), color="black", lw=1.0,
                label=f"leading direction's stretching, mean {np.nanmean(_finite(local)):+.3f}")
    _neutral(ax, "0: neither stretches nor shrinks")
    for k, e in enumerate(steps):
        for a in axes[:, 0]:
            a.axvline(e, color="0.35", lw=0.9, ls="--", zorder=0,
                      label="largest inputs" if (k == 0 and a is ax) else None)
    ax.set_ylabel("log factor per step\n(nats/step)")
    ax.set_title(title or "Each step's Jacobian: spectral norm and spectral radius")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5)
    ax.grid(alpha=0.25)
    if with_inputs:
        ax2 = axes[1, 0]
        ax2.plot(t, np.linalg.norm(xs, axis=1), color="0.3", lw=0.9)
        ax2.set_ylabel(r"input $|x_t|_2$")
        ax2.set_xlabel("step t")
        ax2.grid(alpha=0.25)
    else:
        ax.set_xlabel("step t")
    return fig


# --------------------------------------------------------------------------- Jacobian blocks


def jacobian_blocks(jacobians: Any, *, step: int | None = None, layout: Any = None,
                    include_full: bool = True, title: str | None = None) -> Any:
    r"""Heatmaps of the step Jacobian ``J_t[a, b] = d s_{t+1}[a] / d s_t[b]``, one per route.

    Each panel has its own symmetric colour scale (``max |J|`` in its title) and
    lines between the state's fields (LSTM: c then h), labelled on both axes.

    Args:
      jacobians: ``name -> StepJacobians`` (e.g. :func:`gradpaths.route_jacobians`,
        then ``step`` picks the step), ``name -> (T, d, d)`` arrays (with ``step``),
        ``name -> (d, d)`` matrices, a single ``StepJacobians`` or a single
        (T, d, d) / (d, d) array.
      step: the step t (needed when the matrices have a time axis).
      layout: a :class:`gradpaths.Layout` for the field lines (taken from
        ``StepJacobians`` when given those).
      include_full: with several routes and no ``"full"`` entry, add their sum
        (the full Jacobian: routes add up to it exactly).
      title: None for the default.

    Returns:
      Figure with one heatmap axes per matrix (and a colour bar each).
    """
    if not isinstance(jacobians, Mapping):
        jacobians = {"full": jacobians}
    if not jacobians:
        raise InputError("jacobians: expected at least one matrix")
    mats: dict[str, np.ndarray] = {}
    for name, value in jacobians.items():
        if hasattr(value, "matrix") and hasattr(value, "layout"):
            layout = value.layout if layout is None else layout
            value = value.matrix
        arr = np.asarray(value, np.float64)
        if arr.ndim == 3:
            if step is None:
                raise InputError(f"step: expected a step for matrices of shape {arr.shape}, "
                                 "got None")
            if not 0 <= step < arr.shape[0]:
                raise InputError(f"step: expected 0 <= step < {arr.shape[0]}, got {step}")
            arr = arr[step]
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise InputError(f"jacobians[{name!r}]: expected a square matrix, got {arr.shape}")
        mats[str(name)] = arr
    sizes = {a.shape for a in mats.values()}
    if len(sizes) != 1:
        raise InputError(f"jacobians: expected matrices of one shape, got {sorted(sizes)}")
    if include_full and len(mats) > 1 and "full" not in mats:
        mats = {"full": functools.reduce(np.add, mats.values()), **mats}
    d = next(iter(mats.values())).shape[0]
    n = len(mats)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, width=max(4.0 * ncols + 0.6, 6.0),
                        height=3.6 * nrows + 0.4)
    bounds, ticks, labels = [], [], []
    if layout is not None and sum(layout.sizes) == d:
        start = 0
        for name, size in zip(layout.names, layout.sizes, strict=True):
            ticks.append(start + (size - 1) / 2)
            labels.append(name)
            start += size
            bounds.append(start - 0.5)
        bounds = bounds[:-1]
    for k, (name, J) in enumerate(mats.items()):
        ax = axes[k // ncols, k % ncols]
        top = float(np.max(np.abs(J)))
        vlim = top if top > 0 else 1.0
        im = ax.imshow(J, cmap="RdBu_r", vmin=-vlim, vmax=vlim, interpolation="nearest")
        for b in bounds:
            ax.axhline(b, color="black", lw=0.8)
            ax.axvline(b, color="black", lw=0.8)
        if ticks:
            ax.set_xticks(ticks, [f"${lab}_t$" for lab in labels])
            ax.set_yticks(ticks, [f"${lab}_{{t+1}}$" for lab in labels])
        ax.set_title(f"{name}   max |J| = {top:.3g}", fontsize=10)
        ax.set_xlabel("from state unit at t")
        ax.set_ylabel("to state unit at t+1")
        fig.colorbar(im, ax=ax, shrink=0.85, label=r"$\partial s_{t+1}[a] / \partial s_t[b]$")
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    when = f" at step t = {step}" if step is not None else ""
    split = " by route" if n > 1 else ""
    fig.suptitle(title or f"Step Jacobian{split}{when}\n(rows: outputs, columns: inputs)")
    return fig


# --------------------------------------------------------------------------- Lyapunov spectrum


def lyapunov_spectrum(exponents: Any, *, title: str | None = None) -> Any:
    r"""The Lyapunov spectrum ``lambda_1 >= lambda_2 >= ...`` (nats/step).

    Args:
      exponents: (k,) exponents (e.g. :func:`gradpaths.lyapunov_exponents`), or a
        mapping ``name -> (k,)`` to compare spectra (full product, a route set).
        ``-inf`` exponents (exactly singular products) are counted in the legend,
        not drawn.
      title: None for the default.

    Returns:
      Figure with one axes: x "index i", y "lambda_i (nats/step)".
    """
    spectra = dict(exponents) if isinstance(exponents, Mapping) else {"full": exponents}
    if not spectra:
        raise InputError("exponents: expected at least one spectrum")
    fig, axes = _figure(width=7.5, height=4.5)
    ax = axes[0, 0]
    for k, (name, lam) in enumerate(spectra.items()):
        lam = _as_1d(lam, f"exponents[{name!r}]")
        idx = np.arange(1, lam.size + 1)
        finite = np.isfinite(lam)
        label = f"{name}: λ₁ = {lam[0]:+.4f}"
        if finite.all():
            label += f", Σλ = {lam.sum():+.3f}"
        else:
            label += f" ({int((~finite).sum())} at -inf, not drawn)"
        ax.plot(idx[finite], lam[finite], marker="o", ms=3.5, lw=1.0, color=_colour(name, k),
                label=label)
    _neutral(ax, "0: neutral")
    ax.set_xlabel("index i (1 = fastest-growing direction)")
    ax.set_ylabel(r"Lyapunov exponent $\lambda_i$  (nats/step)")
    ax.set_title(title or "Lyapunov spectrum of the Jacobian product")
    ax.legend(loc="best", fontsize=8.5)
    ax.grid(alpha=0.25)
    return fig


# --------------------------------------------------------------------------- route-use counts


def route_use_counts(counts: Any, *, route: str | None = None, title: str | None = None) -> Any:
    r"""How the product over a window splits by the number of uses of one route.

    Plots ``log ||C_k||_2`` (nats) against ``k``, the number of steps of the
    window at which a path takes ``route`` (:func:`gradpaths.route_use_counts`),
    marks the ``k`` carrying the most, and draws the whole product
    ``log ||sum_k C_k||_2`` as a horizontal line. Exact zeros are left out;
    coefficients within a factor 10 of their round-off floor (``counts.resolved``
    False) are drawn as hollow grey markers beside the dotted floor, not as data.

    Args:
      counts: a :class:`gradpaths.RouteUseCounts`.
      route: the route's name, for the labels.
      title: None for the default.

    Returns:
      Figure with one axes: x "k", y "log ||C_k||_2 (nats)".
    """
    log_norms = _as_1d(getattr(counts, "log_norms", None), "counts.log_norms")
    L = log_norms.size - 1
    coeffs = np.asarray(counts.coefficients)
    whole = np.linalg.norm(coeffs.sum(axis=0), 2)
    with np.errstate(divide="ignore"):
        whole_log = float(np.log(whole) + float(counts.log_scale))
    name = route or "the route"
    fig, axes = _figure(width=7.5, height=4.5)
    ax = axes[0, 0]
    k = np.arange(L + 1)
    resolved = np.asarray(getattr(counts, "resolved", np.ones(L + 1, bool)), bool)
    shown = np.where(resolved, _finite(log_norms), np.nan)
    ax.plot(k, shown, marker="o", ms=3.5, lw=1.0, color=_colour(name, 0),
            label=rf"$\log\|C_k\|_2$: paths using {name} exactly k times")
    if not resolved.all():
        floor = _finite(_as_1d(counts.log_floor, "counts.log_floor"))
        ax.plot(k[~resolved], _finite(log_norms)[~resolved], marker="o", ms=3.5, ls="none",
                mfc="none", color="grey", label="below the round-off floor (not data)")
        ax.plot(k, floor, color="grey", ls=":", lw=1.0, label="estimated round-off floor")
    if math.isfinite(whole_log):
        ax.axhline(whole_log, color="black", ls="--", lw=1.0,
                   label=rf"whole product $\log\|\sum_k C_k\|_2$ = {whole_log:.2f}")
    if np.isfinite(shown).any():
        best = int(np.nanargmax(shown))
        ax.plot([best], [log_norms[best]], marker="*", ms=13, color="gold", mec="black",
                ls="none", label=f"largest at k = {best} of {L}")
    ax.set_xlabel(f"k: uses of route {name} in the window of {L} steps")
    ax.set_ylabel(r"$\log\|C_k\|_2$  (nats)")
    ax.set_title(title or f"Route-use counts: where the product's size lies ({name})")
    ax.legend(loc="best", fontsize=8.5)
    ax.grid(alpha=0.25)
    return fig


# --------------------------------------------------------------------------- gate saturation


def gate_saturation(saturation: Any, *, window: int = 1, title: str | None = None) -> Any:
    r"""Fraction of saturated units of each gate over time, near each end of its range.

    Args:
      saturation: a :class:`gradpaths.GateSaturation` (``gates``, ``low`` and
        ``high`` of shape (T, G)).
      window: moving-average width in steps (1: none).
      title: None for the default.

    Returns:
      Figure with two axes sharing x "step t": near the high end (1) and near
      the low end (0 for a sigmoid, -1 for tanh), y in percent of units.
    """
    gates = tuple(saturation.gates)
    low = np.asarray(saturation.low, np.float64)
    high = np.asarray(saturation.high, np.float64)
    if low.ndim != 2 or low.shape != high.shape or low.shape[1] != len(gates):
        raise InputError(f"saturation: expected low and high of shape (T, {len(gates)}), got "
                         f"{low.shape} and {high.shape}")
    window = _checks.check_positive_int(window, "window")
    T = low.shape[0]
    fig, axes = _figure(2, 1, width=9.0, height=5.8, sharex=True)
    t = np.arange(T)
    kernel = np.ones(min(window, T)) / min(window, T)
    for ax, data, end in ((axes[0, 0], high, "high end (1)"),
                          (axes[1, 0], low, "low end (0, or -1 for tanh)")):
        for k, g in enumerate(gates):
            series = np.convolve(data[:, k], kernel, mode="same") if window > 1 else data[:, k]
            ax.plot(t, 100 * series, color=_colour(g, k + 1), lw=1.1,
                    label=f"{g} (mean {100 * data[:, k].mean():.0f}%)")
        ax.set_ylim(-3, 103)
        ax.set_ylabel(f"units saturated\nat the {end.split(' (')[0]} (%)")
        ax.grid(alpha=0.25)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8.5,
                  title=end, title_fontsize=8.5)
    axes[1, 0].set_xlabel("step t")
    smooth = f", {window}-step average" if window > 1 else ""
    axes[0, 0].set_title(title or "Gate saturation over time (derivative below 10% of its "
                         f"maximum{smooth})")
    return fig


# --------------------------------------------------------------------------- training


def _history_of(h: Any) -> Any:
    """A History from a TrainResult, a records file's path, or a list of records."""
    import os

    from gradpaths._train import History, read_records

    if hasattr(h, "history"):       # a TrainResult (a tuple, not a list of records)
        return h.history
    if isinstance(h, (str, os.PathLike)):
        h = read_records(h)
    if isinstance(h, (list, tuple)):
        return History.from_records(h)
    return h


def _histories(history: Any) -> dict[str, Any]:
    if isinstance(history, Mapping):
        out = dict(history)
    else:
        out = {"": history}
    if not out:
        raise InputError("history: expected a History or a non-empty mapping of them")
    for name, h in out.items():
        h = _history_of(h)
        for attr in ("step", "loss", "grad_norm", "events"):
            if not hasattr(h, attr):
                raise InputTypeError(f"history{f'[{name!r}]' if name else ''}: expected a "
                                f"gradpaths History, got {type(h).__name__}")
        out[name] = h
    return out


_NOT_DATA = "gradpaths-not-data"     # a line that is a reference or a marker, not a value


def _log_scale_or_note(ax: Any, note: str) -> bool:
    """A log y scale when ``ax`` draws some positive finite value (reference lines and
    markers at an arbitrary height, ``gid`` :data:`_NOT_DATA`, are not counted); else
    (nothing a log scale can show) a linear scale with ``note`` written across the axes.
    True for log."""
    drawn = [np.asarray(line.get_ydata(), np.float64) for line in ax.lines
             if line.get_gid() != _NOT_DATA]
    if any(np.any(np.isfinite(y) & (y > 0)) for y in drawn):
        ax.set_yscale("log")
        return True
    ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.35")
    return False


def training_curves(history: Any, *, clip: float | None = None,
                    title: str | None = None) -> Any:
    r"""Loss, gradient norm and route growth during training, explosions marked.

    Panels: the loss (log scale; the task's trivial baseline dashed); the
    gradient's global norm before clipping (log scale), explosion events as red
    crosses with the dominant route written beside the first few, non-finite
    steps as black triangles, the clipping threshold dashed; the top exponent at
    each probe (nats/step; for one run, also each route alone). A panel with no
    positive finite value to draw (probes recorded without ``grad_norm``, a run whose
    norms are all NaN) keeps a linear scale and says so across it; the others are
    drawn as usual.

    Args:
      history: a :class:`gradpaths.History` (or ``TrainResult``), a records file's
        path or the list :func:`gradpaths.read_records` returns (drawn through
        ``History.from_records``: one point per probe, events marked), or a mapping
        ``label -> any of these`` to compare runs (e.g. with and without clipping).
      clip: the clipping threshold to draw, if any.
      title: None for the default.

    Returns:
      Figure with three axes sharing x "training step".
    """
    runs = _histories(history)
    clip = None if clip is None else _checks.check_positive_float(clip, "clip")
    fig, axes = _figure(3, 1, width=9.0, height=8.5, sharex=True)
    ax_loss, ax_grad, ax_exp = axes[0, 0], axes[1, 0], axes[2, 0]
    single = len(runs) == 1
    baselines = set()
    n_events = 0
    for k, (name, h) in enumerate(runs.items()):
        colour = _CYCLE[k % len(_CYCLE)]
        tag = f"{name}: " if name else ""
        steps = np.asarray(h.step)
        loss = np.asarray(h.loss, np.float64)
        ax_loss.plot(steps, np.where(loss > 0, loss, np.nan), color=colour, lw=1.0,
                     label=f"{name or 'loss'} (final {loss[-1]:.3g})" if loss.size else name)
        if getattr(h, "baseline", None) is not None:
            baselines.add(float(h.baseline))
        g = np.asarray(h.grad_norm, np.float64)
        ax_grad.plot(steps, np.where(g > 0, g, np.nan), color=colour, lw=0.9,
                     label=f"{tag}gradient norm")
        explosions = [e for e in h.events if e.kind == "explosion"]
        nonfinite = [e for e in h.events if e.kind == "nonfinite"]
        if explosions:
            routes = [e.dominant_route for e in explosions if e.dominant_route]
            tally = ", ".join(f"{r} x{routes.count(r)}" for r in sorted(set(routes),
                                                                       key=routes.index))
            ax_grad.plot([e.step for e in explosions], [e.grad_norm for e in explosions],
                         ls="none", marker="x", ms=8, mew=2,
                         color=_EVENT_COLOUR if single else colour,
                         label=f"{tag}explosions: {len(explosions)}"
                         + (f"\n  (dominant route: {tally})" if tally else ""))
            n_events += len(explosions)
        if nonfinite:
            finite_g = g[np.isfinite(g)]
            top = float(finite_g.max()) if finite_g.size else 1.0
            ax_grad.plot([e.step for e in nonfinite], [top] * len(nonfinite), ls="none",
                         marker="v", ms=8, color="black", label=f"{tag}NaN/inf step",
                         gid=_NOT_DATA)
        probe_step = np.asarray(h.probe_step)
        if probe_step.size:
            ax_exp.plot(probe_step, _finite(h.top_exponent), color=colour if not single
                        else "black", lw=2.0 if single else 1.4, marker="o", ms=3,
                        label=f"{tag}full product")
            if single and len(h.routes):
                rex = np.asarray(h.route_exponents, np.float64)
                for j, r in enumerate(h.routes):
                    ax_exp.plot(probe_step, _finite(rex[:, j]), color=_colour(r, j), lw=1.0,
                                marker=".", ms=3, label=f"{r} alone")
    for b in sorted(baselines):
        ax_loss.axhline(b, color="0.4", ls="--", lw=1.0, label=f"trivial baseline {b:.3g}",
                        gid=_NOT_DATA)
    if clip is not None:
        ax_grad.axhline(clip, color="0.3", ls="--", lw=1.0, label=f"clipping threshold {clip:g}",
                        gid=_NOT_DATA)
    loss_log = _log_scale_or_note(ax_loss, "no positive finite loss recorded")
    grad_log = _log_scale_or_note(
        ax_grad, "no positive finite gradient norm recorded\n(probes taken without grad_norm, "
        "or NaN/inf norms)")
    ax_loss.set_ylabel("loss" + (" (log scale)" if loss_log else ""))
    ax_grad.set_ylabel("gradient norm\nbefore clipping" + (" (log scale)" if grad_log else ""))
    _neutral(ax_exp)
    with_routes = single and len(next(iter(runs.values())).routes) > 0
    if with_routes:
        # Single routes sit far below the whole: symmetric-log keeps both readable.
        ax_exp.set_yscale("symlog", linthresh=0.1, linscale=1.0)
    ax_exp.set_ylabel("top exponent on probes\n(nats/step" + (", symlog)" if with_routes
                                                              else ")"))
    ax_exp.set_xlabel("training step")
    for ax in (ax_loss, ax_grad, ax_exp):
        ax.grid(alpha=0.25)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8.5)
    events = f" ({n_events} explosion events marked)" if n_events else " (no explosion events)"
    ax_loss.set_title(title or "Training curves" + events)
    return fig


# --------------------------------------------------------------------------- phase diagram


def _edges(count: int) -> np.ndarray:
    """Cell edges around grid indices 0..count-1 (the grid is drawn by index, ticks
    labelled with the values, so geometric and uneven grids show as even cells)."""
    return np.arange(count + 1) - 0.5


def phase_diagram(sweep: Any, *, names: Sequence[str] | None = None,
                  title: str | None = None) -> Any:
    r"""The sweep's phase diagram: top exponent over (forget bias, recurrent gain).

    One panel per Jacobian sequence, a shared diverging colour scale centred on 0
    (symmetric-log, so both the small rates of the whole and the large negative
    rates of single routes are readable), the contour where the exponent crosses
    0, and each cell's value written in it.

    Args:
      sweep: a :class:`gradpaths.Sweep`.
      names: which sequences to show; None for ``"full"``, ``"carousel"``, the
        scaled routes alone and ``"all but"`` each scaled route.
      title: None for the default.

    Returns:
      Figure with one axes per name (x "forget bias b_f", y "gain of R_...").
    """
    from matplotlib.colors import SymLogNorm

    if names is None:
        names = ["full", "carousel", *sweep.scaled, *(f"all but {r}" for r in sweep.scaled)]
    names = list(names)
    data = [np.asarray(sweep.exponent(n), np.float64) for n in names]
    finite = np.concatenate([d[np.isfinite(d)] for d in data]) if data else np.zeros(0)
    vlim = float(np.max(np.abs(finite))) if finite.size else 1.0
    vlim = max(vlim, 0.02)
    norm = SymLogNorm(linthresh=0.01, linscale=0.5, vmin=-vlim, vmax=vlim, base=10)
    n = len(names)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    gains, biases = np.asarray(sweep.gains), np.asarray(sweep.forget_biases)
    G, F = gains.size, biases.size
    fig, axes = _figure(nrows, ncols, width=3.9 * ncols + 1.3, height=3.5 * nrows + 0.6)
    mesh = None
    for k, (name, d) in enumerate(zip(names, data, strict=True)):
        ax = axes[k // ncols, k % ncols]
        shown = np.where(np.isfinite(d), d, -vlim)
        mesh = ax.pcolormesh(_edges(F), _edges(G), shown, cmap="RdBu_r", norm=norm)
        if G > 1 and F > 1 and np.nanmin(d) < 0 < np.nanmax(d):
            ax.contour(np.arange(F), np.arange(G), d, levels=[0.0], colors="black",
                       linewidths=1.6)
        if G * F <= 80:
            for a in range(G):
                for b in range(F):
                    v = d[a, b]
                    text = ("-inf" if v == -np.inf else f"{v:+.2f}" if abs(v) >= 0.1
                            else f"{v:+.3f}" if abs(v) >= 0.0005 else "0")
                    dark = abs(norm(shown[a, b]) - 0.5) > 0.3
                    ax.text(b, a, text, ha="center", va="center", fontsize=6.5,
                            color="white" if dark else "black")
        ax.set_xticks(np.arange(F), [f"{v:g}" for v in biases])
        ax.set_yticks(np.arange(G), [f"{v:g}" for v in gains])
        ax.set_xlabel(r"forget bias $b_f$")
        ax.set_ylabel("gain of R_" + ", R_".join(sweep.scaled))
        kind = _routesets.describe(name)[0]
        label = ("full product" if kind == "full" else f"{name} alone" if kind == "alone"
                 else name)
        ax.set_title(label, fontsize=10)
    for k in range(n, nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    fig.colorbar(mesh, ax=axes.ravel().tolist(), shrink=0.8,
                 label="top Lyapunov exponent (nats/step, symmetric log scale)")
    s = sweep.settings
    fig.suptitle(title or "Phase diagram: growth (red) and decay (blue); black line: 0 "
                 f"(LSTM n = {s['hidden']}, T = {s['steps']})")
    return fig
