"""The history of a training run: numpy arrays per step and per probe, the events,
and their JSON form."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError
from gradpaths._train._events import Event
from gradpaths._train._probe import Probe

_STEP_FIELDS = ("loss", "task_loss", "penalty", "grad_norm")
_PROBE_FIELDS = ("probe_loss", "top_exponent")
_ROWS = ("route_exponents", "cut_exponents", "saturation")


def _json_array(a: np.ndarray) -> list:
    """Nested lists: bools and ints as they are, floats by :func:`_checks.json_number`."""
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.tolist()
    if a.ndim > 1:
        return [_json_array(r) for r in a]
    return [_checks.json_number(v) for v in a]


def _from_json(values: list, name: str, width: int | None = None) -> np.ndarray:
    """(S,) or (S, width) float64 from :func:`_json_array`'s lists."""
    if width is not None and not values:
        return np.zeros((0, width))
    read = lambda v: _checks.number_from_json(v, name)
    out = np.array([[read(v) for v in row] for row in values] if width is not None
                   else [read(v) for v in values], np.float64)
    if width is not None and out.shape[1:] != (width,):
        raise InputError(f"{name}: expected rows of {width} numbers, got shape {out.shape}")
    return out


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
    ``per_step``: True when the per-step arrays hold every step (a :func:`train`
    run); False for a history built from records (:meth:`from_records`), whose
    per-step arrays hold only the probes' steps.
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
    per_step: bool = True

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
            raise InputError(f"route: expected one of {self.routes}, got {route!r}")
        rows = self.route_exponents
        assert rows is not None, "__post_init__ sets it"
        return rows[:, self.routes.index(route)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: arrays as lists, NaN and infinities as the strings
        ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has none; ``float()`` reads them back),
        so ``json.dumps(..., allow_nan=False)`` works; ``null`` only for a missing
        ``baseline`` or ``stopped``."""
        out: dict[str, Any] = {
            "routes": list(self.routes), "gates": list(self.gates),
            "baseline": None if self.baseline is None else _checks.json_number(self.baseline),
            "interrupted": bool(self.interrupted), "stopped": self.stopped,
            "per_step": bool(self.per_step),
        }
        for name in ("step", *_STEP_FIELDS, "clipped", "probe_step", *_PROBE_FIELDS, *_ROWS):
            out[name] = _json_array(np.asarray(getattr(self, name)))
        out["events"] = [e.to_dict() for e in self.events]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`; reads exactly what it writes (a ``null`` where a
        number belongs is a ``ValueError``)."""
        baseline = d["baseline"]
        h = cls(tuple(d["routes"]), tuple(d["gates"]),
                None if baseline is None else _checks.number_from_json(baseline, "baseline"),
                interrupted=bool(d["interrupted"]), stopped=d["stopped"],
                per_step=bool(d.get("per_step", True)))
        h.step = np.array(d["step"], np.int64)
        h.probe_step = np.array(d["probe_step"], np.int64)
        h.clipped = np.array(d["clipped"], bool)
        for name in (*_STEP_FIELDS, *_PROBE_FIELDS):
            setattr(h, name, _from_json(d[name], name))
        for name in ("route_exponents", "cut_exponents"):
            setattr(h, name, _from_json(d[name], name, len(h.routes)))
        h.saturation = _from_json(d["saturation"], "saturation", len(h.gates))
        h.events = [Event.from_dict(e) for e in d["events"]]
        return h

    def records(self) -> list[Probe | Event]:
        """The probes (:class:`Probe`, with the loss on the probe batch and the step's
        gradient norm where that step was taken) and the events, in step order (a
        probe before an event of the same step): what :func:`gradpaths.append_record`
        writes, one by one."""
        assert (self.route_exponents is not None and self.cut_exponents is not None
                and self.saturation is not None), "__post_init__ sets them"
        norm = dict(zip(self.step.tolist(), self.grad_norm.tolist(), strict=True))
        probes = [Probe(float(self.probe_loss[k]), float(self.top_exponent[k]),
                        self.route_exponents[k], self.cut_exponents[k], self.saturation[k],
                        int(s), norm.get(int(s)), self.routes, self.gates)
                  for k, s in enumerate(self.probe_step)]
        out: list[Probe | Event] = [*probes, *self.events]
        return sorted(out, key=lambda r: (r.step, isinstance(r, Event)))

    @classmethod
    def from_records(cls, records: Iterable[Any], baseline: float | None = None) -> History:
        """A :class:`History` of the probes and events in ``records`` (e.g.
        :func:`gradpaths.read_records`), for :func:`gradpaths.plot.training_curves`.

        The per-step arrays hold the probes' steps, with their loss (the probe batch's)
        and gradient norm (NaN where not given): a user's loop records probes, not
        every step; ``per_step`` is False. Other records (plain mappings) are left
        out. Probes must share routes and gates, and carry their ``step``."""
        probes = [r for r in records if isinstance(r, Probe)]
        events = [r for r in records if isinstance(r, Event)]
        routes = probes[0].routes if probes else ()
        gates = probes[0].gates if probes else ()
        for p in probes:
            if p.step is None:
                raise InputError("records: expected every probe to carry its step, got one "
                                 "without (pass step= to gradpaths.probe)")
            if (p.routes, p.gates) != (routes, gates):
                raise InputError(f"records: expected probes of one cell (routes {routes}, gates "
                                 f"{gates}), got routes {p.routes}, gates {p.gates}")
        probes.sort(key=operator.attrgetter("step"))
        nan = lambda v: np.nan if v is None else float(v)
        steps = np.array([p.step for p in probes], np.int64)
        loss = np.array([nan(p.loss) for p in probes])
        rows = lambda name, width: np.array([getattr(p, name) for p in probes],
                                            np.float64).reshape(len(probes), width)
        return cls(routes, gates, baseline, step=steps, loss=loss, task_loss=loss.copy(),
                   penalty=np.zeros(len(probes)),
                   grad_norm=np.array([nan(p.grad_norm) for p in probes]),
                   clipped=np.zeros(len(probes), bool), probe_step=steps.copy(),
                   probe_loss=loss.copy(),
                   top_exponent=np.array([p.top_exponent for p in probes], np.float64),
                   route_exponents=rows("route_exponents", len(routes)),
                   cut_exponents=rows("cut_exponents", len(routes)),
                   saturation=rows("saturation", len(gates)),
                   events=sorted(events, key=lambda e: e.step), per_step=False)


