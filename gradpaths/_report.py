r"""Report folders: ``report.json``, ``report.md`` and PNG figures, written atomically.

A :class:`Report` holds what a folder will contain: ``data`` (JSON-safe, written
as ``report.json``), ``markdown`` (``report.md``, which embeds the figures) and
``figures`` (name -> matplotlib Figure, saved as ``name.png``), plus any extra
text files. :func:`write_report` builds the folder in a fresh temporary sibling
and renames it into place, so a reader never sees a half-written report; an
existing folder is replaced only with ``force=True``, and then only if it is
empty or gradpaths wrote it: its marker file (:data:`MARKER_FILE`) lists every
file in it.

:func:`explain_report` computes the explanation's figures for one model and
input sequence; :func:`sweep_report` and :func:`train_report` wrap a sweep and
training histories.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gradpaths import (
    _checks,
    _counts,
    _explain,
    _inputs,
    _jacobians,
    _lyapunov,
    _plot,
    _products,
    _render,
    _routes,
    _sweep,
    _views,
)
from gradpaths._checks import InputError
from gradpaths._explain import Explanation
from gradpaths._protocols import Cell, has_activations, has_routes
from gradpaths._sweep import Sweep

REPORT_FILE = "report.json"
#: The file listing what gradpaths wrote in a report folder: only such a folder is
#: ever replaced (``force=True``, ``--force``).
MARKER_FILE = ".gradpaths-report.json"
_MARKER_FORMAT = "gradpaths.report/1"


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
    out["x64"] = str(bool(jax.config.read("jax_enable_x64")))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(_render.table([_render.Column(h, 0) for h in header],
                                   [[str(c) for c in row] for row in rows], "markdown"))


_fmt = _render.number


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


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def written_files(folder: str | os.PathLike) -> list[str] | None:
    """The files a gradpaths report folder lists in its marker file (:data:`MARKER_FILE`),
    or None when ``folder`` has no valid marker (gradpaths did not write it)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _MARKER_FORMAT:
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, str) and f and f == os.path.basename(f) and f not in (".", "..")
            for f in files):
        return None
    return files


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """What ``folder`` holds that gradpaths did not write: every entry not listed in its
    marker file (all of them when there is no marker); sub-folders end with ``/``."""
    folder = Path(folder)
    listed = set(written_files(folder) or ())
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == MARKER_FILE and listed:
            continue
        if entry.is_symlink() or not entry.is_file():
            out.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
        elif entry.name not in listed:
            out.append(entry.name)
    return out


def check_out(out: str | os.PathLike, force: bool, *, out_name: str = "out",
              force_name: str = "force=True") -> Path:
    """The absolute path of the report folder ``out``, or an error saying why it cannot
    be written there.

    ``out`` must be a new folder in an existing, writable folder; or, with ``force``,
    a folder that gradpaths wrote (its :data:`MARKER_FILE` lists every file in it) or an
    empty one. A folder holding anything gradpaths did not write, a symbolic link, the
    current folder or one above it are never replaced. ``out_name`` and
    ``force_name`` are how the messages name the two (``"--out"``, ``"--force"`` on the
    command line).

    Raises:
      ValueError: ``out`` is empty.
      FileExistsError: ``out`` exists and cannot (or, without ``force``, may not) be
        replaced.
      FileNotFoundError, PermissionError: the parent folder is missing or read-only.
    """
    text = os.fspath(out)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text.strip():
        raise InputError(f"{out_name}: expected a folder path, got {text!r}")
    path = Path(os.path.abspath(text))
    here = Path(os.path.realpath(os.getcwd()))
    real = Path(os.path.realpath(path))
    if real == here or real in here.parents:
        raise FileExistsError(f"{out_name}: {text!r} is the current folder or holds it; it "
                              "is never replaced: choose a new folder")
    if path.is_symlink():
        raise FileExistsError(f"{out_name}: {text!r} is a symbolic link; it is never "
                              "replaced: choose a new folder")
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{out_name}: {text!r} exists and is not a folder; choose "
                                  "a new folder")
        foreign = foreign_files(path)
        if foreign:
            raise FileExistsError(
                f"{out_name}: {text!r} exists and holds files gradpaths did not write "
                f"({_listing(foreign)}); it is never replaced: choose a new folder")
        if not force:
            what = "a gradpaths report folder" if any(path.iterdir()) else "an empty folder"
            raise FileExistsError(f"{out_name}: {text!r} exists ({what}); pass {force_name} "
                                  "to replace it, or choose a new folder")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{out_name}: {text!r}: the folder {os.fspath(parent)!r} "
                                "does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{out_name}: {text!r}: cannot write in the folder "
                              f"{os.fspath(parent)!r}")
    return path


