"""Records as JSON lines: probes, events and your own numbers, one JSON object per
line, appended atomically, read back with torn lines detected.

The file format (``gradpaths.records/1``), one JSON object per line:

* line 1, the header: ``{"type": "header", "format": "gradpaths.records/1"}``;
* ``{"type": "probe", ...}`` (:meth:`gradpaths.Probe.to_dict`), ``{"type": "event",
  ...}`` (:meth:`gradpaths.Event.to_dict`), ``{"type": "data", "data": {...}}`` (a
  mapping of your own);
* ``{"type": "torn", "length": n}``: written by :func:`append_record` when it finds
  the file ending in a line without its newline (a writer that crashed mid-line):
  that fragment of ``n`` bytes is closed with a newline and marked, never removed;
* ``{"type": "resume", "step": t}``: written by :func:`mark_resume` when a run
  restarts from step ``t`` (from a checkpoint): the records of steps ``>= t``
  written before it belong to the abandoned attempt and are dropped by
  :func:`read_records`, so a resumed run's steps are never counted twice.

Numbers follow one rule (:func:`gradpaths._checks.json_number`): JSON has no NaN,
so NaN and infinities are the strings ``"nan"``, ``"inf"``, ``"-inf"``, whatever their
type (a Python ``float``, a numpy or JAX number or array), in probes, events and your
own mappings alike; a mapping reads back with those strings (``float()`` turns them
back). Mapping keys are strings (JSON's), lines are nested at most
:data:`MAX_DEPTH` levels and steps are ints ``0 <= t < 2**63``
(:data:`MAX_STEP`): what is written reads back as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

try:                     # POSIX: writers lock the file while they check and append
    import fcntl
except ImportError:      # pragma: no cover - no flock on this platform
    fcntl = None  # type: ignore[assignment]  # the module is optional here

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._train._events import Event
from gradpaths._train._probe import Probe

FORMAT = "gradpaths.records/1"
_HEADER = (json.dumps({"type": "header", "format": FORMAT}) + "\n").encode()
_TAIL = 1 << 20     # a torn line longer than this is not looked for (records are short)
#: Steps are ints below this bound (a History holds them as int64).
MAX_STEP = 2**63
#: The deepest nesting of lists and mappings in a record (the record itself is one level).
MAX_DEPTH = 100


class RecordWarning(UserWarning):
    """A records file holds a torn line (a writer stopped mid-line); it was skipped."""


def check_step(step: Any, name: str = "step") -> int:
    """A record's step: an int ``0 <= step <`` :data:`MAX_STEP` (by the rule of
    :func:`gradpaths._checks.scalar`), or a clear error."""
    step = _checks.check_positive_int(step, name, allow_zero=True)
    if step >= MAX_STEP:
        raise InputError(f"{name}: expected an int below 2**63, got {step}")
    return step


def _plain(value: Any, where: str, depth: int, inside: frozenset[int]) -> Any:
    """``value``, at nesting level ``depth`` (the record is level 1), as JSON-safe
    Python values: the one rule for numbers (:func:`gradpaths._checks.json_number`,
    for every floating type), string keys, at most :data:`MAX_DEPTH` levels of lists
    and mappings; anything else is an :class:`InputError` naming where it is."""
    at = f" at {where if len(where) < 80 else where[:40] + '...' + where[-30:]}" if where \
        else ""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _checks.json_number(value)
    array = None
    if not isinstance(value, (Mapping, list, tuple)) and (
            isinstance(value, np.generic) or hasattr(value, "__array__")):
        try:
            array = np.asarray(value)
        except Exception:       # a traced value, or an __array__ that fails
            raise InputTypeError(f"record: expected JSON-safe values, got "
                                 f"{type(value).__name__}{at}") from None
        if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
            if array.ndim == 0:
                return array.item()
        elif not jnp.issubdtype(array.dtype, jnp.floating):     # bfloat16 included
            raise InputTypeError(f"record: expected JSON-safe values, got {type(value).__name__} "
                                 f"of dtype {array.dtype}{at}")
        elif array.ndim == 0:
            return _checks.json_number(array)
    elif not isinstance(value, (Mapping, list, tuple)):
        raise InputTypeError(f"record: expected JSON-safe values, got {type(value).__name__}{at}")
    if depth > MAX_DEPTH:
        raise InputError(f"record: expected at most {MAX_DEPTH} levels of nested lists and "
                         f"mappings, got more{at}")
    if array is not None:
        return [_plain(v, f"{where}[{i}]", depth + 1, inside) for i, v in enumerate(array)]
    if id(value) in inside:
        raise InputError(f"record: expected a tree of values, got a circular reference{at}")
    inside = inside | {id(value)}
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise InputTypeError(f"record: expected string keys (JSON's), got "
                                     f"{type(key).__name__} {key!r:.60}{at}")
            out[key] = _plain(v, f"{where}[{key!r}]", depth + 1, inside)
        return out
    return [_plain(v, f"{where}[{i}]", depth + 1, inside) for i, v in enumerate(value)]


def _encode(record: Any) -> bytes:
    if isinstance(record, (Probe, Event)):
        if record.step is not None:
            check_step(record.step, "record.step")
        obj = {"type": "probe" if isinstance(record, Probe) else "event",
               **_plain(record.to_dict(), "", 1, frozenset())}
    elif isinstance(record, Mapping):
        obj = {"type": "data", "data": _plain(record, "", 1, frozenset())}
    else:
        raise InputTypeError(f"record: expected a gradpaths.Probe, a gradpaths.Event or a mapping, "
                             f"got {type(record).__name__}")
    return (json.dumps(obj, allow_nan=False) + "\n").encode()


def _torn(length: int) -> bytes:
    return b"\n" + (json.dumps({"type": "torn", "length": length}) + "\n").encode()


def _repair(fd: int, path: str) -> bytes:
    """What must precede a new line in the existing file ``fd``: nothing, a header (an
    empty file), or a newline and a torn marker (a last line without its newline)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return _HEADER
    head = os.pread(fd, len(_HEADER), 0)
    if head != _HEADER:
        if size < len(_HEADER) and _HEADER.startswith(head):   # the first write was torn
            return _torn(size) + _HEADER
        raise InputError(f"records: {path!r} is not a gradpaths records file (its first line "
                         f"is not the {FORMAT} header); it is never appended to")
    if os.pread(fd, 1, size - 1) == b"\n":
        return b""
    start = max(size - _TAIL, 0)
    tail = os.pread(fd, size - start, start)
    if b"\n" not in tail:
        raise InputError(f"records: {path!r} ends in a line longer than {_TAIL} bytes "
                         "without a newline; it is not appended to")
    return _torn(len(tail) - tail.rindex(b"\n") - 1)


