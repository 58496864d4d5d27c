r"""Training with optax, watched: every step's loss and gradient norm, the routes'
growth on probe sequences, explosion events and their dominant route, checkpoints.

The jitted train step is a pure function of ``(params, opt_state, key)``; the Python
loop around it records, reports progress, catches Ctrl-C and writes checkpoints.

Growth of a route is its restricted top Lyapunov exponent over a probe sequence
(:func:`gradpaths._lyapunov.growth_many`): the exponent of ``prod_t J_t^r``, nats per
step. The first step, which leaves the zero initial state, is left out (an LSTM's f
route is exactly zero there, ``J^f_0 = diag(c_0 f (1 - f)) R_f`` with ``c_0 = 0``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradpaths import _cells, _checks, _explain, _inputs, _lyapunov, _routes
from gradpaths._gradients import prepare_sequence
from gradpaths._products import advance
from gradpaths._state import layout_of
from gradpaths._tasks import Batch, Model, ModelParams, check_task, initial_state
from gradpaths._views import gate_saturation

Array = jax.Array
NONFINITE_ACTIONS = ("stop", "skip", "raise")
SIDES = ("above", "both")
_CHECKPOINT_FORMAT = "gradpaths.train/1"
#: The explosion rule judges a step once at least this many finite gradient norms
#: (or ``explosion_window``, if smaller) precede it in its window: the first steps are
#: not judged (see :func:`judged_steps`).
EXPLOSION_MIN_HISTORY = 5


# --------------------------------------------------------------------------- regulariser


def _skip_first(cell: Any, params: Any, xs: Array, skip: int) -> tuple[Array, Any]:
    """``(xs[skip:], s_skip)``: the inputs and state after the first ``skip`` steps."""
    state = advance(cell, params, xs[:skip], initial_state(cell, xs.dtype))
    return xs[skip:], state


@dataclasses.dataclass(frozen=True)
class GrowthRegularizer:
    r"""A loss term that holds finite-horizon Lyapunov exponents at a target.

    .. math::

        P(\theta) = \mathrm{strength} \sum_{i=1}^{k} \rho(\lambda_i(\theta) - \mathrm{target}),
        \qquad \rho(u) = \max(u, 0)^2 \;(\text{side="above"}) \text{ or } u^2 \;(\text{"both"})

    ``lambda_i`` are the top ``k`` exponents (QR method, differentiated by JAX) of
    ``prod_t J_t^S``, the step Jacobians restricted to the routes ``S`` (all when
    ``routes`` is None), averaged over the first ``n_sequences`` sequences of the
    batch; the first ``skip`` steps are left out. ``side="above"`` only pushes
    exponents above the target down (hold the o route at or below 0, say);
    ``side="both"`` pulls them to it (gradient flossing, Engelken 2023, uses the
    full Jacobian of a vanilla RNN with target 0).

    Args:
      target: the exponent to hold, nats/step.
      strength: the weight of the term.
      routes: None, or route names (e.g. ``("o",)``).
      k: how many exponents.
      side: ``"above"`` or ``"both"``.
      n_sequences: sequences of each batch used (fewer is cheaper).
      skip: steps left out at the start (default 1).
    """

    target: float = 0.0
    strength: float = 1.0
    routes: tuple[str, ...] | None = None
    k: int = 1
    side: str = "above"
    n_sequences: int = 4
    skip: int = 1

    def __post_init__(self) -> None:
        for name in ("target", "strength"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                    value):
                raise TypeError(f"{name}: expected a finite float, got {value!r}")
        if self.strength < 0:
            raise ValueError(f"strength: expected >= 0, got {self.strength}")
        if self.routes is not None:
            if isinstance(self.routes, str) or not isinstance(self.routes, Iterable):
                raise TypeError(f"routes: expected None or route names, got {self.routes!r}")
            object.__setattr__(self, "routes", tuple(self.routes))
        _checks.check_positive_int(self.k, "k")
        _checks.check_choice(self.side, "side", SIDES)
        _checks.check_positive_int(self.n_sequences, "n_sequences")
        _checks.check_positive_int(self.skip, "skip", allow_zero=True)

    def check(self, cell: Any, length: int) -> None:
        """Raise a clear error unless this regulariser fits ``cell`` and sequences of ``length``."""
        _routes.check_routes(cell, self.routes)
        d = layout_of(jax.eval_shape(cell.initial_state)).size
        if self.k > d:
            raise ValueError(f"k: expected 1 <= k <= {d} (the state size), got {self.k}")
        if self.skip >= length:
            raise ValueError(f"skip: expected < the sequence length {length}, got {self.skip}")

    def exponents(self, cell: Any, params: Any, xs: Array) -> Array:
        """``lambda_i``, (k,): mean over the first ``n_sequences`` of ``xs`` (B, T, m).
        Traceable; no validation (see :meth:`check`)."""
        def one(x):
            x, state = _skip_first(cell, params, x, self.skip)
            return _lyapunov.lyapunov_exponents(cell, params, x, state, k=self.k,
                                                routes=self.routes, method="jvp")

        return jnp.mean(jax.vmap(one)(xs[: self.n_sequences]), axis=0)

    def penalty(self, cell: Any, params: Any, xs: Array) -> tuple[Array, Array]:
        """``(P, lambda)``: the penalty and the exponents it was built from."""
        lam = self.exponents(cell, params, xs)
        gap = lam - self.target
        if self.side == "above":
            gap = jnp.maximum(gap, 0.0)
        return self.strength * jnp.sum(gap * gap), lam


# --------------------------------------------------------------------------- probes


def saturation(cell: Any, params: Any, xs: Array) -> tuple[tuple[str, ...], np.ndarray]:
    """``(gates, fraction)``: the fraction of saturated units of each gate over the
    sequences ``xs`` (B, T, m), by the rule of :func:`gradpaths.gate_saturation`
    (both ends counted). Cells other than the built-in ones: no gates."""
    if not _inputs.is_builtin(cell):
        return (), np.zeros((0,))
    sats = [gate_saturation(cell, params, x) for x in xs]
    return sats[0].gates, np.mean([s.low + s.high for s in sats], axis=(0, 1))


class Probe(NamedTuple):
    """What the probe sequences show at one moment.

    Attributes:
      loss: () the task loss on the probe batch.
      top_exponent: () top exponent of the full Jacobian product (mean over probes).
      route_exponents: (R,) each route's own top exponent, ``prod_t J_t^r`` (its growth).
      cut_exponents: (R,) the top exponent with route r cut (all other routes kept);
        ``top_exponent - cut_exponents[r]`` is how much of the growth needs route r.
      saturation: (G,) fraction of saturated units per gate (:func:`saturation`).

    Exponents are means over the probe sequences, nats/step.
    """

    loss: Array
    top_exponent: Array
    route_exponents: Array
    cut_exponents: Array
    saturation: Array


def _route_names(cell: Any) -> tuple[str, ...]:
    return cell.routes if _routes.has_routes(cell) else ()


def _probe_growth(model: Model, params: ModelParams, batch: Batch
                  ) -> tuple[Array, Array, Array, Array]:
    """Loss and exponents of a :class:`Probe`; run under ``_inputs.call`` (jit, model
    static)."""
    cell = model.cell
    routes = _route_names(cell)
    alone = tuple(((r,), None) for r in routes)
    cut = tuple((tuple(q for q in routes if q != r), None) for r in routes) if len(
        routes) > 1 else ()
    specs = ((None, None),) + alone + cut
    skip = 1 if batch.xs.shape[1] > 1 else 0

    def one(xs):
        xs_rest, state = _skip_first(cell, params.cell, xs, skip)
        return _lyapunov.growth_many(cell, params.cell, xs_rest, state, specs,
                                     horizon=None).exponent

    exps = jnp.mean(jax.vmap(one)(batch.xs), axis=0)
    R = len(routes)
    cut_exps = exps[1 + R:] if cut else jnp.full((R,), -jnp.inf, exps.dtype)
    return model.batch_loss(params, batch), exps[0], exps[1:1 + R], cut_exps


def probe(model: Model, params: ModelParams, batch: Batch) -> Probe:
    """The :class:`Probe` of ``params`` on ``batch``."""
    growth = jax.device_get(_inputs.call(_probe_growth, model, params, batch))
    return Probe(*growth, saturation(model.cell, params.cell, batch.xs)[1])


# --------------------------------------------------------------------------- train step


class StepStats(NamedTuple):
    """One train step: ``loss = task_loss + penalty``; ``grad_norm`` before clipping;
    ``finite`` False when the loss, the gradient or the new params are not finite
    (the update is then not applied)."""

    loss: Array
    task_loss: Array
    penalty: Array
    grad_norm: Array
    finite: Array


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@functools.lru_cache(maxsize=64)
def _compiled_step(model: Model, optimizer: Any, regularizer: Any) -> Callable:
    """The jitted, pure train step ``(params, opt_state, batch) -> (params, opt_state, stats)``."""
    model = _inputs._unwrap(model)

    def objective(params, batch):
        task_loss = model.batch_loss(params, batch)
        if regularizer is None:
            return task_loss, (task_loss, jnp.zeros_like(task_loss))
        penalty, _ = regularizer.penalty(model.cell, params.cell, batch.xs)
        return task_loss + penalty, (task_loss, penalty)

    def step(params, opt_state, batch):
        (loss, (task_loss, penalty)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
        keep = lambda new, old: jnp.where(finite, new, old)
        params = jax.tree_util.tree_map(keep, new_params, params)
        opt_state = jax.tree_util.tree_map(keep, new_opt, opt_state)
        return params, opt_state, StepStats(loss, task_loss, penalty, grad_norm, finite)

    return jax.jit(step)


@functools.lru_cache(maxsize=64)
def _sampler(task: Any, batch_size: int, dtype: Any) -> Callable:
    """``key -> Batch``, jitted apart from the step (random bits compile slowly on CPU,
    once per task rather than once per training configuration)."""
    task = _inputs._unwrap(task)
    return jax.jit(lambda key: task.sample(key, batch_size, dtype))


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


@functools.lru_cache(maxsize=64)
def _with_clip(optimizer: Any, clip: float | None) -> Any:
    return optimizer if clip is None else optax.chain(optax.clip_by_global_norm(clip), optimizer)


# --------------------------------------------------------------------------- history


class Event(NamedTuple):
    """Something that happened at one step.

    Attributes:
      step: the step index.
      kind: ``"explosion"`` (gradient norm above ``factor`` times its running
        median) or ``"nonfinite"`` (NaN/inf loss, gradient or parameters).
      grad_norm: the gradient's global norm at that step (before clipping).
      median: the running median of the previous norms (NaN when none).
      dominant_route: the route whose cut lowers the top exponent on the probe
        sequences the most at that moment, leaving out a carousel that contracts
        on its own (the rule of :func:`gradpaths.explain`); None without routes.
      route_drop: route -> ``top exponent - top exponent with that route cut``
        (nats/step): how much of the growth runs through the route.
      message: a sentence for humans.
    """

    step: int
    kind: str
    grad_norm: float
    median: float
    dominant_route: str | None
    route_drop: dict[str, float]
    message: str


_json_float = _checks.json_number


def _json_array(a: np.ndarray) -> list:
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.tolist()
    return [_json_array(r) if r.ndim else _json_float(r) for r in a] if a.ndim > 1 else [
        _json_float(v) for v in a]


def _from_json(values: list, dtype: Any, width: int | None = None) -> np.ndarray:
    if width is not None and not values:
        return np.zeros((0, width), dtype)
    read = lambda v: np.nan if v is None else float(v)
    return np.array([[read(v) for v in row] for row in values] if width
                    is not None else [read(v) for v in values], dtype)


_STEP_FIELDS = ("loss", "task_loss", "penalty", "grad_norm")
_PROBE_FIELDS = ("probe_loss", "top_exponent")


@dataclasses.dataclass
class History:
    """Everything recorded during training, as numpy arrays.

    Per step (S steps): ``step`` (S,) int, ``loss`` (S,) (task loss + penalty),
    ``task_loss``, ``penalty``, ``grad_norm`` (global norm before clipping),
    ``clipped`` (S,) bool (the norm exceeded the clipping threshold).
    Per probe (P probes, every ``probe_every`` steps and at the end; taken with the
    parameters before that step's update): ``probe_step`` (P,), ``probe_loss``,
    ``top_exponent`` (P,), ``route_exponents`` (P, R) (each route alone) and
    ``cut_exponents`` (P, R) (each route cut) for ``routes`` (see :class:`Probe`),
    ``saturation`` (P, G) for ``gates``.
    ``events``: explosion and non-finite :class:`Event` s. ``interrupted``: stopped
    by Ctrl-C (or a ``KeyboardInterrupt``); ``stopped``: None, or why training
    ended early (``"nonfinite"``). ``baseline``: the task's trivial loss.
    """

    routes: tuple[str, ...]
    gates: tuple[str, ...]
    baseline: float | None
    step: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))
    loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    task_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    penalty: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    grad_norm: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    clipped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), bool))
    probe_step: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))
    probe_loss: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    top_exponent: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,)))
    route_exponents: np.ndarray | None = None
    cut_exponents: np.ndarray | None = None
    saturation: np.ndarray | None = None
    events: list[Event] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None

    def __post_init__(self) -> None:
        for name in ("route_exponents", "cut_exponents"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros((0, len(self.routes))))
        if self.saturation is None:
            self.saturation = np.zeros((0, len(self.gates)))

    @property
    def next_step(self) -> int:
        """The step a resumed run starts at."""
        return int(self.step[-1]) + 1 if len(self.step) else 0

    @property
    def explosions(self) -> list[Event]:
        return [e for e in self.events if e.kind == "explosion"]

    def route_exponent(self, route: str) -> np.ndarray:
        """(P,) the restricted top exponent of ``route`` at each probe."""
        if route not in self.routes:
            raise ValueError(f"route: expected one of {self.routes}, got {route!r}")
        return self.route_exponents[:, self.routes.index(route)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, None for NaN and infinities)."""
        out: dict[str, Any] = {
            "routes": list(self.routes), "gates": list(self.gates),
            "baseline": None if self.baseline is None else _json_float(self.baseline),
            "interrupted": bool(self.interrupted), "stopped": self.stopped,
        }
        for name in ("step", *_STEP_FIELDS, "clipped", "probe_step", *_PROBE_FIELDS,
                     "route_exponents", "cut_exponents", "saturation"):
            out[name] = _json_array(np.asarray(getattr(self, name)))
        out["events"] = [
            {**e._asdict(), "grad_norm": _json_float(e.grad_norm), "median": _json_float(e.median),
             "route_drop": {k: _json_float(v) for k, v in e.route_drop.items()}}
            for e in self.events
        ]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        nan = lambda v: np.nan if v is None else float(v)
        h = cls(tuple(d["routes"]), tuple(d["gates"]), d["baseline"],
                interrupted=bool(d["interrupted"]), stopped=d["stopped"])
        h.step = np.array(d["step"], np.int64)
        h.probe_step = np.array(d["probe_step"], np.int64)
        h.clipped = np.array(d["clipped"], bool)
        for name in (*_STEP_FIELDS, *_PROBE_FIELDS):
            setattr(h, name, _from_json(d[name], np.float64))
        for name in ("route_exponents", "cut_exponents"):
            setattr(h, name, _from_json(d[name], np.float64, len(h.routes)))
        h.saturation = _from_json(d["saturation"], np.float64, len(h.gates))
        h.events = [Event(e["step"], e["kind"], nan(e["grad_norm"]), nan(e["median"]),
                          e["dominant_route"], {k: nan(v) for k, v in e["route_drop"].items()},
                          e["message"]) for e in d["events"]]
        return h


class _Recorder:
    """Appends to Python lists (a numpy append per step would cost O(S^2)); builds the
    :class:`History` on demand (checkpoints, the end)."""

    def __init__(self, history: History) -> None:
        self.routes, self.gates, self.baseline = history.routes, history.gates, history.baseline
        self.steps = {name: list(getattr(history, name))
                      for name in ("step", *_STEP_FIELDS, "clipped")}
        self.probes = {name: list(getattr(history, name))
                       for name in ("probe_step", *_PROBE_FIELDS, "route_exponents",
                                    "cut_exponents", "saturation")}
        self.events = list(history.events)
        self.interrupted, self.stopped = False, None

    @property
    def next_step(self) -> int:
        return int(self.steps["step"][-1]) + 1 if self.steps["step"] else 0

    def recent_grad_norms(self, window: int) -> np.ndarray:
        return np.asarray(self.steps["grad_norm"][-window:], np.float64)

    def add_step(self, step: int, stats: StepStats, clipped: bool) -> None:
        for name in _STEP_FIELDS:
            self.steps[name].append(float(getattr(stats, name)))
        self.steps["clipped"].append(bool(clipped))
        self.steps["step"].append(step)    # last: the step counts once all is recorded

    def has_probe(self, step: int) -> bool:
        return step in self.probes["probe_step"][-1:]

    def add_probe(self, step: int, probe: Probe) -> None:
        self.probes["probe_loss"].append(float(probe.loss))
        self.probes["top_exponent"].append(float(probe.top_exponent))
        for name in ("route_exponents", "cut_exponents", "saturation"):
            self.probes[name].append(np.asarray(getattr(probe, name), np.float64))
        self.probes["probe_step"].append(step)

    def history(self) -> History:
        n = len(self.steps["step"])
        p = len(self.probes["probe_step"])
        cols = lambda name, width: np.reshape(np.asarray(self.probes[name], np.float64)[:p],
                                              (p, width))
        return History(
            self.routes, self.gates, self.baseline,
            step=np.asarray(self.steps["step"], np.int64),
            **{name: np.asarray(self.steps[name][:n], np.float64) for name in _STEP_FIELDS},
            clipped=np.asarray(self.steps["clipped"][:n], bool),
            probe_step=np.asarray(self.probes["probe_step"], np.int64),
            **{name: np.asarray(self.probes[name][:p], np.float64) for name in _PROBE_FIELDS},
            route_exponents=cols("route_exponents", len(self.routes)),
            cut_exponents=cols("cut_exponents", len(self.routes)),
            saturation=cols("saturation", len(self.gates)),
            events=list(self.events), interrupted=self.interrupted, stopped=self.stopped)


class TrainResult(NamedTuple):
    """``params`` and ``opt_state`` after the last applied step, and the :class:`History`."""

    params: ModelParams
    opt_state: Any
    history: History


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, params: Any, opt_state: Any, history: History,
                    meta: dict[str, Any]) -> None:
    """Write params, optimizer state, history and ``meta`` to ``path`` atomically.

    The file is written next to ``path`` under a fresh temporary name, flushed to
    disk, then renamed over ``path`` (``os.replace``): a crash leaves either the
    old checkpoint or the new one, never a torn file.
    """
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(_CHECKPOINT_FORMAT),
        "history": np.array(json.dumps(history.to_dict())),
        "meta": np.array(json.dumps(meta)),
    }
    for prefix, tree in (("params", params), ("opt", opt_state)):
        for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
            arrays[f"{prefix}_{i}"] = np.asarray(leaf)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`save_checkpoint` (its format tag is
    read; a damaged file can still pass, and :func:`load_checkpoint` then says so)."""
    try:    # np.load(path) leaves the file open when it is a damaged zip: open it here
        with open(os.fspath(path), "rb") as f, np.load(f, allow_pickle=False) as data:
            return "format" in data.files and str(data["format"]) == _CHECKPOINT_FORMAT
    except (*_READ_ERRORS, AttributeError, TypeError):    # TypeError: a .npy, no `with`
        return False


def load_checkpoint(path: str | os.PathLike, params: Any, opt_state: Any
                    ) -> tuple[Any, Any, History, dict[str, Any]]:
    """Read a checkpoint; ``params`` and ``opt_state`` give the expected structure.

    Raises:
      ValueError: naming ``path``: no such file, not a gradpaths checkpoint, damaged
        (truncated or corrupted), or arrays that do not fit ``params``/``opt_state``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: no such file {path!r}")
    if not is_checkpoint(path):
        with open(path, "rb") as f:
            head = f.read(64)
        # np.savez writes "format" first: a zip whose first member is format.npy is a
        # checkpoint that can no longer be read.
        if head.startswith(b"PK\x03\x04") and b"format.npy" in head:
            raise ValueError(f"checkpoint: {path!r} is damaged (truncated or corrupted); "
                             "delete it, or resume from a copy")
        raise ValueError(f"checkpoint: expected a gradpaths training checkpoint, got {path!r}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            history_text, meta_text = str(data["history"]), str(data["meta"])
            stored = {k: data[k] for k in data.files if k.startswith(("params_", "opt_"))}
    except _READ_ERRORS as err:
        raise ValueError(f"checkpoint: {path!r} is damaged (truncated or corrupted: {err}); "
                         "delete it, or resume from a copy") from None
    try:
        history = History.from_dict(json.loads(history_text))
        meta = json.loads(meta_text)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint: {path!r} is damaged: its history cannot be read "
                         f"({type(err).__name__}: {err})") from None
    trees = []
    for prefix, like in (("params", params), ("opt", opt_state)):
        leaves, treedef = jax.tree_util.tree_flatten(like)
        names = sorted((k for k in stored if k.startswith(prefix + "_")),
                       key=lambda k: int(k.rsplit("_", 1)[1]))
        if len(names) != len(leaves):
            raise ValueError(f"checkpoint: expected {len(leaves)} {prefix} arrays, got "
                             f"{len(names)} in {path!r}")
        new = []
        for name, leaf in zip(names, leaves, strict=True):
            value = stored[name]
            if value.shape != np.shape(leaf):
                raise ValueError(f"checkpoint: {name} expected shape {np.shape(leaf)}, got "
                                 f"{value.shape} in {path!r}")
            new.append(jnp.asarray(value, jnp.asarray(leaf).dtype))
        trees.append(jax.tree_util.tree_unflatten(treedef, new))
    return trees[0], trees[1], history, meta