def _file_names(report: Report) -> list[str]:
    """The files of ``report``, checked: plain names, each once."""
    names = [REPORT_FILE, "report.md", *report.files, *(f"{n}.png" for n in report.figures)]
    for name in names:
        if not name or name != os.path.basename(name) or name in (".", "..", MARKER_FILE):
            raise InputError(f"report: expected plain file names, got {name!r}")
    if len(set(names)) != len(names):
        raise InputError(f"report: expected distinct file names, got {names}")
    return names


def _remove_written(folder: Path) -> bool:
    """Delete what gradpaths wrote in ``folder`` (its marker's list) and the folder if
    that empties it; True when it is gone."""
    for name in written_files(folder) or ():
        (folder / name).unlink(missing_ok=True)
    (folder / MARKER_FILE).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def write_report(out: str | os.PathLike, report: Report, *, force: bool = False,
                 dpi: int = 120) -> Path:
    """Write ``report`` to the folder ``out`` atomically.

    Everything is written into a temporary folder next to ``out`` (created with the
    permissions of the umask, like any new folder) and renamed into place at the
    end: a crash or Ctrl-C leaves either no folder or the old one, never a partial
    report. The folder also holds :data:`MARKER_FILE`, the list of what gradpaths
    wrote. With ``force`` an existing folder that gradpaths wrote (nothing in it but
    the files its marker lists) is moved aside, the new one moved in, and the old
    files deleted; see :func:`check_out` for what is refused.

    Args:
      out: the folder to create.
      report: a :class:`Report`.
      force: replace a report folder that gradpaths wrote (or an empty folder).
      dpi: resolution of the PNG figures.

    Returns:
      The folder's absolute path.
    """
    path = check_out(out, force)
    names = _file_names(report)
    text = json.dumps(report.data, indent=2, allow_nan=False)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp, 0o777)            # the umask applies, as to any new folder
    try:
        (tmp / REPORT_FILE).write_text(text + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report.markdown, encoding="utf-8")
        for name, content in report.files.items():
            (tmp / name).write_text(content, encoding="utf-8")
        for name, fig in report.figures.items():
            fig.savefig(tmp / f"{name}.png", dpi=dpi)
        marker = {"format": _MARKER_FORMAT, "files": sorted(names)}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        check_out(out, force)       # again: something may have appeared meanwhile
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if not _remove_written(old):
                warnings.warn(f"write_report: kept {os.fspath(old)!r}: files appeared in the "
                              "old report folder while it was replaced", stacklevel=2)
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


def _counts_route(ex: Explanation, cell: Cell) -> str | None:
    routes = cell.routes if has_routes(cell) else ()
    if len(routes) < 2:
        return None
    if ex.driver.dominant:
        return ex.driver.dominant
    others = [r for r in routes if r != "carousel"]
    return max(others, key=lambda r: ex.row(r).exponent)


