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
MARKER = ".gradpaths-report.json"


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
    assert data["regions"][-1][-1] == "interaction" and data["regions"][0][0] == "vanishes"


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
    assert report["figures"]["route_use_counts"]["route"] == ex.driver.dominant
    assert len(report["figures"]["lyapunov_spectrum"]) == 16
    assert_close(report["figures"]["lyapunov_spectrum"][0], ex.exponent, scale=1e6)
    md = (out_dir / "report.md").read_text()
    assert ex.verdict in md and "| `all but o` | all but |" in md
    for f in figures:
        assert (out_dir / f"{f}.png").read_bytes()[:8] == PNG
        assert f"]({f}.png)" in md
    written = ["report.json", "report.md", *(f"{f}.png" for f in figures)]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*written, MARKER])
    assert strict_json((out_dir / MARKER).read_text())["files"] == sorted(written)
    assert [p.name for p in out_dir.parent.iterdir()] == ["rep"]    # no temporary left over


def test_existing_folder_is_not_overwritten(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "rep"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    # Refused before any work: explain is never called.
    monkeypatch.setattr(gp, "explain", lambda *a, **k: pytest.fail("explain ran"))
    code, out, err = run(["explain", *SMALL, "--out", str(out_dir)], capsys)
    assert_one_line_error(code, out, err, "explain")
    # --force would not replace it, so it is not suggested.
    assert "exists" in err and "--force" not in err and "did not write (notes.txt)" in err
    code, out, err = run(["explain", *SMALL, "--out", str(out_dir), "--force"], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert "did not write (notes.txt)" in err
    assert [p.name for p in out_dir.iterdir()] == ["notes.txt"]
    assert (out_dir / "notes.txt").read_text() == "mine"


def test_force_replaces_a_report_folder(tmp_path, capsys):
    out_dir = tmp_path / "sw"
    argv = [*SWEEP, "--out", str(out_dir)]
    umask = os.umask(0o027)
    try:
        assert run(argv, capsys)[0] == 0
    finally:
        os.umask(umask)
    assert out_dir.stat().st_mode & 0o777 == 0o750      # the umask's, like any new folder
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, out, err, "sweep")
    assert "pass --force to replace it" in err and "force=True" not in err
    # A file gradpaths did not write: never replaced, even with --force.
    (out_dir / "stale.txt").write_text("old")
    code, out, err = run([*argv, "--force"], capsys)
    assert_one_line_error(code, out, err, "sweep")
    assert "did not write (stale.txt)" in err and "--force" not in err
    assert (out_dir / "stale.txt").read_text() == "old"
    (out_dir / "stale.txt").unlink()
    code, out, err = run([*argv, "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [MARKER, "phase_diagram.png",
                                                         "report.json", "report.md"]
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
    # The reverse direction reads the inputs from the last step back, as in torch.
    ex = gp.explain(cell, params, xs[::-1], warmup=5)
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


# --------------------------------------------------------------------------- issue 10: no wrong
# number, no lost file


def test_train_interrupt_stops_the_whole_command(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first run of --compare: the clipped run never starts, the terminal
    and report.md say so, and the exit status is 130."""
    import gradpaths._train as train_module

    real, clips = train_module.train, []

    def ctrl_c_at_step_4(*args, **kwargs):
        clips.append(kwargs["clip"])

        def press(step, record):
            if step == 4:
                raise KeyboardInterrupt

        return real(*args, callback=press, **kwargs)

    monkeypatch.setattr(train_module, "train", ctrl_c_at_step_4)
    out_dir = tmp_path / "tr"
    code, out, err = run(["train", "--steps", "30", "--compare", "--out", str(out_dir)], capsys)
    assert code == 130, err
    assert clips == [None]                              # the clipped run never started
    assert "interrupted (Ctrl-C) in run 'no clipping' after 5 of 30 steps" in err
    assert "not run: clip 1" in err
    assert "no clipping: interrupted after 5 of 30 steps" in out and "clip 1:" not in out
    report = strict_json((out_dir / "report.json").read_text())
    assert list(report["runs"]) == ["no clipping"] and report["runs"]["no clipping"]["steps"] == 5
    assert report["interrupted"] is True and report["not_run"] == ["clip 1"]
    md = (out_dir / "report.md").read_text()
    assert "**Interrupted (Ctrl-C):** 'no clipping' after 5 of 30 steps; not run: 'clip 1'" in md
    assert "| clip 1 | 0 | - | - | - | - | not run (interrupted) |" in md


def test_train_names_the_optimizer_and_an_unjudged_largest_norm(capsys):
    code, out, err = run(["train", "--help"], capsys)
    assert code == 0 and "with adam" not in out and "--optimizer" in out
    # The default model's largest gradient norm comes at step 2, before the explosion
    # detector has the 5 steps of history it needs: the summary says so.
    code, out, err = run(["train", "--steps", "12", "--json"], capsys)
    assert code == 0, err
    norms = np.array(strict_json(out)["no clipping"]["grad_norm"], float)
    assert int(np.argmax(norms)) < 5 and norms.max() > 1e4
    code, out, err = run(["train", "--steps", "12"], capsys)
    assert code == 0, err
    assert f"largest gradient norm {norms.max():.4g}, 0 explosion events" in out
    assert (f"note: the largest gradient norm ({norms.max():.3g}, step {np.argmax(norms)}) came "
            "before the explosion detector had 5 steps of history, so it was not judged") in out


def test_report_destination_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gp, "explain", lambda *a, **k: pytest.fail("explain ran"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    # The item-7 folder: a report.json of the user's, other files and a sub-folder.
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "report.json").write_text('{"my": "own"}')
    (proj / "data.csv").write_text("a,b\n")
    (proj / "sub" / "keep.txt").write_text("x")
    cases = {
        ".": "'.' is the current folder or holds it",
        "": "--out: expected a folder path, got ''",
        "link": "'link' is a symbolic link",
        "nodir/rep": "does not exist",
        "proj": "'proj' exists and holds files gradpaths did not write (data.csv, report.json, "
                "sub/)",
    }
    for out_arg, needle in cases.items():
        for force in ([], ["--force"]):
            code, out, err = run(["explain", *SMALL, "--out", out_arg, *force], capsys)
            assert_one_line_error(code, out, err, "explain")
            assert needle in err, (out_arg, err)
            assert "--force" not in err and "force=True" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "proj", "target"]
    assert sorted(str(p.relative_to(proj)) for p in proj.rglob("*")) == [
        "data.csv", "report.json", "sub", "sub/keep.txt"]
    assert (proj / "report.json").read_text() == '{"my": "own"}'


def test_write_report_speaks_keyword_arguments(tmp_path):
    report = gp._report.Report({"report": "test"}, "# test\n", files={"notes.txt": "x"})
    path = gp.write_report(tmp_path / "rep", report)
    assert sorted(p.name for p in path.iterdir()) == [MARKER, "notes.txt", "report.json",
                                                      "report.md"]
    with pytest.raises(FileExistsError, match=r"out: .* pass force=True to replace it"):
        gp.write_report(tmp_path / "rep", report)
    (path / "mine.csv").write_text("a")
    with pytest.raises(FileExistsError, match=r"did not write \(mine.csv\); it is never"):
        gp.write_report(tmp_path / "rep", report, force=True)
    assert (path / "mine.csv").read_text() == "a"
    with pytest.raises(ValueError, match="expected plain file names"):
        gp.write_report(tmp_path / "other", gp._report.Report({}, "", files={"../x": ""}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_input_file_is_used_as_it_is(tmp_path, capsys):
    xs = tmp_path / "xs.npy"
    np.save(xs, np.ones((30, 4)))
    code, out, err = run(["explain", "--input-file", str(xs), "--input-scale", "3"], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert "--input-scale: applies to the random inputs, not to --input-file" in err
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 4)))
    code, out, err = run(["explain", "--input-file", str(empty)], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert f"--input-file: {str(empty)!r} holds no steps (shape (0, 4))" in err
    code, out, err = run(["explain", *SMALL, "--counts-window", "100000"], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert ("--counts-window: expected at most the 45 steps after the warm-up (60 steps, "
            "warm-up 15), got 100000") in err


def test_explain_report_counts_window_is_never_cut():
    cell, params, xs = gp.exploding_lstm(hidden=4, steps=30)
    with pytest.raises(ValueError, match=r"counts_window: expected 1 to 20 .*got 21"):
        gp.explain_report(cell, params, xs, warmup=10, counts_window=21)


class _FakeTorch:
    """``torch`` with a ``load`` that fails as torch does on files it will not read."""

    def __init__(self, error=None, value=None):
        self.error, self.value = error, value

    def load(self, *args, **kwargs):
        assert kwargs["weights_only"] is True
        if self.error is not None:
            raise self.error
        return self.value


def test_unreadable_torch_files_get_safe_advice(tmp_path, capsys, monkeypatch):
    import pickle

    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage")
    advice = ("weights_only=False", "\x1b[")
    errors = [
        RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central "
                     "directory. ... you can load with `weights_only=False` ..."),
        pickle.UnpicklingError("Weights only load failed. \x1b[1mWeightsUnpickler error: "
                               "Unsupported global: GLOBAL __main__.Net\x1b[0m ... "
                               "weights_only=False"),
    ]
    for fake in [_FakeTorch(error=e) for e in errors] + [_FakeTorch(value=[1, 2, 3])]:
        monkeypatch.setitem(sys.modules, "torch", fake)
        code, out, err = run(["explain", "--weights", str(path)], capsys)
        assert_one_line_error(code, out, err, "explain")
        assert (f"--weights: {str(path)!r} is not a state dict gradpaths can read" in err
                and "save one with torch.save(model.state_dict(), path)" in err), err
        assert not any(a in err for a in advice), err


def test_closed_pipe_ends_quietly(tmp_path):
    """``gradpaths explain | head -1``: no error message, the status of SIGPIPE."""
    env = {**os.environ, "GRADPATHS_CACHE_DIR": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "gradpaths", "explain", "--steps", "20",
                             "--hidden", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()                     # the reader is gone before anything is written
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == b""


def _manual_stack(sd, xs, state0=None):
    """Layer 0 of the torch fixture (both directions) over ``xs``: layer 1's inputs."""
    outs = []
    for d, direction in (("f", "forward"), ("r", "reverse")):
        cell, params = gp.interop.from_torch(sd, layer=0, direction=direction)
        s0 = None if state0 is None else state0(d, cell)
        seq = xs if d == "f" else xs[::-1]
        h = np.asarray(gp.unroll(cell, params, seq, s0).h[1:])
        outs.append(h if d == "f" else h[::-1])
    return np.concatenate(outs, axis=-1)


def test_explain_layer_reads_the_layers_below(tmp_path, capsys):
    """--layer 1 of a 2-layer bidirectional torch LSTM reads layer 0's outputs, not N(0, 1)
    inputs, and the header names the layer and direction."""
    with np.load(os.path.join(FIXTURES, "torch_lstm.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    sd = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}

    def state0(d, cell):    # torch's (h0, c0) of layer 0 in the fixture
        return cell.initial_state(np.float64)._replace(c=arrays[f"state0/0{d}/1"],
                                                       h=arrays[f"state0/0{d}/0"])

    # The stacking convention checked against torch: layer 1 (both directions) on the
    # stacked outputs of layer 0 gives the module's output.
    below = _manual_stack(sd, arrays["xs"], state0)
    outs = []
    for d, direction in (("f", "forward"), ("r", "reverse")):
        cell, params = gp.interop.from_torch(sd, layer=1, direction=direction)
        s0 = cell.initial_state(np.float64)._replace(c=arrays[f"state0/1{d}/1"],
                                                     h=arrays[f"state0/1{d}/0"])
        seq = below if d == "f" else below[::-1]
        h = np.asarray(gp.unroll(cell, params, seq, s0).h[1:])
        outs.append(h if d == "f" else h[::-1])
    assert_close(np.concatenate(outs, axis=-1), arrays["out"])

    path = tmp_path / "lstm.npz"
    np.savez(path, **sd)
    out_dir = tmp_path / "rep"
    code, out, err = run(["explain", "--weights", str(path), "--format", "torch", "--layer", "1",
                          "--direction", "reverse", "--steps", "40", "--warmup", "5", "--out",
                          str(out_dir)], capsys)
    assert code == 0, err
    xs = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(0), 1), (40, 2)))
    cell, params = gp.interop.from_torch(sd, layer=1, direction="reverse")
    ex = gp.explain(cell, params, _manual_stack(sd, xs)[::-1], warmup=5)
    report = strict_json((out_dir / "report.json").read_text())
    assert_close(report["explanation"]["rows"][0]["exponent"], ex.exponent)
    assert report["explanation"]["verdict"] == ex.verdict
    header = (f"{path} (torch, layer 1, reverse direction); inputs: random N(0, 1^2), through "
              "the imported layer 0 below (6 outputs per step), read from the last step back "
              "(reverse direction)")
    assert out.splitlines()[0] == f"weights: {header}"
    assert report["source"] == header
    assert f"**Weights:** {header}." in (out_dir / "report.md").read_text()
