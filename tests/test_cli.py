"""The command line: every subcommand on its defaults, reports, and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp
from gradpaths import _cli

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMALL = ["--steps", "60", "--hidden", "8"]
SMALL_EXPLAIN = ["explain", *SMALL]
SWEEP = ["sweep", "--gains", "1:16:3", "--forget-biases", "0,4", "--steps", "50", "--warmup",
         "10", "--hidden", "6", "--scaled", "z,o"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    # In-process runs must not switch on JAX's persistent cache for the whole test session.
    monkeypatch.setenv("GRADPATHS_CACHE_DIR", "off")


class _Capture:
    def __init__(self):
        self.out, self.err = io.StringIO(), io.StringIO()


def run(argv, capsys):
    """``main(argv)`` -> (exit status, stdout, stderr); argparse exits count too."""
    try:
        code = _cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
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


# --------------------------------------------------------------------------- defaults


def test_explain_default_tells_the_question(capsys):
    """The README quick start: the built-in LSTM explodes through the o route while
    the carousel contracts."""
    code, out, err = run(["explain", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    rows = {r["name"]: r for r in data["rows"]}
    assert data["steps"] == 300 and data["warmup"] == 50
    assert rows["full"]["exponent"] > 0.01
    assert rows["carousel"]["exponent"] < -0.01
    assert rows["all but o"]["exponent"] < 0
    assert data["driver"]["dominant"] == "o"
    assert data["verdict"].startswith("Gradients explode")
    cell, params, xs = gp.exploding_lstm()
    ex = gp.explain(cell, params, xs, warmup=50)
    assert_close(rows["full"]["exponent"], ex.exponent)


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
    assert data["regions"][-1][-1] == "interaction" and data["regions"][0][0] == "vanish"


def test_train_default(capsys):
    code, out, err = run(["train", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    assert list(data) == ["no clipping"]
    h = data["no clipping"]
    assert h["step"] == list(range(300))
    assert len(h["loss"]) == 300 and h["routes"] == ["carousel", "z", "i", "f", "o"]
    assert not any(h["clipped"])


# --------------------------------------------------------------------------- report folders


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """One ``gradpaths explain`` run with a report folder, shared by the tests below."""
    out_dir = tmp_path_factory.mktemp("cli") / "rep"
    capture = _Capture()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(capture.out), \
            contextlib.redirect_stderr(capture.err):
        mp.setenv("GRADPATHS_CACHE_DIR", "off")
        code = _cli.main([*SMALL_EXPLAIN, "--out", str(out_dir)])
    cell, params, xs = gp.exploding_lstm(hidden=8, steps=60)
    return code, capture, out_dir, gp.explain(cell, params, xs, warmup=15)


def test_explain_prints_table_and_verdict(small_report):
    code, capture, out_dir, ex = small_report
    assert code == 0, capture.err.getvalue()
    out = capture.out.getvalue()
    assert out.startswith(str(ex) + "\n")
    assert "verdict: " in out and "Jacobian sequence" in out and "(nats/step)" in out
    assert out.rstrip().endswith(f"report written to {out_dir}/ (report.json, report.md, "
                                 "growth_curves.png, step_spectra.png, jacobian_blocks.png, "
                                 "lyapunov_spectrum.png, route_use_counts.png, "
                                 "gate_saturation.png)")


def test_explain_report_folder(small_report):
    code, capture, out_dir, ex = small_report
    assert code == 0, capture.err.getvalue()
    report = strict_json((out_dir / "report.json").read_text())
    expected = strict_json(json.dumps(ex.to_dict()))
    assert set(report["explanation"]) == set(expected)
    assert report["explanation"]["verdict"] == expected["verdict"]
    assert report["explanation"]["driver"] == expected["driver"]
    for got, want in zip(report["explanation"]["rows"], expected["rows"], strict=True):
        assert got["name"] == want["name"]
        if isinstance(want["exponent"], float):
            assert_close(got["exponent"], want["exponent"])
    assert report["report"] == "explain"
    settings = report["settings"]
    assert settings["steps"] == 60 and settings["hidden"] == 8
    assert settings["seed"] == 0 and settings["warmup"] == 15 and settings["batch"] == 1
    for pkg in ("gradpaths", "jax", "jaxlib", "numpy", "matplotlib", "python"):
        assert report["versions"][pkg]
    assert report["versions"]["x64"] == "True"
    assert report["command"] == "gradpaths " + " ".join(SMALL_EXPLAIN) + f" --out {out_dir}"
    figures = ["growth_curves", "step_spectra", "jacobian_blocks", "lyapunov_spectrum",
               "route_use_counts", "gate_saturation"]
    assert report["figures"]["files"] == [f"{f}.png" for f in figures]
    assert report["figures"]["heatmap_step"] == ex.peak_steps[0][0]
    assert report["figures"]["route_use_counts"]["route"] == ex.driver["dominant"]
    assert len(report["figures"]["lyapunov_spectrum"]) == 16
    assert_close(report["figures"]["lyapunov_spectrum"][0], ex.exponent, scale=1e6)
    md = (out_dir / "report.md").read_text()
    assert ex.verdict in md and "| `all but o` | all but |" in md
    for f in figures:
        assert (out_dir / f"{f}.png").read_bytes()[:8] == PNG
        assert f"]({f}.png)" in md
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["report.json", "report.md", *(f"{f}.png" for f in figures)])
    assert [p.name for p in out_dir.parent.iterdir()] == ["rep"]    # no temporary left over


def test_existing_folder_is_not_overwritten(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "rep"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    # Refused before any work: explain is never called.
    monkeypatch.setattr(gp, "explain", lambda *a, **k: pytest.fail("explain ran"))
    code, out, err = run(["explain", *SMALL, "--out", str(out_dir)], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert "exists" in err and "--force" in err
    # --force does not replace a folder that is not a report.
    code, out, err = run(["explain", *SMALL, "--out", str(out_dir), "--force"], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert "not a gradpaths report folder" in err
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]
    assert (out_dir / "notes.txt").read_text() == "mine"


def test_force_replaces_a_report_folder(tmp_path, capsys):
    out_dir = tmp_path / "sw"
    argv = [*SWEEP, "--out", str(out_dir)]
    assert run(argv, capsys)[0] == 0
    (out_dir / "stale.txt").write_text("old")
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, out, err, "sweep")
    assert (out_dir / "stale.txt").exists()
    code, out, err = run([*argv, "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["phase_diagram.png", "report.json",
                                                         "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sw"]


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


def test_train_compare_report(tmp_path, capsys):
    out_dir = tmp_path / "tr"
    # The default task and model (shapes shared with test_train_default), fewer steps.
    code, out, err = run(["train", "--steps", "30", "--compare", "--clip", "0.5", "--out",
                          str(out_dir)], capsys)
    assert code == 0, err
    report = strict_json((out_dir / "report.json").read_text())
    assert list(report["runs"]) == ["no clipping", "clip 0.5"]
    for label, run_ in report["runs"].items():
        history = strict_json((out_dir / run_["file"]).read_text())
        assert history["step"] == list(range(30)) and run_["steps"] == 30
        clipped = np.array(history["clipped"])
        norms = np.array(history["grad_norm"], float)
        if label == "clip 0.5":
            np.testing.assert_array_equal(clipped, norms > 0.5)
        else:
            assert not clipped.any()
    assert (out_dir / "training_curves.png").read_bytes()[:8] == PNG
    assert "no clipping:" in out and "clip 0.5:" in out


# --------------------------------------------------------------------------- imported weights


def test_explain_torch_weights(tmp_path, capsys):
    path, sd = torch_npz(tmp_path)
    cell, params = gp.interop.from_torch(sd, layer=0, direction="reverse")
    xs = np.asarray(jax.random.normal(jax.random.key(7), (40, cell.input_size)))
    np.save(tmp_path / "xs.npy", xs)
    code, out, err = run(["explain", "--weights", str(path), "--format", "torch", "--layer", "0",
                          "--direction", "reverse", "--input-file", str(tmp_path / "xs.npy"),
                          "--warmup", "5", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    ex = gp.explain(cell, params, xs, warmup=5)
    assert data["cell"] == repr(cell) == "LSTM(input_size=2, hidden_size=3, peepholes=False, " \
        "forget_gate=True)"
    np.testing.assert_array_equal(params.W.o, sd["weight_ih_l0_reverse"][9:12])
    assert_close(data["rows"][0]["exponent"], ex.exponent)
    assert data["verdict"] == ex.verdict


def test_explain_keras_weights(tmp_path, capsys):
    with np.load(os.path.join(FIXTURES, "keras_lstm.npz")) as data:
        weights = {k[len("params/"):]: data[k] for k in data.files if k.startswith("params/")}
    path = tmp_path / "keras.npz"
    np.savez(path, **weights)
    code, out, err = run(["explain", "--weights", str(path), "--format", "keras", "--prefix",
                          "lstm0", "--steps", "40", "--warmup", "5", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    cell, params = gp.interop.from_keras(weights, prefix="lstm0")
    xs = jax.random.normal(jax.random.fold_in(jax.random.key(0), 1), (40, 2))
    assert data["cell"] == repr(cell) and data["steps"] == 40
    assert_close(data["rows"][0]["exponent"], gp.explain(cell, params, xs, warmup=5).exponent)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_explain_builtin_gru_rnn(cell, capsys):
    extra = ["--nonlinearity", "relu"] if cell == "rnn" else []
    code, out, err = run(["explain", "--cell", cell, "--steps", "40", "--hidden", "5",
                          "--recurrent-gain", "1.5", *extra], capsys)
    assert code == 0, err
    assert ("GRU(" if cell == "gru" else "RNN(") in out.splitlines()[0]
    assert "verdict:" in out


# --------------------------------------------------------------------------- errors


def _bad_inputs(tmp_path):
    torch_path, _ = torch_npz(tmp_path)
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    bad_xs = tmp_path / "xs.npy"
    np.save(bad_xs, np.zeros((10, 3)))
    return {
        "missing weights": (["explain", "--weights", str(tmp_path / "nope.npz"),
                             "--format", "torch"], "no such file"),
        "missing input file": (["explain", "--input-file", str(tmp_path / "nope.npy")],
                               "no such file"),
        "unknown format": (["explain", "--weights", str(torch_path), "--format", "tf"],
                           "invalid choice"),
        "format without weights": (["explain", "--format", "torch"], "--weights"),
        "weights without format": (["explain", "--weights", str(torch_path)], "--format"),
        "wrong format": (["explain", "--weights", str(torch_path), "--format", "keras"],
                         "--format keras"),
        "not an npz": (["explain", "--weights", str(text), "--format", "torch"],
                       "cannot read"),
        "not a weights file": (["explain", "--weights", str(bad_xs), "--format", "torch"],
                               "expected a .npz"),
        "option of another format": (["explain", "--weights", str(torch_path), "--format",
                                      "haiku", "--layer", "1"], "--layer"),
        "wrong cell for weights": (["explain", "--weights", str(torch_path), "--format",
                                    "torch", "--cell", "gru"], "the weights hold LSTM"),
        "wrong input width": (["explain", "--input-file", str(bad_xs)], "m = 4"),
        "unknown cell": (["explain", "--cell", "transformer"], "invalid choice"),
        "lstm option on gru": (["explain", "--cell", "gru", "--forget-bias", "1"],
                               "--cell lstm only"),
        "negative hidden": (["explain", "--hidden", "-3"], "positive integer"),
        "negative steps": (["explain", "--steps", "-1"], "positive integer"),
        "zero steps": (["explain", "--steps", "0"], "positive integer"),
        "negative inputs": (["explain", "--inputs", "-2"], "integer >= 0"),
        "negative seed": (["explain", "--seed", "-1"], "integer >= 0"),
        "not a number": (["explain", "--input-scale", "big"], "finite number"),
        "warmup too long": (["explain", "--steps", "20", "--warmup", "20"], "--warmup"),
        "force without out": (["explain", "--force"], "--out"),
        "unknown route": (["explain", "--counts-route", "q"], "--counts-route"),
        "sweep negative hidden": (["sweep", "--hidden", "-1"], "positive integer"),
        "sweep negative gain": (["sweep", "--gains=-1,2"], "--gains"),
        "sweep bad grid": (["sweep", "--forget-biases", "a:b"], "start:stop:count"),
        "sweep bad route": (["sweep", "--scaled", "carousel"], "z,i,f,o"),
        "train unknown cell": (["train", "--cell", "tcn"], "invalid choice"),
        "train unknown task": (["train", "--task", "chess"], "invalid choice"),
        "train negative steps": (["train", "--steps", "-5"], "positive integer"),
        "train zero batch": (["train", "--batch-size", "0"], "positive integer"),
        "train negative clip": (["train", "--clip", "-1"], "> 0"),
        "train lstm option on rnn": (["train", "--cell", "rnn", "--output-gain", "3"],
                                     "--cell lstm only"),
        "unknown command": (["explian"], "invalid choice"),
        "no command": ([], "required"),
    }


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    for case, (argv, needle) in _bad_inputs(tmp_path).items():
        code, out, err = run(argv, capsys)
        command = argv[0] if argv and argv[0] in _cli._COMMANDS else None
        assert_one_line_error(code, out, err, command)
        assert needle in err, f"{case}: {err!r}"


def test_console_script_error_has_no_traceback(tmp_path):
    env = {**os.environ, "GRADPATHS_CACHE_DIR": "off"}
    for argv in (["explain", "--weights", str(tmp_path / "missing.npz"), "--format", "torch"],
                 ["sweep", "--hidden", "-4"]):
        proc = subprocess.run([sys.executable, "-m", "gradpaths", *argv], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"gradpaths {argv[0]}: error: ")


def test_unexpected_errors_are_one_line_unless_traceback(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke\ninside")

    monkeypatch.setattr(gp, "explain", boom)
    code, out, err = run(["explain", *SMALL], capsys)
    assert code == 1
    assert err.strip() == ("gradpaths explain: error: unexpected RuntimeError: something broke "
                           "inside (run again with --traceback for details)")
    with pytest.raises(RuntimeError, match="something broke"):
        _cli.main(["explain", *SMALL, "--traceback"])


@pytest.mark.parametrize("command", ["", "explain", "sweep", "train"])
def test_help(command, capsys):
    code, out, err = run([command, "--help"] if command else ["--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: gradpaths {command}".rstrip())
    for option in {"": ["explain", "sweep", "train"],
                   "explain": ["--weights", "--format", "--cell", "--hidden", "--steps",
                               "--seed", "--out", "--force", "--input-file"],
                   "sweep": ["--gains", "--forget-biases", "--scaled", "--out"],
                   "train": ["--task", "--clip", "--compare", "--out"]}[command]:
        assert option in out
