"""Shared by the command-line tests: running ``main`` in-process, and what its output
must look like. Loaded by the tests from this folder (it is not a test module)."""

from __future__ import annotations

import json
import os

import numpy as np

from gradpaths import _cli

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMALL = ["--steps", "60", "--hidden", "8"]
SMALL_EXPLAIN = ["explain", *SMALL]
SWEEP = ["sweep", "--gains", "1:16:3", "--forget-biases", "0,4", "--steps", "50", "--warmup",
         "10", "--hidden", "6", "--scaled", "z,o"]
PNG = b"\x89PNG\r\n\x1a\n"
MARKER = ".gradpaths-report.json"
NO_CACHE = {"GRADPATHS_CACHE_DIR": "off"}
"""In-process runs must not switch on JAX's persistent cache for the whole test session."""


def run(argv, capsys):
    """``main(argv)`` -> (exit status, stdout, stderr); argparse exits count too."""
    saved = {k: os.environ.get(k) for k in NO_CACHE}
    os.environ.update(NO_CACHE)
    try:
        code = _cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text):
    """Parse JSON, refusing NaN and Infinity (not valid JSON)."""
    def refuse(name):
        raise ValueError(f"not valid JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(code, out, err, command):
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gradpaths {command}: error: " if command else "gradpaths: error:")
    assert "Traceback" not in err


def torch_npz(tmp_path):
    """The torch fixture's state dict alone, as a user would save it: ``np.savez(**sd)``."""
    with np.load(os.path.join(FIXTURES, "torch_lstm.npz")) as data:
        sd = {k[len("params/"):]: data[k] for k in data.files if k.startswith("params/")}
    path = tmp_path / "lstm.npz"
    np.savez(path, **sd)
    return path, sd
