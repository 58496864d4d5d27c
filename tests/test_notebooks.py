"""The example notebooks run end to end (each in a fresh kernel, as a reader would).

Each notebook checks its own text: after a claim, a code cell of plain ``assert``s on
the numbers the text relies on, so executing it fails if text and numbers disagree.
"""

from __future__ import annotations

import pathlib
import re
import time

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def output_text(nb) -> str:
    """All text the code cells printed or displayed."""
    parts = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.outputs:
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def markdown_text(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def check_text_agrees(nb, name: str) -> None:
    """A printed -inf must be explained (an exactly zero product) in the markdown."""
    if re.search(r"-inf\b", output_text(nb)):
        md = markdown_text(nb)
        assert "-inf" in md and "exactly zero" in md, \
            f"{name}: an output prints -inf but no markdown cell explains it"


def test_the_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_why_lstms_still_explode", "02_routes_and_long_products",
                     "03_training_with_and_without_clipping", "04_model_from_pytorch",
                     "05_pascanu_2013_cliffs_and_clipping", "06_engelken_2023_gradient_flossing",
                     "07_vogt_2022_spectra_after_training", "08_routes_across_cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_checks_its_text(path):
    nb = nbformat.read(path, as_version=4)
    checks = [c for c in nb.cells if c.cell_type == "code"
              and "# The text" in c.source and re.search(r"^assert ", c.source, re.M)]
    assert checks, f"{path.name}: no cell asserts the numbers its text relies on"
    check_text_agrees(nb, path.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    committed = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in committed), \
        f"{path.name}: committed without figures; run notebooks/make_notebooks.py"
    assert not any(o.get("output_type") == "error" for o in committed)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert first.startswith("%matplotlib inline"), "knobs and setup belong in the first cell"
    start = time.perf_counter()
    # Raises CellExecutionError, with the failing cell and its traceback, on any error
    # (including the notebook's own asserts that its text agrees with its numbers).
    nbclient.NotebookClient(nb, timeout=900,  # a guard against a hung kernel
                            kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert figures >= 2
    check_text_agrees(nb, path.name)
    print(f"{path.name}: executed in {elapsed:.1f} s")   # reported, never asserted