def append_record(path: str | os.PathLike, record: Any, *, fsync: bool = True) -> None:
    """Append ``record`` to the JSON-lines file ``path`` as one line, atomically.

    ``record``: a :class:`gradpaths.Probe`, a :class:`gradpaths.Event` or a mapping with
    string keys of JSON-safe values: None, bools, strings, numbers, lists and mappings of
    them, numpy and JAX numbers and arrays (converted to lists). Every NaN or infinity,
    whatever its type, is written as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (the
    file's one rule for numbers). A new file is created whole, with
    the header and the line (written under a temporary name, then linked to ``path``).
    Otherwise the line (with any repair) goes to the file in one ``os.write`` on a
    descriptor opened with ``O_APPEND``, then ``fsync`` (unless ``fsync=False``),
    under an exclusive ``flock`` taken for the check of the last line and the write:
    the file is never truncated or rewritten, and lines from several threads or
    processes never interleave on a local file system. A crash mid-write leaves at
    most one torn last line; :func:`read_records` skips it with a
    :class:`gradpaths.RecordWarning`, and the next :func:`append_record` closes it with
    a newline and a ``torn`` marker before its own line, so the torn bytes stay
    (skipped on every read) and the new records follow.

    Raises:
      TypeError, ValueError: ``record`` is not one of the above or not JSON-safe (a key
        that is not a string, a circular or more than :data:`MAX_DEPTH` levels deep
        value, a step outside ``0 <= step < 2**63``); ``path`` is a folder or not a
        regular file, exists, is not empty and is not a gradpaths records file, or its
        folder does not exist.
    """
    _append(path, _encode(record), fsync)