def _check_checkpoint_path(path: Any, resume: bool) -> str:
    """``path`` as a string, or a clear error before any training: the folder must exist
    and be writable; an existing file is only continued (``resume=True``)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected None or a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path.strip():
        raise ValueError(f"checkpoint: expected a file path, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint: {path!r} is a folder; expected a file path in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint: the folder {folder!r} of {path!r} does not exist; "
                         "create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint: cannot write in the folder {folder!r} of {path!r}")
    if os.path.lexists(path) and not resume:
        raise FileExistsError(
            f"checkpoint: {path!r} exists; pass resume=True to continue from it "
            "or choose another path (it is never overwritten otherwise)")
    return path


def judged_steps(grad_norm: Any, explosion_window: int = 20) -> np.ndarray:
    """(S,) bool: the steps the explosion rule of :func:`train` could judge, those with
    at least ``min(EXPLOSION_MIN_HISTORY, explosion_window)`` finite norms among the
    previous ``explosion_window`` (the first 5 steps of a run are never judged)."""
    finite = np.isfinite(np.asarray(grad_norm, np.float64))
    count = np.concatenate([[0], np.cumsum(finite)])
    t = np.arange(len(finite))
    before = count[t] - count[np.maximum(t - explosion_window, 0)]
    return before >= min(EXPLOSION_MIN_HISTORY, explosion_window)


# --------------------------------------------------------------------------- progress, Ctrl-C


class _Progress:
    """One status line on stderr, rewritten in place at most every 0.2 s."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.last, self.shown = total, enabled, 0.0, False

    def update(self, step: int, loss: float, grad_norm: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last, self.shown = now, True
        done = (step + 1) / self.total
        bar = "#" * int(24 * done)
        sys.stderr.write(f"\rtrain [{bar:<24}] {step + 1}/{self.total}  loss {loss:.4g}  "
                         f"|grad| {grad_norm:.3g} ")
        sys.stderr.flush()

    def close(self, note: str = "") -> None:
        if self.enabled and (self.shown or note):
            sys.stderr.write(("\n" if self.shown else "") + (note + "\n" if note else ""))
            sys.stderr.flush()


class _Interrupts:
    """First Ctrl-C: finish the current step, then stop. Second: raise at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# --------------------------------------------------------------------------- train


def _check_key(key: Any) -> Array:
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key: expected a single PRNG key, got shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"key: expected a PRNG key (jax.random.key(seed)), got {key!r}")


def _check_positive_float(value: Any, name: str, *, above: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= above:
        raise ValueError(f"{name}: expected a finite float > {above}, got {value}")
    return float(value)


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else math.nan


def train(model: Model, params: ModelParams, task: Any, *, key: Any, steps: int,
          batch_size: int = 32, optimizer: Any = None, learning_rate: float | None = None,
          clip: float | None = None, regularizer: GrowthRegularizer | None = None,
          probe_every: int = 50, n_probes: int = 8, explosion_factor: float = 10.0,
          explosion_window: int = 20, on_nonfinite: str = "stop",
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
          resume: bool = False, progress: bool | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    r"""Train ``model`` on ``task`` with optax, recording how the gradients behave.

    Each step draws a batch from ``jax.random.fold_in(train_key, step)`` and minimises
    ``L = task loss + regularizer penalty`` with ``optimizer`` (default
    ``optax.adam(learning_rate)``, ``learning_rate`` 1e-3), optionally behind
    ``optax.clip_by_global_norm(clip)``. Recorded every step: the loss, the gradient's
    global norm before clipping, whether clipping fired. Every ``probe_every`` steps
    (and at the end), on ``n_probes`` fixed probe sequences (:class:`Probe`): the top
    exponent, each route's own exponent (its growth), the top exponent with each route
    cut, and gate saturation.

    Events: an *explosion* at step t when ``|grad_t| > explosion_factor * median``
    of the previous ``explosion_window`` norms (at least 5 of them: the first 5 steps
    are never judged, see :func:`judged_steps`), with the dominant route at that
    moment (the route whose cut lowers the top exponent on the probes the most);
    a *nonfinite* event when the loss, the gradient or the updated parameters hold
    NaN or inf. That update is never applied; then ``on_nonfinite`` says what
    happens: ``"stop"`` (return, ``history.stopped = "nonfinite"``), ``"skip"``
    (go on) or ``"raise"`` (:class:`gradpaths.NonFiniteError`, after checkpointing).

    Ctrl-C (or a ``KeyboardInterrupt`` from ``callback``) ends training after the
    current step and returns what was recorded, ``history.interrupted = True``
    (a second Ctrl-C interrupts at once). With ``checkpoint`` a path, params,
    optimizer state and history are written atomically every ``checkpoint_every``
    steps and when training ends for any reason; ``resume=True`` continues from
    that file (same model, task, key and settings) up to ``steps`` in total and
    reproduces an uninterrupted run exactly. An existing file is never overwritten
    unless ``resume=True`` and it is a gradpaths checkpoint; ``steps`` fewer than the
    checkpoint holds are refused. The checkpoint's folder is checked before training
    starts.

    Args:
      model: a :class:`gradpaths.Model` that fits ``task`` (see ``Model.for_task``).
      params: its :class:`gradpaths.ModelParams` (the start; ignored when resuming).
      task: a task (:func:`gradpaths.make_task`) or any object with its protocol.
      key: a PRNG key; batches and probes derive from it.
      steps: the total number of steps.
      batch_size: sequences per step.
      optimizer: an optax ``GradientTransformation``; or None for adam.
      learning_rate: adam's learning rate (only without ``optimizer``).
      clip: None, or the global-norm clipping threshold.
      regularizer: None, or a :class:`GrowthRegularizer`.
      probe_every, n_probes: probe schedule and batch size.
      explosion_factor, explosion_window: the explosion rule above.
      on_nonfinite: ``"stop"``, ``"skip"`` or ``"raise"``.
      checkpoint, checkpoint_every, resume: see above.
      progress: a status line on stderr; None: only when stderr is a terminal.
      callback: ``callback(step, record)`` after every step, ``record`` a dict of
        that step's numbers.

    Returns:
      :class:`TrainResult` ``(params, opt_state, history)``.

    Example::

        task = gp.make_task("adding", 20)
        model = gp.Model.for_task(gp.LSTM(2, 16), task)
        result = gp.train(model, model.init(jax.random.key(0)), task,
                          key=jax.random.key(1), steps=500, clip=1.0)
        result.history.loss[-1], result.history.explosions
    """
    if not isinstance(model, Model):
        raise TypeError(f"model: expected gradpaths.Model, got {type(model).__name__}")
    check_task(task)
    if (model.output_size, model.loss) != (task.output_size, task.loss):
        raise ValueError(
            f"model: expected output_size {task.output_size} and loss {task.loss!r} for "
            f"{task!r}, got {model.output_size} and {model.loss!r} (use Model.for_task)")
    key = _check_key(key)
    steps = _checks.check_positive_int(steps, "steps")
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    probe_every = _checks.check_positive_int(probe_every, "probe_every")
    n_probes = _checks.check_positive_int(n_probes, "n_probes")
    explosion_factor = _check_positive_float(explosion_factor, "explosion_factor", above=1.0)
    explosion_window = _checks.check_positive_int(explosion_window, "explosion_window")
    checkpoint_every = _checks.check_positive_int(checkpoint_every, "checkpoint_every")
    _checks.check_choice(on_nonfinite, "on_nonfinite", NONFINITE_ACTIONS)
    if checkpoint is not None:      # before any work: a bad path fails now, not at the save
        checkpoint = _check_checkpoint_path(checkpoint, resume)
    elif resume:
        raise ValueError("resume: expected a checkpoint path to resume from, got checkpoint=None")
    if clip is not None:
        clip = _check_positive_float(clip, "clip")
    if optimizer is None:
        lr = 1e-3 if learning_rate is None else _check_positive_float(
            learning_rate, "learning_rate")
        base = _adam(lr)
    else:
        if learning_rate is not None:
            raise ValueError("learning_rate: expected None when an optimizer is given (set the "
                             "rate in the optimizer), got " + repr(learning_rate))
        if not (callable(getattr(optimizer, "init", None))
                and callable(getattr(optimizer, "update", None))):
            raise TypeError(f"optimizer: expected an optax GradientTransformation, got "
                            f"{type(optimizer).__name__}")
        base = optimizer
    if regularizer is not None:
        if not isinstance(regularizer, GrowthRegularizer):
            raise TypeError(f"regularizer: expected GrowthRegularizer or None, got "
                            f"{type(regularizer).__name__}")
        regularizer.check(model.cell, task.length)
    opt = _with_clip(base, clip)

    model.check_params(params)
    dtype = _checks.resolve_dtype(params.readout.b.dtype)
    sample = _sampler(_inputs._hashable(task), batch_size, dtype)
    probe_key, train_key = jax.random.split(key)
    if n_probes <= batch_size:    # one compiled sampler serves both
        probe_batch = sample(probe_key)
        probe_batch = probe_batch._replace(xs=probe_batch.xs[:n_probes],
                                           targets=probe_batch.targets[:n_probes])
    else:
        probe_batch = _sampler(_inputs._hashable(task), n_probes, dtype)(probe_key)
    # Checks params (finite, one dtype) and the task's batches against the model.
    params = prepare_sequence(model, params, probe_batch.xs[0], probe_batch.targets[0], None,
                              probe_batch.weights).params
    opt_state = opt.init(params)

    meta = {"model": repr(model), "task": repr(task), "batch_size": batch_size, "clip": clip,
            "regularizer": repr(regularizer), "optimizer": "adam" if optimizer is None else
            "custom", "learning_rate": learning_rate,
            "key": np.asarray(jax.random.key_data(key)).tolist(), "probe_every": probe_every,
            "n_probes": n_probes, "dtype": str(dtype)}
    routes, gates = _route_names(model.cell), saturation(model.cell, params.cell,
                                                         probe_batch.xs[:1])[0]
    history = History(routes, gates, getattr(task, "baseline", None))
    if checkpoint is not None and os.path.exists(checkpoint):     # resume=True: checked above
        params, opt_state, history, stored = load_checkpoint(checkpoint, params, opt_state)
        changed = sorted(k for k in meta if stored.get(k) != meta[k])
        if changed:
            raise ValueError(
                f"checkpoint: {checkpoint!r} was written with other settings: "
                + "; ".join(f"{k} expected {stored.get(k)!r}, got {meta[k]!r}"
                            for k in changed))
        if history.next_step > steps:
            raise ValueError(
                f"steps: expected at least the {history.next_step} steps that the checkpoint "
                f"{checkpoint!r} already holds, got steps={steps} (a checkpoint is continued, "
                "never cut; load_checkpoint reads it as it is)")

    record = _Recorder(history)
    step_fn = _compiled_step(_inputs._hashable(model), opt, regularizer)
    bar = _Progress(steps, sys.stderr.isatty() if progress is None else bool(progress))

    def probe_now(step: int, p: ModelParams) -> None:
        if not record.has_probe(step):    # a resumed run may have probed this step already
            record.add_probe(step, probe(model, p, probe_batch))

    def route_report(p: ModelParams) -> tuple[str | None, dict[str, float]]:
        if not routes:
            return None, {}
        _, top, alone, cut = jax.device_get(_inputs.call(_probe_growth, model, p, probe_batch))
        with np.errstate(invalid="ignore"):     # -inf - -inf: no route carries anything
            drop = float(top) - np.asarray(cut, np.float64)
        dominant = _explain.dominant_route(
            float(top), dict(zip(routes, map(float, alone), strict=True)),
            dict(zip(routes, map(float, cut), strict=True)), margin=1e-3)
        return dominant, dict(zip(routes, map(float, drop), strict=True))

    def save() -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, params, opt_state, record.history(), meta)

    note = ""
    with _Interrupts() as interrupts:
        try:
            for step in range(record.next_step, steps):
                if step % probe_every == 0:
                    probe_now(step, params)
                batch = sample(jax.random.fold_in(train_key, step))
                new_params, new_opt, stats = step_fn(params, opt_state, batch)
                stats = jax.device_get(stats)
                grad_norm = float(stats.grad_norm)
                recent = record.recent_grad_norms(explosion_window)
                median = _median(recent)
                enough = np.isfinite(recent).sum() >= min(EXPLOSION_MIN_HISTORY,
                                                          explosion_window)
                event = None
                if not bool(stats.finite):
                    dominant, exps = route_report(params)
                    event = Event(step, "nonfinite", grad_norm, median, dominant, exps,
                                  f"step {step}: loss {float(stats.loss):.4g}, gradient norm "
                                  f"{grad_norm:.4g}; NaN or inf, update not applied")
                elif enough and grad_norm > explosion_factor * median:
                    dominant, exps = route_report(params)
                    event = Event(step, "explosion", grad_norm, median, dominant, exps,
                                  f"step {step}: gradient norm {grad_norm:.4g} is "
                                  f"{grad_norm / median:.3g} x the running median {median:.4g}"
                                  + (f"; dominant route {dominant!r}" if dominant else ""))
                if event is not None:
                    record.events.append(event)
                record.add_step(step, stats, clip is not None and grad_norm > clip)
                params, opt_state = new_params, new_opt
                bar.update(step, float(stats.loss), grad_norm, force=step == steps - 1)
                if event is not None and event.kind == "nonfinite":
                    if on_nonfinite == "stop":
                        record.stopped, note = "nonfinite", event.message + "; training stopped"
                        break
                    if on_nonfinite == "raise":
                        record.stopped, note = "nonfinite", event.message
                        raise _checks.NonFiniteError(f"training: {event.message}")
                if callback is not None:
                    callback(step, {"loss": float(stats.loss), "task_loss": float(
                        stats.task_loss), "penalty": float(stats.penalty), "grad_norm": grad_norm,
                        "finite": bool(stats.finite)})
                if interrupts.requested:
                    raise KeyboardInterrupt
                if (step + 1) % checkpoint_every == 0:
                    save()
            else:
                probe_now(steps, params)
        except KeyboardInterrupt:
            record.interrupted = True
            note = f"interrupted after step {record.next_step - 1}; history kept"
        finally:    # whatever ends the run (a crash included), what was recorded is kept
            save()
            bar.close(note)
    return TrainResult(params, opt_state, record.history())


# --------------------------------------------------------------------------- initialisation


def forget_bias_init(cell: Any, params: Any, scheme: Any, *, key: Any = None,
                     t_max: float | None = None) -> Any:
    r"""LSTM parameters with the forget (and, for chrono, input) biases reset.

    ``scheme`` a number ``b``: ``b_f = b``. ``scheme="chrono"`` (Tallec & Ollivier
    2018): ``b_f = log u``, ``u ~ U(1, t_max - 1)`` per unit, and ``b_i = -b_f``, so
    the forget gate at rest, ``f = u / (1 + u)``, gives time scales
    ``1 / (1 - f) = 1 + u`` spread over ``(2, t_max)``.
    """
    if not isinstance(cell, _cells.LSTM) or not cell.forget_gate:
        raise TypeError(f"cell: expected an LSTM with a forget gate, got {cell!r}")
    cell.check_params(params)
    n = cell.hidden_size
    dtype = params.b.f.dtype
    if isinstance(scheme, str):
        _checks.check_choice(scheme, "scheme", ("chrono",))
        if key is None:
            raise ValueError("key: expected a PRNG key for scheme='chrono', got None")
        t_max = _check_positive_float(t_max, "t_max", above=2.0) if t_max is not None else None
        if t_max is None:
            raise ValueError("t_max: expected the longest dependency (> 2) for chrono, got None")
        b_f = jnp.log(jax.random.uniform(_check_key(key), (n,), dtype, 1.0, t_max - 1.0))
        return params._replace(b=params.b._replace(f=b_f, i=-b_f))
    if isinstance(scheme, bool) or not isinstance(scheme, (int, float)) or not math.isfinite(
            scheme):
        raise TypeError(f"scheme: expected a finite number or 'chrono', got {scheme!r}")
    return params._replace(b=params.b._replace(f=jnp.full((n,), float(scheme), dtype)))


class InitDiagnostics(NamedTuple):
    """What an initialisation predicts before training.

    Attributes:
      forget_bias: (n,) ``b_f``.
      timescale: (n,) ``1 / (1 - sigmoid(b_f))``: the memory time scale of each
        unit at rest (zero input and state), in steps.
      timescale_observed: (n,) ``1 / (1 - mean_t f_t)`` on the probe sequences.
      carousel_exponent: () the growth rate of the carousel's own product
        ``dc_T/dc_0 = diag(prod_t f_t)`` on the probes, ``max_j mean_t log f_t[j]``
        (nats/step, mean over probe sequences; about ``-1 / timescale`` for f near 1).
      top_exponent: () the full Jacobian's top exponent on the probes.
    """

    forget_bias: Array
    timescale: Array
    timescale_observed: Array
    carousel_exponent: Array
    top_exponent: Array


def _init_stats(cell: Any, params: Any, xs: Array) -> tuple[Array, Array, Array]:
    # The carousel's c -> c block is diag(prod_t f_t): its whole-horizon growth is exact.
    specs = ((None, None), (("carousel",), ("c", "c")))

    def one(x):
        def body(state, xt):
            return cell.step(params, state, xt), cell.forward(params, state, xt)["f"]

        f = jax.lax.scan(body, cell.initial_state(x.dtype), x)[1]
        growth = _lyapunov.growth_many(cell, params, x, cell.initial_state(x.dtype), specs,
                                       horizon="exact")
        return jnp.mean(f, axis=0), growth.horizon[1], growth.exponent[0]

    f_mean, carousel, top = jax.vmap(one)(xs)
    return jnp.mean(f_mean, axis=0), jnp.mean(carousel), jnp.mean(top)


def init_diagnostics(cell: Any, params: Any, xs: Any, *, key: Any, t_max: float,
                     schemes: Iterable[Any] = (0.0, 1.0, "chrono")) -> dict[str, InitDiagnostics]:
    r"""Forget-bias initialisations compared before training.

    For each scheme (:func:`forget_bias_init`: a constant ``b_f`` or ``"chrono"``)
    applied to ``params``: the time scales ``1 / (1 - f)`` at rest and along the
    probe sequences ``xs``, and the carousel and full top exponents on them.

    Args:
      cell: an LSTM with a forget gate; params: its parameters (other weights kept).
      xs: probe inputs (B, T, m) or (T, m).
      key: PRNG key for chrono; t_max: chrono's longest time scale (e.g. the task length).
      schemes: numbers and/or ``"chrono"``.

    Returns:
      dict: ``"b_f=0"``, ``"b_f=1"``, ``"chrono"``, ... -> :class:`InitDiagnostics`.
    """
    xs = _checks.as_array(xs, "xs")
    if xs.ndim == 2:
        xs = xs[None]
    if xs.ndim != 3:
        raise ValueError(f"xs: expected shape (B, T, m) or (T, m), got {tuple(xs.shape)}")
    out = {}
    for scheme in schemes:
        p = forget_bias_init(cell, params, scheme, key=key, t_max=t_max)
        prepared = _inputs.prepare(cell, p, xs[0], None)
        xs_b = jnp.asarray(xs, prepared.xs.dtype)
        _checks.check_finite(xs_b, "xs")
        f_mean, carousel, top = _inputs.call(_init_stats, cell, prepared.params, xs_b)
        b_f = prepared.params.b.f
        name = "chrono" if isinstance(scheme, str) else f"b_f={float(scheme):g}"
        out[name] = InitDiagnostics(b_f, 1 + jnp.exp(b_f), 1 / (1 - f_mean), carousel, top)
    return out
