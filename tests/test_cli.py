"""The command line as a whole: help, exit codes, one-line errors, report folders."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import (
    MARKER,
    NO_CACHE,
    SMALL,
    SWEEP,
    assert_one_line_error,
    run,
    torch_npz,
)

import gradpaths as gp
from gradpaths._cli import _main


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
                         "--weights: " + repr(str(torch_path)) + " as keras weights: "),
        "not an npz": (["explain", "--weights", str(text), "--format", "torch"],
                       "is not an .npz archive"),
        "not a weights file": (["explain", "--weights", str(bad_xs), "--format", "torch"],
                               "expected a .npz"),
        "option of another format": (["explain", "--weights", str(torch_path), "--format",
                                      "haiku", "--layer", "1"],
                                     "--layer: does not apply to --format haiku"),
        "layer not in the weights": (["explain", "--weights", str(torch_path), "--format",
                                      "torch", "--layer", "7"], "--weights: "),
        "wrong cell for weights": (["explain", "--weights", str(torch_path), "--format",
                                    "torch", "--layer", "0", "--cell", "gru"],
                                   "the weights hold LSTM"),
        "bidirectional whole": (["explain", "--weights", str(torch_path), "--format", "torch"],
                                "bidirectional"),
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
        "zero horizon tol": (["explain", "--horizon-tol", "0"], "finite number > 0"),
        "horizon tol with exact": (["explain", "--horizon-tol", "1e-3", "--horizon", "exact"],
                                   "--horizon-tol: applies to --horizon lanczos"),
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
        command = argv[0] if argv and argv[0] in _main.COMMANDS else None
        assert_one_line_error(code, out, err, command)
        assert needle in err, f"{case}: {err!r}"


def test_console_script_error_has_no_traceback(tmp_path):
    env = {**os.environ, **NO_CACHE}
    for argv in (["explain", "--weights", str(tmp_path / "missing.npz"), "--format", "torch"],
                 ["sweep", "--hidden", "-4"]):
        proc = subprocess.run([sys.executable, "-m", "gradpaths", *argv], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"gradpaths {argv[0]}: error: ")


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"),
                                   KeyError("routes"), ValueError("shapes (3,) (4,)"),
                                   TypeError("unsupported operand")])
def test_a_library_bug_is_an_internal_error(error, capsys, monkeypatch):
    """Only gradpaths' own input errors mean "bad input" (2): a ZeroDivisionError, a
    KeyError or even a plain ValueError from inside the library is a bug (70), said so."""
    monkeypatch.setattr(gp, "explain", _raise(error))
    code, out, err = run(["explain", *SMALL], capsys)
    assert code == _main.EXIT_SOFTWARE == 70
    assert out == ""
    first, second = err.strip().splitlines()
    assert first == f"gradpaths explain: internal error: {type(error).__name__}: " + " ".join(
        str(error).split())
    assert second == ("This is a bug in gradpaths, not in your input: please report it with "
                      "the traceback (run again with --traceback, or GRADPATHS_TRACEBACK=1).")
    assert "Traceback" not in err


def test_sweep_and_train_bugs_are_internal_errors_too(capsys, monkeypatch):
    import gradpaths._train as train_module

    monkeypatch.setattr(gp, "sweep", _raise(KeyError("full")))
    monkeypatch.setattr(train_module, "train", _raise(ZeroDivisionError("float division")))
    for argv, kind in ((SWEEP, "KeyError"), (["train", "--steps", "3"], "ZeroDivisionError")):
        code, out, err = run(argv, capsys)
        assert code == 70, err
        assert err.startswith(f"gradpaths {argv[0]}: internal error: {kind}: ")


def test_exit_codes_and_tracebacks(capsys, monkeypatch):
    cases = [
        (gp.InputError("xs: expected\nfinite values"), 2,
         "gradpaths explain: error: xs: expected finite values"),
        (gp.NonFiniteError("params.R.o: expected finite values"), 2,
         "gradpaths explain: error: params.R.o: expected finite values"),
        (PermissionError(13, "Permission denied"), 74,
         "gradpaths explain: error: [Errno 13] Permission denied"),
        (KeyboardInterrupt(), 130, "gradpaths explain: interrupted"),
    ]
    for error, status, message in cases:
        monkeypatch.setattr(gp, "explain", _raise(error))
        code, out, err = run(["explain", *SMALL], capsys)
        assert (code, out, err.strip()) == (status, "", message)
    # The traceback on request: the exception itself surfaces, for --traceback and the
    # environment variable alike.
    monkeypatch.setattr(gp, "explain", _raise(ZeroDivisionError("boom")))
    with pytest.raises(ZeroDivisionError, match="boom"):
        run(["explain", *SMALL, "--traceback"], capsys)
    monkeypatch.setenv("GRADPATHS_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError, match="boom"):
        run(["explain", *SMALL], capsys)
    monkeypatch.setattr(gp, "explain", _raise(gp.InputError("bad")))
    with pytest.raises(gp.InputError, match="bad"):
        run(["explain", *SMALL], capsys)
    monkeypatch.setenv("GRADPATHS_TRACEBACK", "0")
    assert run(["explain", *SMALL], capsys)[0] == 2


def test_version_and_entry_points(capsys):
    import importlib.metadata

    code, out, err = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"gradpaths {gp.__version__}"
    assert gp.__version__ == importlib.metadata.version("gradpaths")
    # The console script and `python -m gradpaths` both run gradpaths._cli.main.
    scripts = importlib.metadata.entry_points(group="console_scripts", name="gradpaths")
    assert [ep.value for ep in scripts] == ["gradpaths._cli:main"]
    from gradpaths._cli import main

    assert main is _main.main


def test_version_of_a_source_tree(monkeypatch):
    import importlib.metadata

    from gradpaths import _version

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert _version.version() == _version.UNKNOWN == "0+unknown"


def test_defaults_come_from_the_library():
    """What the command line uses and shows, when not given, is the library's default."""
    from gradpaths._cells import BUILTIN_CELLS, Gates
    from gradpaths._cli._common import default_of
    from gradpaths._tasks import TASKS
    from gradpaths.interop._load import FORMATS

    p = _main.parser()
    sweep = p.parse_args(["sweep"])
    for name in ("gains", "forget_biases", "hidden", "inputs", "steps", "warmup",
                 "input_scale", "scaled", "base_gain"):
        assert getattr(sweep, name) == default_of(gp.sweep, name), name
    assert sweep.seed == default_of(gp.sweep, "key")
    explain = p.parse_args(["explain"])
    assert explain.margin == default_of(gp.explain, "margin")
    assert explain.horizon == default_of(gp.explain, "horizon")
    train = p.parse_args(["train"])
    assert train.batch_size == default_of(gp.train, "batch_size")
    assert train.recurrent_gain == default_of(gp.exploding_lstm, "recurrent_gain")
    actions = {a.dest: a for a in p._subparsers._group_actions[0].choices["explain"]._actions}
    assert tuple(actions["format"].choices) == FORMATS == gp.interop.FRAMEWORKS
    assert tuple(actions["cell"].choices) == tuple(c.__name__.lower() for c in BUILTIN_CELLS)
    train_actions = p._subparsers._group_actions[0].choices["train"]._actions
    assert tuple(next(a for a in train_actions if a.dest == "task").choices) == tuple(TASKS)
    sweep_actions = p._subparsers._group_actions[0].choices["sweep"]._actions
    scaled = next(a for a in sweep_actions if a.dest == "scaled")
    assert f"of {','.join(Gates._fields)} (default o)" in scaled.help
    assert f"default {default_of(gp.exploding_lstm, 'output_gain'):g}" in actions[
        "output_gain"].help


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


def test_report_destination_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gp, "explain", lambda *a, **k: pytest.fail("explain ran"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    # A folder of the user's: their own report.json, other files and a sub-folder.
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


def test_closed_pipe_ends_quietly(tmp_path):
    """``gradpaths explain | head -1``: no error message, the status of SIGPIPE."""
    env = {**os.environ, **NO_CACHE}
    proc = subprocess.Popen([sys.executable, "-m", "gradpaths", "explain", "--steps", "20",
                             "--hidden", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()                     # the reader is gone before anything is written
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == b""
