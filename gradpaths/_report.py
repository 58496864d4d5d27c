r"""Report folders: ``report.json``, ``report.md`` and PNG figures, written atomically.

A :class:`Report` holds what a folder will contain: ``data`` (JSON-safe, written
as ``report.json``), ``markdown`` (``report.md``, which embeds the figures) and
``figures`` (name -> matplotlib Figure, saved as ``name.png``), plus any extra
text files. :func:`write_report` builds the folder in a fresh temporary sibling
and renames it into place, so a reader never sees a half-written report; an
existing folder is replaced only with ``force=True``, and then only if it is
empty or itself a report folder (holds ``report.json``).

:func:`explain_report` computes the explanation's figures for one model and
input sequence; :func:`sweep_report` and :func:`train_report` wrap a sweep and
training histories.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gradpaths import _checks, _inputs, _routes

REPORT_FILE = "report.json"


# --------------------------------------------------------------------------- helpers


_num = _checks.json_number


def _nums(a: Any) -> list:
    return [_num(v) for v in np.asarray(a, np.float64).reshape(-1)]


def versions() -> dict[str, str]:
    """Versions of Python, gradpaths and its dependencies, and the JAX backend."""
    from importlib import metadata

    import gradpaths

    out = {"python": platform.python_version(), "platform": platform.platform(),
           "gradpaths": gradpaths.__version__}
    for pkg in ("jax", "jaxlib", "numpy", "optax", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    out["jax_backend"] = jax.default_backend()
    out["jax_devices"] = ", ".join(str(d) for d in jax.devices())
    out["x64"] = str(bool(jax.config.jax_enable_x64))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x: Any, spec: str = "+.4f") -> str:
    """A number for a table; non-finite numbers (or their JSON strings) as text."""
    if isinstance(x, str) or x is None:
        return str(x)
    return format(x, spec) if math.isfinite(x) else str(x)


# --------------------------------------------------------------------------- the folder


@dataclasses.dataclass
class Report:
    """What a report folder holds.

    Attributes:
      data: JSON-safe dict, written as ``report.json`` (``"report"`` names the kind).
      markdown: the text of ``report.md``; it embeds ``<name>.png`` for each figure.
      figures: name -> ``matplotlib.figure.Figure``, saved as ``<name>.png``.
      files: other text files, name -> content (e.g. a training history).
    """

    data: dict[str, Any]
    markdown: str
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)


def check_out(out: str | os.PathLike, force: bool) -> Path:
    """Raise ``FileExistsError``/``FileNotFoundError`` unless ``out`` can be written.

    ``out`` must not exist, or (with ``force``) be a folder that is empty or holds
    a ``report.json``: a folder that is not a report is never replaced.
    """
    path = Path(out)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise FileExistsError(f"{os.fspath(out)!r} exists and is not a folder; choose "
                                  "another --out")
        if not force:
            raise FileExistsError(f"{os.fspath(out)!r} exists; pass --force (force=True) to "
                                  "replace it, or choose another folder")
        if any(path.iterdir()) and not (path / REPORT_FILE).is_file():
            raise FileExistsError(f"{os.fspath(out)!r} exists and is not a gradpaths report "
                                  f"folder (no {REPORT_FILE}); not replacing it, even with force")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{os.fspath(out)!r}: the parent folder {os.fspath(parent)!r} "
                                "does not exist")
    return path


def write_report(out: str | os.PathLike, report: Report, *, force: bool = False,
                 dpi: int = 120) -> Path:
    """Write ``report`` to the folder ``out`` atomically.

    Everything is written into a temporary folder next to ``out`` and renamed
    into place at the end: a crash or Ctrl-C leaves either no folder or the old
    one, never a partial report. With ``force`` an existing report folder is
    moved aside, the new one moved in, and the old one deleted.

    Args:
      out: the folder to create.
      report: a :class:`Report`.
      force: replace an existing report folder (or an empty folder).
      dpi: resolution of the PNG figures.

    Returns:
      The folder's path.
    """
    path = check_out(out, force)
    text = json.dumps(report.data, indent=2, allow_nan=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.absolute().parent))
    try:
        (tmp / REPORT_FILE).write_text(text + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report.markdown, encoding="utf-8")
        for name, content in report.files.items():
            (tmp / name).write_text(content, encoding="utf-8")
        for name, fig in report.figures.items():
            fig.savefig(tmp / f"{name}.png", dpi=dpi)
        check_out(path, force)      # again: something may have appeared meanwhile
        if path.exists():
            old = path.absolute().parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _header(kind: str, settings: Mapping[str, Any] | None, command: str | None
            ) -> dict[str, Any]:
    return {
        "report": kind,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "settings": dict(settings or {}),
        "versions": versions(),
    }


def _footer(data: Mapping[str, Any]) -> str:
    rows = [[k, f"`{v}`"] for k, v in data["settings"].items()]
    parts = []
    if data.get("command"):
        parts += ["## Command", "", f"    {data['command']}", ""]
    if rows:
        parts += ["## Settings", "", _table(["setting", "value"], rows), ""]
    parts += ["## Versions", "", _table(["package", "version"],
                                        [[k, v] for k, v in data["versions"].items()]), "",
              f"Written {data['created']}. Rates are natural logs per step (nats/step).", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- explain


_CAPTIONS = {
    "growth_curves": ("Growth curves by route set",
                      "log of the spectral norm of the Jacobian product over the first j "
                      "steps, for the whole and for restricted route sets; the slope is the "
                      "growth rate (legend, nats/step)."),
    "step_spectra": ("Per-step spectral radius and norm",
                     "log spectral radius and log spectral norm of each step's Jacobian, the "
                     "leading direction's local stretching, and the steps with the largest "
                     "inputs (dashed)."),
    "jacobian_blocks": ("Jacobian blocks by route",
                        "the step Jacobian at the step of largest local stretching, split by "
                        "route (rows: outputs, columns: inputs; c then h)."),
    "lyapunov_spectrum": ("Lyapunov spectrum",
                          "growth rates of the leading directions of the full product "
                          "(nats/step)."),
    "route_use_counts": ("Route-use counts",
                         "size of the part of the product over a window that uses the route "
                         "exactly k times."),
    "gate_saturation": ("Gate saturation over time",
                        "fraction of units whose gate derivative is below 10% of its "
                        "maximum, near each end."),
}


def _counts_route(ex: Any, cell: Any) -> str | None:
    routes = cell.routes if _routes.has_routes(cell) else ()
    if len(routes) < 2:
        return None
    if ex.driver.get("dominant"):
        return ex.driver["dominant"]
    others = [r for r in routes if r != "carousel"]
    return max(others, key=lambda r: ex.row(r).exponent)


def explain_report(cell: Any, params: Any, xs: Any, state0: Any = None, *,
                   explanation: Any = None, warmup: int = 0, heatmap_step: int | None = None,
                   counts_route: str | None = None, counts_window: int = 50,
                   settings: Mapping[str, Any] | None = None, command: str | None = None,
                   max_counts_size: int = 64) -> Report:
    """The explanation of one model with its figures, ready for :func:`write_report`.

    Computes :func:`gradpaths.explain` (unless ``explanation`` is given) and, on
    the first input sequence: growth curves by route set, per-step spectra, the
    Jacobian by route at ``heatmap_step`` (default: the step of largest local
    stretching), the Lyapunov spectrum (top ``min(d, 32)``), route-use counts of
    ``counts_route`` (default: the dominant route) over ``counts_window`` steps
    after the warm-up (skipped when the state is larger than
    ``max_counts_size``), and gate saturation over time.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.explain` (xs (T, m) or (B, T, m)).
      explanation: a precomputed :class:`gradpaths.Explanation` for these inputs.
      warmup: as in :func:`gradpaths.explain`.
      heatmap_step, counts_route, counts_window: see above.
      settings: recorded in ``report.json`` and ``report.md``.
      command: the command line, recorded likewise.
      max_counts_size: largest state size d for the route-use counts.

    Returns:
      :class:`Report` with ``data`` = header, ``"explanation"`` (``to_dict()``) and
      ``"figures"`` (numbers behind some figures).
    """
    import gradpaths as gp

    ex = explanation if explanation is not None else gp.explain(cell, params, xs, state0,
                                                                warmup=warmup)
    seq = np.asarray(xs)
    seq = seq[0] if seq.ndim == 3 else seq
    T = seq.shape[0]
    figs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    notes: list[str] = []

    curves = gp.growth_curves(cell, params, seq, state0)
    figs["growth_curves"] = gp.plot.growth_curves(curves)
    extra["growth_curves"] = {k: _num(v[-1] / T) for k, v in curves.items()}

    spectra = gp.step_spectra(cell, params, seq, state0)
    local = ex.local if ex.batch == 1 else None
    figs["step_spectra"] = gp.plot.step_spectra(spectra, xs=seq, local=local)
    extra["input_events"] = [int(t) for t in gp.input_events(seq)]

    step = int(ex.peak_steps[0][0]) if heatmap_step is None else int(heatmap_step)
    if not 0 <= step < T:
        raise ValueError(f"heatmap_step: expected 0 <= step < T = {T}, got {step}")
    method = "analytic" if _inputs.has_closed_form(cell) else "jacfwd"
    if _routes.has_routes(cell) and len(cell.routes) > 1:
        mats = gp.route_jacobians(cell, params, seq[: step + 1], state0, method=method)
    else:
        mats = {"full": gp.step_jacobians(cell, params, seq[: step + 1], state0, method=method)}
    figs["jacobian_blocks"] = gp.plot.jacobian_blocks(mats, step=step)
    extra["heatmap_step"] = step

    layout_size = next(iter(mats.values())).matrix.shape[-1]
    k = min(layout_size, 32)
    lam = np.asarray(gp.lyapunov_exponents(cell, params, seq, state0, k=k,
                                           warmup=min(ex.warmup, T - 1)))
    figs["lyapunov_spectrum"] = gp.plot.lyapunov_spectrum({"full": lam})
    extra["lyapunov_spectrum"] = _nums(lam)

    route = counts_route or _counts_route(ex, cell)
    if route is not None and layout_size <= max_counts_size and jax.config.jax_enable_x64:
        start = min(ex.warmup, T - 1)
        stop = min(T, start + counts_window)
        counts = gp.route_use_counts(cell, params, seq, state0, route=route, start=start,
                                     stop=stop)
        figs["route_use_counts"] = gp.plot.route_use_counts(counts, route=route)
        extra["route_use_counts"] = {"route": route, "start": start, "stop": stop,
                                     "log_norms": _nums(counts.log_norms)}
    elif route is not None:
        why = ("needs jax_enable_x64" if not jax.config.jax_enable_x64
               else f"state size {layout_size} > {max_counts_size}")
        notes.append(f"Route-use counts skipped ({why}).")

    if _inputs.is_builtin(cell):
        figs["gate_saturation"] = gp.plot.gate_saturation(
            gp.gate_saturation(cell, params, seq, state0))

    data = _header("explain", settings, command)
    data["explanation"] = ex.to_dict()
    data["figures"] = {"files": [f"{n}.png" for n in figs], **extra}
    return Report(data, _explain_markdown(ex, data, figs, notes), figs)


def _explain_markdown(ex: Any, data: Mapping[str, Any], figs: Mapping[str, Any],
                      notes: list[str]) -> str:
    rows = []
    for r in ex.rows:
        fold = "-" if not math.isfinite(r.exponent) or r.exponent == 0 else (
            f"{1 / abs(r.exponent):.3g}")
        rows.append([f"`{r.name}`", r.kind, _fmt(r.exponent), _fmt(r.horizon), fold])
    parts = [
        "# gradpaths explanation", "",
        f"**Model:** `{ex.cell}`, T = {ex.steps}"
        + (f", batch of {ex.batch}" if ex.batch > 1 else "")
        + (f", warm-up {ex.warmup}" if ex.warmup else "") + ".", "",
        "## Verdict", "", ex.verdict, "",
        "## Growth of each Jacobian sequence", "",
        "Top Lyapunov exponent and horizon growth `log ||J_{T-1} ... J_w||_2 / (T - w)` "
        "(`w` the warm-up), "
        "both in nats/step.", "",
        _table(["Jacobian sequence", "kind", "top exponent", "horizon growth", "e-fold steps"],
               rows), "",
    ]
    if ex.saturation:
        parts += ["## Gate saturation", "",
                  _table(["gate", "near low end", "near high end"],
                         [[g, f"{d['low']:.1%}", f"{d['high']:.1%}"]
                          for g, d in ex.saturation.items()]), ""]
    parts += ["## Where and in which units", "",
              "Largest local stretching at steps: "
              + ", ".join(f"{t} ({_fmt(v, '+.3f')} nats)" for t, v in ex.peak_steps) + ".", "",
              "The leading direction lives in units: "
              + ", ".join(f"{u} ({w:.0%})" for u, w in ex.units) + ".", ""]
    parts += ["## Figures", ""]
    if ex.batch > 1:
        parts += [f"Figures show the first of the {ex.batch} sequences.", ""]
    for name in figs:
        head, caption = _CAPTIONS.get(name, (name.replace("_", " "), ""))
        parts += [f"### {head}", "", f"![{head}]({name}.png)", "", caption, ""]
    parts += [n + "\n" for n in notes]
    parts.append(_footer(data))
    return "\n".join(parts)


# --------------------------------------------------------------------------- sweep, train


def sweep_report(sweep: Any, *, settings: Mapping[str, Any] | None = None,
                 command: str | None = None) -> Report:
    """A :class:`gradpaths.Sweep` as a report: table, phase diagram, numbers."""
    import gradpaths as gp

    fig = gp.plot.phase_diagram(sweep)
    data = _header("sweep", settings, command)
    data["sweep"] = sweep.to_dict()
    regions = sweep.regions()
    shown = ("full",) + sweep.routes
    rows = []
    dominant = sweep.dominant()
    for a, g in enumerate(sweep.gains):
        for b, f in enumerate(sweep.forget_biases):
            rows.append([f"{g:g}", f"{f:g}"]
                        + [_fmt(sweep.exponent(n)[a, b]) for n in shown]
                        + [regions[a, b], dominant[a, b] or "-"])
    counts = {k: int((regions == k).sum()) for k in ("vanish", "neutral", "route", "interaction")}
    md = "\n".join([
        "# gradpaths sweep: a phase diagram", "",
        f"An LSTM with n = {sweep.settings['hidden']}, T = {sweep.settings['steps']} "
        f"(warm-up {sweep.settings['warmup']}); the gain multiplies R_"
        + ", R_".join(sweep.scaled) + ". Top Lyapunov exponents in nats/step.", "",
        "Grid points: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " (*route*: some "
        "route grows on its own; *interaction*: the whole grows although no route does).", "",
        "![phase diagram](phase_diagram.png)", "",
        _table(["gain", "b_f", *shown, "region", "cut lowers most"], rows), "",
        _footer(data)])
    return Report(data, md, {"phase_diagram": fig})


def train_report(histories: Mapping[str, Any], *, clip: float | None = None,
                 settings: Mapping[str, Any] | None = None,
                 command: str | None = None) -> Report:
    """Training runs as a report: curves, a summary and each run's full history
    (``history_<label>.json``)."""
    import gradpaths as gp

    fig = gp.plot.training_curves(dict(histories), clip=clip)
    data = _header("train", settings, command)
    summary, files = {}, {}
    for label, h in histories.items():
        name = "history_" + "".join(c if c.isalnum() else "_" for c in label) + ".json"
        files[name] = json.dumps(h.to_dict(), allow_nan=False) + "\n"
        summary[label] = {
            "file": name, "steps": int(len(h.step)),
            "final_loss": _num(h.loss[-1]) if len(h.loss) else None,
            "max_grad_norm": _num(np.nanmax(h.grad_norm)) if len(h.grad_norm) else None,
            "explosions": len(h.explosions),
            "nonfinite": sum(e.kind == "nonfinite" for e in h.events),
            "stopped": h.stopped, "interrupted": bool(h.interrupted),
        }
    data["runs"] = summary
    rows = [[label, s["steps"], _fmt(s["final_loss"], ".4g"), _fmt(s["max_grad_norm"], ".3g"),
             s["explosions"], s["nonfinite"], s["stopped"] or "-"]
            for label, s in summary.items()]
    events = []
    for label, h in histories.items():
        for e in h.events[:10]:
            events.append(f"- {label}: {e.message}")
        if len(h.events) > 10:
            events.append(f"- {label}: ... {len(h.events) - 10} more in its history file")
    md = "\n".join([
        "# gradpaths training", "",
        _table(["run", "steps", "final loss", "largest gradient norm", "explosions",
                "NaN/inf steps", "stopped"], rows), "",
        "![training curves](training_curves.png)", "",
        "## Events", "", *(events or ["None."]), "",
        _footer(data)])
    return Report(data, md, {"training_curves": fig}, files)


def command_line(argv: list[str] | None) -> str:
    """The command as typed (for the report), quoted where needed."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["gradpaths", *args])