def explain_report(cell: Cell, params: Any, xs: Any, state0: Any = None, *,
                   explanation: Explanation | None = None, warmup: int = 0,
                   heatmap_step: int | None = None,
                   counts_route: str | None = None, counts_window: int | None = None,
                   settings: Mapping[str, Any] | None = None, command: str | None = None,
                   source: str | None = None, max_counts_size: int = 64) -> Report:
    """The explanation of one model with its figures, ready for :func:`write_report`.

    Computes :func:`gradpaths.explain` (unless ``explanation`` is given) and, on
    the first input sequence: growth curves by route set, per-step spectra, the
    Jacobian by route at ``heatmap_step`` (default: the step of largest local
    stretching), the Lyapunov spectrum (top ``min(d, 32)``), route-use counts of
    ``counts_route`` (default: the dominant route) over ``counts_window`` steps
    after the warm-up (default ``min(50, T - warmup)``; a longer window is refused,
    never cut; skipped when the state is larger than ``max_counts_size``), and gate
    saturation over time.

    Args:
      cell, params, xs, state0: as in :func:`gradpaths.explain` (xs (T, m) or (B, T, m)).
      explanation: a precomputed :class:`gradpaths.Explanation` for these inputs.
      warmup: as in :func:`gradpaths.explain`.
      heatmap_step, counts_route, counts_window: see above.
      settings: recorded in ``report.json`` and ``report.md``.
      command: the command line, recorded likewise.
      source: where the model comes from (e.g. the imported file, layer and direction
        and what the layer reads), shown under the model in ``report.md`` and recorded
        as ``"source"``.
      max_counts_size: largest state size d for the route-use counts.

    Returns:
      :class:`Report` with ``data`` = header, ``"explanation"`` (``to_dict()``) and
      ``"figures"`` (numbers behind some figures).
    """
    ex = explanation if explanation is not None else _explain.explain(cell, params, xs, state0,
                                                                      warmup=warmup)
    seq = np.asarray(xs)
    seq = seq[0] if seq.ndim == 3 else seq
    T = seq.shape[0]
    start = min(ex.warmup, T - 1)
    if counts_window is None:
        counts_window = min(50, T - start)
    else:
        counts_window = _checks.scalar(counts_window, "counts_window", integer=True,
                                       expected="a positive int")
    if not 1 <= counts_window <= T - start:
        raise InputError(f"counts_window: expected 1 to {T - start} (the steps after the "
                         f"warm-up {start} of T = {T}), got {counts_window}")
    figs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    notes: list[str] = []

    curves = _views.growth_curves(cell, params, seq, state0)
    figs["growth_curves"] = _plot.growth_curves(curves)
    extra["growth_curves"] = {k: _num(v[-1] / T) for k, v in curves.items()}

    spectra = _products.step_spectra(cell, params, seq, state0)
    local = ex.local if ex.batch == 1 else None
    figs["step_spectra"] = _plot.step_spectra(spectra, xs=seq, local=local)
    extra["input_events"] = [int(t) for t in _views.input_events(seq)]

    step = int(ex.peak_steps[0][0]) if heatmap_step is None else _checks.scalar(
        heatmap_step, "heatmap_step", integer=True)
    if not 0 <= step < T:
        raise InputError(f"heatmap_step: expected 0 <= step < T = {T}, got {step}")
    method = "analytic" if _inputs.has_closed_form(cell) else "jacfwd"
    if has_routes(cell) and len(cell.routes) > 1:
        mats = _routes.route_jacobians(cell, params, seq[: step + 1], state0, method=method)
    else:
        mats = {"full": _jacobians.step_jacobians(cell, params, seq[: step + 1], state0,
                                                  method=method)}
    figs["jacobian_blocks"] = _plot.jacobian_blocks(mats, step=step)
    extra["heatmap_step"] = step

    layout_size = next(iter(mats.values())).matrix.shape[-1]
    k = min(layout_size, 32)
    lam = np.asarray(_lyapunov.lyapunov_exponents(cell, params, seq, state0, k=k,
                                           warmup=min(ex.warmup, T - 1)))
    figs["lyapunov_spectrum"] = _plot.lyapunov_spectrum({"full": lam})
    extra["lyapunov_spectrum"] = _nums(lam)

    route = counts_route or _counts_route(ex, cell)
    x64 = jax.config.read("jax_enable_x64")
    if route is not None and has_routes(cell) and layout_size <= max_counts_size and x64:
        stop = start + counts_window
        counts = _counts.route_use_counts(cell, params, seq, state0, route=route, start=start,
                                     stop=stop)
        figs["route_use_counts"] = _plot.route_use_counts(counts, route=route)
        extra["route_use_counts"] = {"route": route, "start": start, "stop": stop,
                                     "log_norms": _nums(counts.log_norms)}
    elif route is not None:
        why = ("the cell has no routes" if not has_routes(cell)
               else "needs jax_enable_x64" if not x64
               else f"state size {layout_size} > {max_counts_size}")
        notes.append(f"Route-use counts skipped ({why}).")

    if has_activations(cell):
        figs["gate_saturation"] = _plot.gate_saturation(
            _views.gate_saturation(cell, params, seq, state0))

    data = _header("explain", settings, command)
    if source is not None:
        data["source"] = source
    data["explanation"] = ex.to_dict()
    data["figures"] = {"files": [f"{n}.png" for n in figs], **extra}
    return Report(data, _explain_markdown(ex, data, figs, notes), figs)


def _explain_markdown(ex: Explanation, data: Mapping[str, Any], figs: Mapping[str, Any],
                      notes: list[str]) -> str:
    parts = [_explain.render(ex, "markdown", source=data.get("source")), "## Figures", ""]
    if ex.batch > 1:
        parts += [f"Figures show the first of the {ex.batch} sequences.", ""]
    for name in figs:
        head, caption = _CAPTIONS.get(name, (name.replace("_", " "), ""))
        parts += [f"### {head}", "", f"![{head}]({name}.png)", "", caption, ""]
    parts += [n + "\n" for n in notes]
    parts.append(_footer(data))
    return "\n".join(parts)


