"""The example notebooks run end to end (each in a fresh kernel, as a reader would)."""

from __future__ import annotations

import pathlib
import time

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_why_lstms_still_explode", "02_routes_and_long_products",
                     "03_training_with_and_without_clipping", "04_model_from_pytorch"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    committed = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in committed), \
        f"{path.name}: committed without figures; run notebooks/make_notebooks.py"
    assert not any(o.get("output_type") == "error" for o in committed)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert first.startswith("%matplotlib inline"), "knobs and setup belong in the first cell"
    start = time.perf_counter()
    # Raises CellExecutionError, with the failing cell and its traceback, on any error.
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert figures >= 2
    assert elapsed < 120