def _append(path: Any, line: bytes, fsync: bool) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        raise InputError(f"records: {path!r} is a folder; expected a file path (e.g. "
                         f"{os.path.join(path, 'run.jsonl')!r})")
    if _create(path, _HEADER + line, fsync):
        return
    if not os.path.isfile(path):
        raise InputError(f"records: {path!r} exists and is not a regular file (a pipe, a "
                         "device or a broken link); it is never appended to")
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        # The tail check and the write are one step under an exclusive lock: a reader
        # can see another writer's line half written, which would pass for a torn line.
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write(fd, _repair(fd, path) + line, fsync)
    finally:
        os.close(fd)            # releases the lock


def _write(fd: int, data: bytes, fsync: bool) -> None:
    view = memoryview(data)
    while view:     # a regular file takes it in one write unless the disk is full
        view = view[os.write(fd, view):]
    if fsync:
        os.fsync(fd)


def _create(path: str, data: bytes, fsync: bool) -> bool:
    """Create ``path`` holding ``data``, atomically: written under a temporary name,
    then hard-linked to ``path`` (which fails if it exists, so a new file is never seen
    empty by another writer). False when ``path`` exists."""
    if os.path.lexists(path):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"records: the folder {folder!r} of {path!r} does not exist; "
                         "create it first")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        try:
            _write(fd, data, fsync)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.remove(tmp)


def check_records_path(path: Any, resume: bool, *, name: str = "records",
                       resume_name: str | None = "resume=True") -> str:
    """``path`` as a string, or a clear error before any training: its folder must exist
    and be writable; an existing file is appended to only when resuming
    (``resume=True``), and only if it is a gradpaths records file. ``name`` and
    ``resume_name`` are how the messages name the path and the way to resume (the
    command line's ``--records``; None where there is no way to resume)."""
    path = _checks.writable_file_path(path, name)
    if os.path.lexists(path):
        if not resume:
            how = (f"pass {resume_name} to continue it or choose another path" if resume_name
                   else "choose another path, or move the file away")
            raise InputError(f"{name}: {path!r} exists; {how} (it is never appended to "
                             "otherwise)")
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
        if head and not _HEADER.startswith(head):
            raise InputError(f"{name}: {path!r} is not a gradpaths records file (its first "
                             f"line is not the {FORMAT} header); it is never appended to")
    return path


def mark_resume(path: str | os.PathLike, step: int, *, fsync: bool = True) -> None:
    """Append a ``resume`` marker to the records file ``path``: a run restarts at ``step``.

    The records file is never cut: a run killed after its last checkpoint leaves
    records of steps it will run again. The marker says so: :func:`read_records`
    drops every record written before the marker whose step is ``>= step`` (probes
    and events, and mappings with an integer ``"step"``), and keeps the rest, so the
    file reads as one run. :func:`gradpaths.train` writes it when resuming; call it
    from your own loop when you restart from a checkpoint of step ``step``.

    Raises:
      TypeError, ValueError: as :func:`append_record`; ``step`` not an integer
        ``0 <= step < 2**63``.
    """
    step = check_step(step)
    _append(path, (json.dumps({"type": "resume", "step": step}) + "\n").encode(), fsync)