# --------------------------------------------------------------------------- sweep, train


def sweep_report(sweep: Sweep, *, settings: Mapping[str, Any] | None = None,
                 command: str | None = None) -> Report:
    """A :class:`gradpaths.Sweep` as a report: table, phase diagram, numbers."""
    fig = _plot.phase_diagram(sweep)
    data = _header("sweep", settings, command)
    data["sweep"] = sweep.to_dict()
    regions = sweep.regions()
    counts = {k: int((regions == k).sum()) for k in _sweep.REGIONS}
    md = "\n".join([
        "# gradpaths sweep: a phase diagram", "",
        f"An LSTM with n = {sweep.settings['hidden']}, T = {sweep.settings['steps']} "
        f"(warm-up {sweep.settings['warmup']}); the gain multiplies R_"
        + ", R_".join(sweep.scaled) + ". Top Lyapunov exponents in nats/step.", "",
        "Grid points: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " (*route*: some "
        "route grows on its own; *interaction*: the whole grows although no route does; "
        "*driver*: the route growing fastest alone, else the one whose removal lowers the "
        "growth most).", "",
        "![phase diagram](phase_diagram.png)", "",
        *_sweep.grid(sweep, "markdown"), "",
        _footer(data)])
    return Report(data, md, {"phase_diagram": fig})


def known_grad_norms(h: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, norms)``: the gradient norms a history knows, by step. A history from
    records (``per_step`` False) knows them at its probes' steps and its events'."""
    steps = np.asarray(h.step, np.int64)
    norms = np.asarray(h.grad_norm, np.float64)
    if getattr(h, "per_step", True):
        return steps, norms
    known = dict(zip(steps.tolist(), norms.tolist(), strict=True))
    for e in h.events:
        known[int(e.step)] = float(e.grad_norm)
    order = sorted(known)
    return np.array(order, np.int64), np.array([known[t] for t in order], np.float64)


NO_GRAD_NORM = ("no probe or event carries a positive finite gradient norm (probes taken "
                "without grad_norm, or NaN/inf norms): the gradient-norm panel is empty")
"""The note for a history without a gradient norm to draw or report."""


def has_grad_norms(h: Any) -> bool:
    """Whether a history knows some positive finite gradient norm (what a log-scale
    panel can draw)."""
    norms = known_grad_norms(h)[1]
    return bool(np.any(np.isfinite(norms) & (norms > 0)))


def steps_of(h: Any) -> int:
    """The training steps a history covers: every step of a :func:`gradpaths.train`
    history; for one built from records, by their step numbers (a probe at step t
    follows t steps, an event at step t is step t itself)."""
    if getattr(h, "per_step", True):
        return int(len(h.step))
    probes = [int(t) for t in np.asarray(h.probe_step)]
    return max([*probes, *(int(e.step) + 1 for e in h.events)], default=0)


def _largest_norm(h: Any, explosion_window: int) -> tuple[int | None, bool]:
    """Step of the largest finite gradient norm of a history and whether the explosion
    rule could judge it (:func:`gradpaths._train.judged_steps` when the history holds
    every step's norm; from a history of records, by its step number, for a detector
    fed every step from step 0)."""
    from gradpaths._train import EXPLOSION_MIN_HISTORY, judged_steps

    steps, norms = known_grad_norms(h)
    if not np.isfinite(norms).any():
        return None, True
    i = int(np.nanargmax(np.where(np.isfinite(norms), norms, np.nan)))
    if not getattr(h, "per_step", True):
        return int(steps[i]), int(steps[i]) >= min(EXPLOSION_MIN_HISTORY, explosion_window)
    return int(steps[i]), bool(judged_steps(norms, explosion_window)[i])


def unjudged_note(h: Any, explosion_window: int = 20) -> str | None:
    """A sentence when a history's largest gradient norm came before the explosion rule
    could judge it (its first steps), else None."""
    from gradpaths._train import EXPLOSION_MIN_HISTORY

    step, judged = _largest_norm(h, explosion_window)
    if judged:
        return None
    need = min(EXPLOSION_MIN_HISTORY, explosion_window)
    norms = known_grad_norms(h)[1]
    top = float(np.max(norms[np.isfinite(norms)]))
    return (f"the largest gradient norm ({top:.3g}, step {step}) came before the explosion "
            f"detector had {need} steps of history, so it was not judged (no explosion event "
            "can be recorded there)")


def _records_note(h: Any) -> str:
    return (f"from records: {len(h.probe_step)} probes and {len(h.events)} events up to step "
            f"{steps_of(h)}; the loss is the probe batch's, the gradient norm is known at "
            "the probes' and events' steps only")


def train_report(histories: Mapping[str, Any], *, clip: float | None = None,
                 settings: Mapping[str, Any] | None = None,
                 command: str | None = None, steps: int | None = None,
                 not_run: tuple[str, ...] | list[str] = (),
                 explosion_window: int = 20, notes: Sequence[str] = ()) -> Report:
    """Training runs as a report: curves, a summary and each run's full history
    (``history_<label>.json``).

    ``steps``: the steps asked for (to tell an interrupted run); ``not_run``: labels of
    runs that were planned but not started (an interrupt stopped the command first).
    ``explosion_window``: as in :func:`gradpaths.train` (the summary says when the
    largest gradient norm came before the explosion rule could judge it). ``notes``:
    more sentences for the summary (e.g. torn lines skipped in a records file).

    A history built from records (``History.from_records``, ``per_step`` False) is
    reported by its records' step numbers: ``steps`` is the last step they reach
    (:func:`steps_of`), ``probes`` their count, and the largest gradient norm is
    taken over the probes and events that carry one."""
    fig = _plot.training_curves(dict(histories), clip=clip)
    data = _header("train", settings, command)
    summary, files = {}, {}
    notes = [f"- {n}" for n in notes]
    for label, h in histories.items():
        name = "history_" + "".join(c if c.isalnum() else "_" for c in label) + ".json"
        files[name] = json.dumps(h.to_dict(), allow_nan=False) + "\n"
        top_step, judged = _largest_norm(h, explosion_window)
        norms = known_grad_norms(h)[1]
        per_step = bool(getattr(h, "per_step", True))
        summary[label] = {
            "file": name, "steps": steps_of(h), "per_step": per_step,
            "probes": int(len(h.probe_step)),
            "final_loss": _num(h.loss[-1]) if len(h.loss) else None,
            "max_grad_norm": _num(np.nanmax(norms)) if (~np.isnan(norms)).any() else None,
            "max_grad_norm_step": top_step, "max_grad_norm_judged": judged,
            "explosions": len(h.explosions),
            "nonfinite": sum(e.kind == "nonfinite" for e in h.events),
            "stopped": h.stopped, "interrupted": bool(h.interrupted),
        }
        if not per_step:
            notes.append(f"- {label}: {_records_note(h)}.")
        if not has_grad_norms(h):
            notes.append(f"- {label}: {NO_GRAD_NORM}.")
        note = unjudged_note(h, explosion_window)
        if note:
            notes.append(f"- {label}: {note}.")
    interrupted = [label for label, h in histories.items() if h.interrupted]
    data["interrupted"] = bool(interrupted)
    data["not_run"] = list(not_run)
    data["runs"] = summary
    rows = [[label, s["steps"], _fmt(s["final_loss"], ".4g"), _fmt(s["max_grad_norm"], ".3g"),
             s["explosions"], s["nonfinite"],
             "interrupted" if s["interrupted"] else (s["stopped"] or "-")]
            for label, s in summary.items()]
    rows += [[label, 0, "-", "-", "-", "-", "not run (interrupted)"] for label in not_run]
    head = []
    if interrupted:
        done = ", ".join(f"'{label}' after {summary[label]['steps']}"
                         + (f" of {steps}" if steps else "") + " steps" for label in interrupted)
        head = [f"**Interrupted (Ctrl-C):** {done}"
                + (f"; not run: {', '.join(repr(x) for x in not_run)}" if not_run else "")
                + ". Runs of different lengths are not comparable.", ""]
    events = []
    for label, h in histories.items():
        for e in h.events[:10]:
            events.append(f"- {label}: {e.message}")
        if len(h.events) > 10:
            events.append(f"- {label}: ... {len(h.events) - 10} more in its history file")
    md = "\n".join([
        "# gradpaths training", "", *head,
        _table(["run", "steps", "final loss", "largest gradient norm", "explosions",
                "NaN/inf steps", "stopped"], rows), "",
        *(notes + [""] if notes else []),
        "![training curves](training_curves.png)", "",
        "## Events", "", *(events or ["None."]), "",
        _footer(data)])
    return Report(data, md, {"training_curves": fig}, files)


def command_line(argv: Sequence[str] | None) -> str:
    """The command as typed (for the report), quoted where needed."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["gradpaths", *args])
