"""Run every benchmark, write the results as JSON, print markdown tables.

Usage::

    python benchmarks/run.py                      # --size small, float32
    python benchmarks/run.py --size full --dtype float64 --only jacobians
    python benchmarks/run.py --compare benchmarks/results/OLD.json      # run, then new/old
    python benchmarks/run.py --compare OLD.json NEW.json                # no run: compare files

Results go to ``benchmarks/results/<date>-<device>.json`` unless ``--out``; an
existing file is never overwritten without ``--force`` (checked before running),
and the file is written atomically (a temporary file, then a rename). The exit
status is 1 when a benchmark reported a wrong result (``status == "wrong"``) or
raised (``"error"``), else 0; comparing never fails.

A benchmark is a script ``benchmarks/<name>.py`` listed in :data:`REGISTRY`
that defines ``main(size="small") -> list[dict]`` (``dtype`` optional); see
benchmarks/README.md for the contract.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _common as C  # noqa: E402

# Benchmark scripts, by file name without ".py", in the order they run.
REGISTRY: list[str] = ["jacobians", "spectra", "scaling", "explain", "floor", "saturation"]
SIZES = ("tiny", "small", "full")
REQUIRED_KEYS = ("benchmark", "name", "status", "seconds")


def load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    path = os.path.join(HERE, f"{name}.py")
    if not os.path.exists(path):
        raise ValueError(f"benchmark {name!r}: expected a file {path}")
    module_name = f"_gp_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise ValueError(f"benchmark {name!r}: expected a function main(size)")
    return module


def check_rows(name: str, rows: Any) -> list[dict[str, Any]]:
    """The contract: a list of dicts, each with ``REQUIRED_KEYS`` and a unique ``name``."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{name}.main: expected a list of dicts, got {type(rows).__name__}")
    seen = set()
    for r in rows:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"{name}.main: row {r.get('name')!r} lacks keys {missing}")
        if r["name"] in seen:
            raise ValueError(f"{name}.main: row name {r['name']!r} is not unique")
        seen.add(r["name"])
    return rows


def call_main(module: ModuleType, size: str, dtype: str) -> Any:
    """``module.main(size=..., dtype=...)``; ``dtype`` only if ``main`` takes it."""
    if "dtype" in inspect.signature(module.main).parameters:
        return module.main(size=size, dtype=dtype)
    if dtype != "float32":
        print(f"[run] {module.__name__}: main() takes no dtype; running its default",
              file=sys.stderr)
    return module.main(size=size)


def run(names: list[str], size: str, dtype: str) -> dict[str, Any]:
    """Run the named benchmarks; the results document (environment, rows).

    A script that raises gets one row with ``status: "error"`` and the others go on.
    """
    env = C.environment()
    env.update(size=size, dtype=dtype)
    rows: list[dict[str, Any]] = []
    timings = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            rows.extend(check_rows(name, call_main(load(name), size, dtype)))
        except Exception as exc:  # noqa: BLE001 - keep the other scripts' results
            traceback.print_exc()
            rows.append({"benchmark": name, "name": "(script)", "status": "error",
                         "seconds": None, "note": f"{type(exc).__name__}: {exc}"[:300]})
        timings[name] = round(time.perf_counter() - t0, 1)
    env["wall_s"] = timings
    env["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return {"environment": env, "rows": rows}


def render(doc: dict[str, Any]) -> str:
    """Markdown: the environment line, then each benchmark's table (its ``report`` if any)."""
    env = doc["environment"]
    head = (f"{env['date']} · {env['device']} ({env['cpu']}, {env['cpu_count']} cores, "
            f"{env['memory_gb']} GB) · jax {env['jax']} · numpy {env['numpy']} · "
            f"torch {env['torch'] or 'absent'} · size {env.get('size')} · "
            f"load avg {env.get('load_avg_1m')} → {env.get('load_avg_1m_end')}")
    parts = [head]
    for name in dict.fromkeys(r["benchmark"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["benchmark"] == name]
        report = getattr(load(name), "report", None) if name in REGISTRY else None
        parts.append(report(rows) if report else f"**{name}**\n\n" + C.generic_table(rows))
    return "\n\n".join(parts)


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Markdown table of new/old median seconds per row present in both (by benchmark, name)."""
    key = lambda r: (r["benchmark"], r["name"])
    before = {key(r): r for r in old["rows"]}
    rows = []
    for r in new["rows"]:
        o = before.get(key(r))
        s_old = o.get("seconds") if o else None
        s_new = r.get("seconds")
        ratio = s_new / s_old if s_old and s_new else None
        rows.append({"benchmark": r["benchmark"], "name": r["name"], "old_s": s_old,
                     "new_s": s_new, "ratio": ratio})
    gone = [k for k in before if k not in {key(r) for r in new["rows"]}]
    eo, en = old["environment"], new["environment"]
    text = [f"new/old: {en.get('date')} ({en.get('device')}) vs {eo.get('date')} "
            f"({eo.get('device')}); < 1 is faster",
            C.markdown_table(rows, [("benchmark", "benchmark"), ("name", "row"),
                                    ("old_s", "old s"), ("new_s", "new s"),
                                    ("ratio", "new/old")])]
    if eo.get("device") != en.get("device"):
        text.insert(1, "note: different devices, ratios compare machines too")
    if gone:
        text.append(f"rows only in the old file: {', '.join(n for _, n in gone)}")
    return "\n".join(text)


def default_path(env: dict[str, Any]) -> str:
    return os.path.join(HERE, "results", f"{env['date'][:10]}-{env['device']}.json")


def write_atomic(path: str, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder.

    Without ``force`` the final step is ``os.link``, which fails if ``path``
    exists, so a file that appeared meanwhile is not replaced either.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".results-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; results are for sharing
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "rows" not in doc or "environment" not in doc:
        raise ValueError(f"{path}: expected a results file with 'environment' and 'rows'")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run gradpaths' benchmarks.")
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(REGISTRY)}")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/<date>-<device>"
                        ".json)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--compare", nargs="+", metavar=("OLD.json", "NEW.json"),
                        help="print new/old per row; with two files, compare them without "
                        "running")
    args = parser.parse_args(argv)

    if args.compare and len(args.compare) > 2:
        parser.error("--compare: expected OLD.json [NEW.json]")
    if args.compare and len(args.compare) == 2:
        print(compare(read(args.compare[0]), read(args.compare[1])))
        return 0
    old = read(args.compare[0]) if args.compare else None

    names = REGISTRY if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"--only: expected names from {REGISTRY}, got {unknown}")
    date = datetime.date.today().isoformat()
    out = args.out or default_path({"date": date, "device": C.device_label()})
    if os.path.exists(out) and not args.force:
        parser.error(f"{out} exists: pass --force to overwrite it, or --out another path")

    doc = run(names, args.size, args.dtype)
    write_atomic(out, C.dumps(doc), force=args.force)
    print(render(doc))
    print(f"\nwrote {out}")
    if old is not None:
        print("\n" + compare(old, doc))
    return 1 if any(r["status"] in ("wrong", "error") for r in doc["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
