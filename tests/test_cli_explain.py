"""``gradpaths explain``: the built-in model, imported weights, inputs and its report."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys

import jax
import numpy as np
import pytest
from cli_helpers import (
    FIXTURES,
    MARKER,
    NO_CACHE,
    PNG,
    SMALL,
    SMALL_EXPLAIN,
    assert_one_line_error,
    run,
    strict_json,
    torch_npz,
)
from helpers import assert_close

import gradpaths as gp
from gradpaths import _cli


class _Capture:
    def __init__(self):
        self.out, self.err = io.StringIO(), io.StringIO()


def test_explain_default_explodes_through_o(capsys):
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


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """One ``gradpaths explain`` run with a report folder, shared by the tests below."""
    out_dir = tmp_path_factory.mktemp("cli") / "rep"
    capture = _Capture()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(capture.out), \
            contextlib.redirect_stderr(capture.err):
        for k, v in NO_CACHE.items():
            mp.setenv(k, v)
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
    assert_close(report["figures"]["lyapunov_spectrum"][0], ex.exponent)
    md = (out_dir / "report.md").read_text()
    assert ex.verdict in md and "| `all but o` | all but |" in md
    for f in figures:
        assert (out_dir / f"{f}.png").read_bytes()[:8] == PNG
        assert f"]({f}.png)" in md
    written = ["report.json", "report.md", *(f"{f}.png" for f in figures)]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*written, MARKER])
    assert strict_json((out_dir / MARKER).read_text())["files"] == sorted(written)
    assert [p.name for p in out_dir.parent.iterdir()] == ["rep"]    # no temporary left over


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


def test_float32_files_are_computed_in_float64(tmp_path, capsys):
    """docs/cli.md: everything runs in float64. float32 weights with a float32 input file
    ran in float32 (horizon_tol 5e-5, other numbers); now they give the numbers of the
    same values saved in float64."""
    path, sd = torch_npz(tmp_path)
    xs = np.asarray(jax.random.normal(jax.random.key(7), (40, 2)), np.float32)
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        np.savez(tmp_path / f"w-{name}.npz", **{k: v.astype(np.float32).astype(dtype)
                                                for k, v in sd.items()})
        np.save(tmp_path / f"xs-{name}.npy", xs.astype(dtype))
        code, text, err = run(["explain", "--weights", str(tmp_path / f"w-{name}.npz"),
                               "--format", "torch", "--layer", "0", "--input-file",
                               str(tmp_path / f"xs-{name}.npy"), "--warmup", "5", "--json"],
                              capsys)
        assert code == 0, err
        out[name] = strict_json(text)
    assert out["float32"]["horizon_tol"] == out["float64"]["horizon_tol"] == 1e-9
    assert out["float32"]["rows"] == out["float64"]["rows"]


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


def test_unreadable_torch_file_is_one_line_without_unsafe_advice(tmp_path, capsys,
                                                                  monkeypatch):
    """torch's own message (which can advise an unsafe load) never reaches the user: the
    loader's is shown after --weights (the loader itself is tested in test_interop_load)."""
    import types

    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage")

    def refuse(*args, **kwargs):
        raise RuntimeError("failed finding central directory ... weights_only=False \x1b[0m")

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=refuse))
    code, out, err = run(["explain", "--weights", str(path)], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert err.strip() == (
        f"gradpaths explain: error: --weights: {str(path)!r} is not a state dict gradpaths "
        "can read (a mapping of parameter names to tensors); save one with "
        "torch.save(model.state_dict(), path)")


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


def test_explain_whole_torch_stack(tmp_path, capsys):
    """A 3-layer module is explained whole by default (one state, every layer's routes);
    ``--layer`` keeps one layer."""
    with np.load(os.path.join(FIXTURES, "torch_lstm_stack3.npz")) as data:
        sd = {k[len("params/"):]: data[k] for k in data.files if k.startswith("params/")}
    path = tmp_path / "stack.npz"
    np.savez(path, **sd)
    code, out, err = run(["explain", "--weights", str(path), "--format", "torch", "--steps",
                          "30", "--warmup", "5", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    stack, params = gp.interop.from_torch(sd)
    assert isinstance(stack, gp.Stack) and stack.num_layers == 3
    assert data["cell"] == repr(stack) and "all 3 layers" in data["weights"]
    xs = jax.random.normal(jax.random.fold_in(jax.random.key(0), 1), (30, stack.input_size))
    ex = gp.explain(stack, params, xs, warmup=5)
    assert_close(data["rows"][0]["exponent"], ex.exponent)
    names = {row["name"] for row in data["rows"]}
    assert {"3:o", "all but 2>3", "ds^3/ds^3"} <= names and "2>3" not in names   # nilpotent alone


def test_hostile_files_exit_2_saying_what_is_wrong(tmp_path, capsys):
    """Weights and input files that are not what they claim, folders, FIFOs, H = 0, a bool
    input array: exit 2, one line that says what is wrong (issue 24, item 10); numpy's
    advice to load pickled data unsafely is never repeated."""
    weights, _ = torch_npz(tmp_path)
    npy = tmp_path / "xs.npy"
    np.save(npy, np.zeros((10, 4)))
    renamed = tmp_path / "renamed.npz"
    renamed.write_bytes(npy.read_bytes())
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"weight_ih_l0": np.zeros((16, 4))}))
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    empty_layer = tmp_path / "h0.npz"
    np.savez(empty_layer, weight_ih=np.zeros((0, 4)), weight_hh=np.zeros((0, 0)))
    flags = tmp_path / "flags.npy"
    np.save(flags, np.ones((10, 4), bool))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[None] * 4] * 10, dtype=object), allow_pickle=True)
    pickled_xs = tmp_path / "pickled.npy"
    pickled_xs.write_bytes(pickle.dumps(np.zeros((10, 4))))
    cases = {
        "renamed": (["--weights", str(renamed)], "it is a single .npy array (np.save)"),
        "pickle": (["--weights", str(pickled)], "it is a Python pickle, which gradpaths "
                                                "never loads"),
        "folder": (["--weights", str(folder)], f"--weights: {str(folder)!r} is a folder"),
        "fifo": (["--weights", str(fifo)], f"--weights: {str(fifo)!r} is a FIFO"),
        "H = 0": (["--weights", str(empty_layer)], "weight_hh: shape (0, 0) has hidden size "
                                                   "H = 0"),
        "bool inputs": (["--weights", str(weights), "--layer", "0", "--input-file",
                         str(flags)], "--input-file: expected real numbers (a floating or "
                                      "integer array), got dtype bool"),
        "object inputs": (["--input-file", str(objects)], "holds Python objects (dtype "
                                                          "object)"),
        "pickled inputs": (["--input-file", str(pickled_xs)], "is not a .npy array (np.save "
                                                              "writes one): it is a Python "
                                                              "pickle"),
        "npz inputs": (["--input-file", str(weights)], "is not a .npy array (np.save writes "
                                                       "one): it is a zip archive"),
        "folder inputs": (["--input-file", str(tmp_path)], "--input-file: "
                                                           f"{str(tmp_path)!r} is a folder"),
        "fifo inputs": (["--input-file", str(fifo)], "is a FIFO (named pipe), not a regular "
                                                     "file"),
    }
    for name, (argv, needle) in cases.items():
        fmt = ["--format", "torch"] if "--weights" in argv else []
        code, out, err = run(["explain", *argv, *fmt], capsys)
        assert_one_line_error(code, out, err, "explain")
        assert needle in err, (name, err)
        assert "allow_pickle" not in err and "unsafe" not in err, (name, err)


def test_meta_tensors_exit_2(tmp_path, capsys):
    """A .pt of meta tensors (a model built on device='meta'): exit 2, not 70."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "meta.pt"
    torch.save(torch.nn.LSTM(4, 8, device="meta").state_dict(), path)
    code, out, err = run(["explain", "--weights", str(path)], capsys)
    assert_one_line_error(code, out, err, "explain")
    assert "weight_hh_l0: is a meta tensor (a shape (32, 8) without values" in err, err
