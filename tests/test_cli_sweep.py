"""``gradpaths sweep``: the phase diagram on its defaults and in a report."""

from __future__ import annotations

import numpy as np
from cli_helpers import PNG, SWEEP, run, strict_json
from helpers import assert_close

import gradpaths as gp


def test_sweep_default(capsys):
    code, out, err = run(["sweep", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    assert data["gains"] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    assert data["forget_biases"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert data["scaled"] == ["o"] and data["units_of_rates"] == "nats/step"
    full = np.array(data["exponents"]["full"])
    carousel = np.array(data["exponents"]["carousel"])
    assert full.shape == (7, 6)
    # Forget gates below 1 never amplify; with a large R_o and b_f >= 3 the whole grows.
    assert (carousel < 0).all()
    assert full[-1, -1] > 0.01 and full[0, 0] < -0.1
    assert data["regions"][-1][-1] == "interaction" and data["regions"][0][0] == "vanishes"


def test_sweep_report_matches_library(tmp_path, capsys):
    out_dir = tmp_path / "sw"
    code, out, err = run([*SWEEP, "--out", str(out_dir)], capsys)
    assert code == 0, err
    report = strict_json((out_dir / "report.json").read_text())
    sw = gp.sweep(gains=[1.0, 8.5, 16.0], forget_biases=[0.0, 4.0], steps=50, warmup=10,
                  hidden=6, scaled=("z", "o"))
    assert report["sweep"]["gains"] == [1.0, 8.5, 16.0]
    for name in sw.names:
        assert_close(np.array(report["sweep"]["exponents"][name], float), sw.exponent(name))
    assert "gain scales R_z, R_o" in out.splitlines()[0]
    assert (out_dir / "phase_diagram.png").read_bytes()[:8] == PNG
