"""Run the paper-reproduction notebooks (05, 06, 07) at a chosen size.

    python benchmarks/papers.py                     # --size small: what CI runs
    python benchmarks/papers.py --size full         # the larger settings (long)
    python benchmarks/papers.py --size full --only 06

Each notebook reads its knobs from ``GP_PAPER_SIZE`` (``small`` by default) in its
first cell; this script sets it, executes the notebook in a fresh kernel and writes
the executed copy (figures included) to ``benchmarks/results/papers-<size>/``, never
over an existing file unless ``--force``. The committed notebooks under
``notebooks/`` stay the small run. At ``full`` size the notebooks' assert cells check
the same claims on the larger runs; a failure is reported and the executed copy, with
the failing cell, is still written.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).parent
NOTEBOOKS = ("05_pascanu_2013_cliffs_and_clipping", "06_engelken_2023_gradient_flossing",
             "07_vogt_2022_spectra_after_training")


def main(argv: list[str] | None = None) -> int:
    import nbclient
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("small", "full"), default="small")
    ap.add_argument("--only", nargs="*", default=(), help="notebook name prefixes (05 06 07)")
    ap.add_argument("--out", default=None, help="folder (default results/papers-<size>)")
    ap.add_argument("--force", action="store_true", help="replace existing files")
    ap.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out or HERE / "results" / f"papers-{args.size}")
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    targets = {n: out / f"{n}.ipynb" for n in names}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        print(f"exists: {existing}; pass --force or --out another folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GP_PAPER_SIZE"] = args.size
    failed = []
    for name in names:
        nb = nbformat.read(HERE.parent / "notebooks" / f"{name}.ipynb", as_version=4)
        start = time.perf_counter()
        client = nbclient.NotebookClient(
            nb, timeout=args.timeout, kernel_name="python3",
            resources={"metadata": {"path": str(HERE.parent / "notebooks")}})
        try:
            client.execute()
            status = "ok"
        except nbclient.exceptions.CellExecutionError as err:
            status = f"FAILED: {str(err).strip().splitlines()[-1]}"
            failed.append(name)
        tmp = targets[name].with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, targets[name])
        print(f"{name} ({args.size}): {status}, {time.perf_counter() - start:.0f} s -> "
              f"{targets[name]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
