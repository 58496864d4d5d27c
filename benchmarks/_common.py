"""Shared machinery of the benchmarks: timing, memory, tolerances, environment, tables.

Timing rules (STYLE.md, point 9): compile apart from running (ahead-of-time
``jit(f).lower(...).compile()``), one warm-up call before any timed call,
``block_until_ready`` on every result, the median of several repeats, and the
methods of one configuration timed round-robin so that background load hits
them alike.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

GB = 1e9

# Tolerances of "agrees with the reference", one place, tied to the dtype (the
# same numbers as tests/helpers.py): |a - b| <= atol + rtol * |b| elementwise.
_RTOL = {"float64": 1e-10, "float32": 2e-4}
_ATOL = {"float64": 1e-12, "float32": 1e-5}


def tol(dtype: Any) -> dict[str, float]:
    name = np.dtype(dtype).name
    return {"rtol": _RTOL[name], "atol": _ATOL[name]}


def closeness(actual: Any, expected: Any, dtype: Any) -> tuple[float, float]:
    """``(max |a - b|, max |a - b| / (atol + rtol |b|))``; the second is <= 1 when close."""
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"closeness: shapes differ, {a.shape} vs {b.shape}")
    t = tol(dtype)
    diff = np.abs(a - b)
    if not np.all(np.isfinite(a)):
        return float("inf"), float("inf")
    return float(diff.max(initial=0.0)), float((diff / (t["atol"] + t["rtol"] * np.abs(b))).max(
        initial=0.0))


# --------------------------------------------------------------------------- timing


def block(x: Any) -> Any:
    """Wait for every JAX array in ``x`` (other values pass through)."""
    return jax.block_until_ready(x)


def compile_jax(fn: Callable, *args: Any) -> tuple[Any, float]:
    """``jax.jit(fn)`` compiled ahead of time for ``args``: (compiled, compile seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries that XLA plans for ``compiled`` (None if unknown)."""
    try:
        ma = compiled.memory_analysis()
        return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is optional per backend
        return None


def first_call(call: Callable[[], Any]) -> tuple[Any, float]:
    """The warm-up call: (its result, blocked seconds). Its result feeds the correctness check."""
    t0 = time.perf_counter()
    out = block(call())
    return out, time.perf_counter() - t0


def time_round_robin(calls: dict[str, tuple[Callable[[], Any], int]]) -> dict[str, list[float]]:
    """Time already warmed-up calls, ``{name: (call, repeats)}``, interleaved.

    Round r runs every call that still needs a repeat once, so slow drifts of
    the machine's load spread over all methods. Each result is blocked on and
    dropped at once (its memory freed before the next call).
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    rounds = max((r for _, r in calls.values()), default=0)
    for r in range(rounds):
        for name, (call, repeats) in calls.items():
            if r >= repeats:
                continue
            t0 = time.perf_counter()
            out = block(call())
            times[name].append(time.perf_counter() - t0)
            del out
    return times


def repeats_for(first_s: float, budget_s: float, low: int = 3, high: int = 9) -> int:
    """How many timed repeats fit ``budget_s`` given one call's time, clipped to [low, high]."""
    if first_s <= 0:
        return high
    return int(min(high, max(low, budget_s // first_s)))


def summary(times: Sequence[float]) -> dict[str, float | int | None]:
    if not times:
        return {"seconds": None, "min_s": None, "repeats": 0}
    return {"seconds": statistics.median(times), "min_s": min(times), "repeats": len(times)}


# --------------------------------------------------------------------------- memory


def available_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo (the machine is shared: read it when deciding)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def physical_bytes() -> int:
    """Installed memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_budget(fraction: float = 0.7) -> int:
    """Bytes a benchmark may plan to hold now: ``fraction`` of the memory available now
    (the machine may be shared) and never more than ``fraction`` of the installed memory."""
    return int(fraction * min(available_bytes(), physical_bytes()))


def self_peak_rss() -> int:
    """Peak resident set size of this process image in bytes.

    ``VmHWM`` of /proc/self/status (the high-water mark of the current address
    space). Not ``ru_maxrss``: on Linux a freshly spawned process inherits into it
    the peak of the parent it was forked from (exec records the old address space's
    high-water mark), so a worker started by a large parent reports the parent's
    peak. ``ru_maxrss`` (KiB) is the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_worker(argv: Sequence[str], timeout_s: float) -> tuple[int, str, int]:
    """Run ``python *argv`` in a fresh process: (return code, stderr tail, peak RSS bytes).

    The peak RSS comes from ``RUSAGE_CHILDREN``, which keeps the largest peak of
    all waited-for children, so it is read before and after and only a rise is
    attributed to this child (0 when it stayed below an earlier one). It is an
    upper bound at best: a child's ``ru_maxrss`` includes this process's peak at
    the spawn (see :func:`self_peak_rss`). Workers should report their own
    ``self_peak_rss`` (``VmHWM``), and callers prefer that.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        proc = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s
        )
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = -1, f"timed out after {timeout_s:.0f} s: {exc}"
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rc, err[-2000:], (after * 1024 if after > before else 0)


# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_version() -> str | None:
    """The installed torch's version (without importing it), or None."""
    return _version("torch")


def device_label() -> str:
    """A short file-name-safe name of the machine, e.g. ``cpu-2core`` or ``gpu-h100``."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        label = f"cpu-{os.cpu_count()}core"
    else:
        label = f"{dev.platform}-{dev.device_kind}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-").lower()


def environment() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_label(),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(physical_bytes() / GB, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": np.__version__,
        "torch": torch_version(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 10 ** digits or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table of ``rows`` with ``columns`` = [(key, header), ...]."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def generic_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of every scalar field of ``rows``, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and (v is None or isinstance(v, (str, int, float, bool))):
                keys.append(k)
    return markdown_table(rows, [(k, k) for k in keys])


def dumps(obj: Any) -> str:
    """JSON with numpy scalars as Python numbers."""
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(obj, indent=1, default=default, allow_nan=True)