class Recorder:
    """Appends to Python lists (a numpy append per step would cost O(S^2)); builds the
    :class:`History` on demand (checkpoints, the end)."""

    def __init__(self, history: History) -> None:
        self.routes, self.gates, self.baseline = history.routes, history.gates, history.baseline
        self.steps = {name: list(getattr(history, name))
                      for name in ("step", *_STEP_FIELDS, "clipped")}
        self.probes = {name: list(getattr(history, name))
                       for name in ("probe_step", *_PROBE_FIELDS, *_ROWS)}
        self.events = list(history.events)
        self.interrupted: bool = False
        self.stopped: str | None = None

    @property
    def next_step(self) -> int:
        return int(self.steps["step"][-1]) + 1 if self.steps["step"] else 0

    def add_step(self, step: int, stats: Any, clipped: bool) -> None:
        for name in _STEP_FIELDS:
            self.steps[name].append(float(getattr(stats, name)))
        self.steps["clipped"].append(bool(clipped))
        self.steps["step"].append(step)    # last: the step counts once all is recorded

    def has_probe(self, step: int) -> bool:
        return step in self.probes["probe_step"][-1:]

    def add_probe(self, step: int, probe: Probe) -> None:
        self.probes["probe_loss"].append(float(probe.loss))
        self.probes["top_exponent"].append(float(probe.top_exponent))
        for name in _ROWS:
            self.probes[name].append(np.asarray(getattr(probe, name), np.float64))
        self.probes["probe_step"].append(step)

    def last_probe(self) -> Probe:
        """The last probe recorded, as a :class:`Probe` (no gradient norm)."""
        get = lambda name: self.probes[name][-1]
        return Probe(get("probe_loss"), get("top_exponent"),
                     np.asarray(get("route_exponents"), np.float64),
                     np.asarray(get("cut_exponents"), np.float64),
                     np.asarray(get("saturation"), np.float64), int(get("probe_step")),
                     None, self.routes, self.gates)

    def history(self) -> History:
        n = len(self.steps["step"])
        p = len(self.probes["probe_step"])
        cols = lambda name, width: np.reshape(np.asarray(self.probes[name], np.float64)[:p],
                                              (p, width))
        per_step: dict[str, Any] = {name: np.asarray(self.steps[name][:n], np.float64)
                                    for name in _STEP_FIELDS}
        per_probe: dict[str, Any] = {name: np.asarray(self.probes[name][:p], np.float64)
                                     for name in _PROBE_FIELDS}
        return History(
            self.routes, self.gates, self.baseline,
            step=np.asarray(self.steps["step"], np.int64),
            **per_step,
            clipped=np.asarray(self.steps["clipped"][:n], bool),
            probe_step=np.asarray(self.probes["probe_step"], np.int64),
            **per_probe,
            route_exponents=cols("route_exponents", len(self.routes)),
            cut_exponents=cols("cut_exponents", len(self.routes)),
            saturation=cols("saturation", len(self.gates)),
            events=list(self.events), interrupted=self.interrupted, stopped=self.stopped)