def _step_of(record: Any) -> int | None:
    step = record.get("step") if isinstance(record, dict) else record.step
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _decode(obj: Any, where: str) -> Probe | Event | dict[str, Any]:
    if not isinstance(obj, dict) or "type" not in obj:
        raise InputError(f"{where}: expected a JSON object with a 'type', got {obj!r:.80}")
    kind = obj["type"]
    body = {k: v for k, v in obj.items() if k != "type"}
    if kind in ("probe", "event") and "step" in body and not (
            kind == "probe" and body["step"] is None):
        check_step(body["step"])
    if kind == "probe":
        return Probe.from_dict(body)
    if kind == "event":
        return Event.from_dict(body)
    if kind == "data" and isinstance(body.get("data"), dict):
        return body["data"]
    raise InputError(f"{where}: expected a record of type 'probe', 'event' or 'data', "
                     f"got {kind!r}")


def _load(line: bytes) -> Any:
    """``json.loads`` of one line; a line nested too deeply for it is a ``ValueError``
    too (not a ``RecursionError``)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _marker_length(line: bytes) -> int | None:
    try:
        obj = _load(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("type") == "torn" and isinstance(obj.get("length"),
                                                                          int):
        return obj["length"]
    return None


def read_records(path: str | os.PathLike) -> list[Probe | Event | dict[str, Any]]:
    """The records of a JSON-lines file written by :func:`append_record`, in order:
    :class:`gradpaths.Probe` s, :class:`gradpaths.Event` s and mappings.

    Torn lines, where a writer stopped mid-line, are skipped with a
    :class:`gradpaths.RecordWarning` (every record before and after is kept): the
    last line when it has no newline, and a line closed by a later writer's ``torn``
    marker. A ``resume`` marker (:func:`mark_resume`) at step ``t`` drops the records
    of steps ``>= t`` written before it. Build a :class:`gradpaths.History` of them
    with ``History.from_records``.

    Raises:
      ValueError: naming ``path`` and the line: no such file, not a gradpaths
        records file, or a line that is not a valid record (corruption anywhere
        else than a torn line).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        raise InputError(f"records: {path!r} is a folder; expected a file path")
    if not os.path.isfile(path):
        raise InputError(f"records: no such file {path!r}" if not os.path.lexists(path) else
                         f"records: {path!r} is not a regular file (a pipe, a device or a "
                         "broken link)")
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    last = lines.pop()          # b"" when the file ends with a newline
    out: list[Probe | Event | dict[str, Any]] = []
    header = False
    torn = []
    i = 0
    while i < len(lines):
        line, where = lines[i], f"records: {path!r} line {i + 1}"
        if i + 1 < len(lines) and _marker_length(lines[i + 1]) == len(line):
            torn.append(i + 1)
            i += 2
            continue
        try:
            obj = _load(line)
        except ValueError as err:
            if not header:
                obj = None
            else:
                raise InputError(f"{where} is damaged (not JSON: {err})") from None
        if not header:
            if obj != json.loads(_HEADER):
                raise InputError(f"{where}: expected the {FORMAT} header, got {line[:80]!r}; "
                                 "not a gradpaths records file")
            header = True
        else:
            if isinstance(obj, dict) and obj.get("type") == "resume":
                try:
                    at = check_step(obj.get("step"))
                except (ValueError, TypeError) as err:
                    raise InputError(f"{where} is damaged ({err})") from None
                out = [r for r in out if (s := _step_of(r)) is None or s < at]
                i += 1
                continue
            try:
                out.append(_decode(obj, where))
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
                raise InputError(f"{where} is damaged ({type(err).__name__}: {err})") from None
        i += 1
    if last:
        torn.append(len(lines) + 1)
    if last and not header and _HEADER.startswith(last):
        header = True      # only a torn header: no records yet
    if data and not header:
        raise InputError(f"records: {path!r} has no {FORMAT} header; not a gradpaths "
                         "records file")
    if torn:
        warnings.warn(f"records: {path!r}: skipped {len(torn)} torn line(s) (a writer stopped "
                      f"mid-line) at line(s) {', '.join(map(str, torn))}; every other record "
                      "was read", RecordWarning, stacklevel=2)
    return out
