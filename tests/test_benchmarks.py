"""Smoke test of the benchmark machinery at a tiny size. No timing is ever asserted."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def runner():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location("_gp_bench_run", os.path.join(BENCH, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc(runner):
    """jacobians.py through the runner at size "tiny" (n = 8, T = 10, one repeat)."""
    return runner.run(["jacobians"], "tiny", "float32")


def test_rows_follow_the_contract(runner, doc):
    rows = doc["rows"]
    assert rows
    for row in rows:
        for key in runner.REQUIRED_KEYS:
            assert key in row
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            assert row["seconds"] is not None and math.isfinite(row["seconds"])
    json.loads(json.dumps(doc, default=str))  # serialisable
    env = doc["environment"]
    for key in ("date", "device", "jax", "numpy", "torch", "dtype", "size"):
        assert key in env


def test_jacobians_checked_before_timing(doc):
    rows = {r["method"]: r for r in doc["rows"] if r["benchmark"] == "jacobians"}
    expected = {"memory-fill", "analytic", "jacfwd", "jacrev",
                "eager-jacrev-loop", "torch.func"}
    assert set(rows) == expected
    for method, row in rows.items():
        assert (row["n"], row["T"], row["d"], row["dtype"]) == (8, 10, 16, "float32")
        if method == "memory-fill" or row["status"] == "skipped":
            continue
        assert row["check"] == "ok", row
        assert row["err_over_tol"] <= 1.0
        assert row["repeats"] == 1
    assert rows["analytic"]["status"] == "ok"
    assert rows["analytic"]["vs_analytic"] == 1.0
    assert "extrapolated" in rows["eager-jacrev-loop"]["note"]
    if rows["torch.func"]["status"] == "skipped":
        assert "torch" in rows["torch.func"]["note"]


def test_float64_tolerance(runner):
    jacobians = runner.load("jacobians")
    rows = jacobians.main(size="tiny", dtype="float64", methods=("analytic", "jacfwd"))
    assert [r["check"] for r in rows] == ["ok", "ok"]
    assert all(r["dtype"] == "float64" for r in rows)


def test_render_and_targets(runner, doc):
    text = runner.render(doc)
    assert "| n | T | method |" in text
    assert "not measured" in text  # targets need n = 128, 512 and T = 1000


def test_write_never_overwrites_and_compare(runner, doc, tmp_path, capsys):
    old = tmp_path / "old.json"
    runner.write_atomic(str(old), json.dumps(doc), force=False)
    with pytest.raises(FileExistsError):
        runner.write_atomic(str(old), "{}", force=False)
    assert json.loads(old.read_text()) == json.loads(json.dumps(doc))
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]  # no temporary left

    new_doc = copy.deepcopy(doc)
    for row in new_doc["rows"]:
        if row["seconds"] is not None:
            row["seconds"] *= 2
    new_doc["rows"].append(dict(new_doc["rows"][0], name="only new", seconds=1.0))
    new = tmp_path / "new.json"
    runner.write_atomic(str(new), json.dumps(new_doc), force=True)

    assert runner.main(["--compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "new/old" in out and "| 2 |" in out and "only new" in out


def test_main_without_dtype(runner):
    module = types.ModuleType("fake")
    module.main = lambda size="small": [
        {"benchmark": "fake", "name": size, "status": "ok", "seconds": 1.0}]
    rows = runner.check_rows("fake", runner.call_main(module, "tiny", "float32"))
    assert rows[0]["name"] == "tiny"


def test_runner_refuses_to_overwrite(runner, tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit) as info:
        runner.main(["--size", "tiny", "--out", str(existing)])
    assert info.value.code == 2
    assert existing.read_text() == "{}"


@pytest.fixture(scope="module")
def spectra_rows(runner):
    """spectra.py at size "tiny" (n = 8 and 16, T = 20 and 100; seconds)."""
    spectra = runner.load("spectra")
    return runner.check_rows("spectra", spectra.main(size="tiny", verbose=False))


def test_spectra_rows_follow_the_contract_and_pass_their_checks(runner, spectra_rows):
    spectra = runner.load("spectra")
    assert {r["part"] for r in spectra_rows} == {"products", "matrix-free", "memory"}
    for row in spectra_rows:
        for key in runner.REQUIRED_KEYS:
            assert key in row
        assert row["benchmark"] == "spectra"
        assert row["status"] == "ok", row
        if row["what"].startswith("baseline"):
            assert row["check"] is None and row["ratio"] == 1.0
        elif row["what"] == spectra.QR_EVERY_4:
            assert row["check"] in ("ok", "FAILED")  # known to lose small exponents
            if row["check"] == "FAILED":
                assert row["note"].startswith("expected") and row["met"] is False
        else:
            assert row["check"] == "ok", row
        if row["part"] == "memory":
            assert row["seconds"] is None and 0 < row["peak_rss_GiB"] < 2
        else:
            assert row["seconds"] is not None and math.isfinite(row["seconds"])
            assert row["repeats"] >= 1 and row["compile_s"] is not None
            assert isinstance(row["met"], bool) or row["target"] is None
    json.loads(json.dumps(spectra_rows))  # serialisable as is
    text = spectra.report(spectra_rows)
    assert "| part | what |" in text and "Targets:" in text
    assert "under 2 GiB" in text


def test_worker_peak_rss_is_its_own(runner, tmp_path):
    """A worker's peak excludes its parent's: ``ru_maxrss`` would inherit it at the spawn."""
    common = runner.C
    ballast = np.ones(2**30 // 8)  # 1 GiB held by this (parent) process
    code = (f"import sys; sys.path.insert(0, {BENCH!r}); import _common as C; "
            "print(C.self_peak_rss())")
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)
    assert common.self_peak_rss() > 2**30 > child
    del ballast


@pytest.fixture(scope="module")
def explain_rows(runner):
    """explain.py at size "tiny" (n = 16, T = 50; the memory smoke test at T = 100)."""
    explain = runner.load("explain")
    return runner.check_rows("explain", explain.main(size="tiny", verbose=False))


def test_explain_rows_follow_the_contract_and_pass_their_checks(runner, explain_rows):
    explain = runner.load("explain")
    assert {r["part"] for r in explain_rows} == set(explain.PARTS)
    for row in explain_rows:
        for key in runner.REQUIRED_KEYS:
            assert key in row
        assert row["benchmark"] == "explain"
        assert (row["n"], row["m"], row["dtype"]) == (16, 32, "float32")
        if row["what"].startswith("torch") and row["status"] == "skipped":
            assert "torch" in row["note"]
            continue
        assert row["status"] == "ok", row
        if row["check"] is not None:
            assert row["check"] == "ok", row
            assert row["err_over_tol"] is None or row["err_over_tol"] <= 1.0
        if row["part"] == "memory":
            assert row["seconds"] is None and 0 < row["peak_rss_GiB"] < 4
            assert row["target"] is None  # a smoke size: no target
        else:
            assert row["seconds"] is not None and math.isfinite(row["seconds"])
            assert row["repeats"] >= 1 and row["T"] == 50
        if row["what"] == explain.PLAIN:
            assert row["ratio"] == 1.0 and row["met"] is None
        if row["target"] is not None and row["part"] != "memory" and row["status"] == "ok":
            assert isinstance(row["met"], bool)
    json.loads(json.dumps(explain_rows))  # serialisable as is


def test_explain_parts_check_against_references(runner, explain_rows):
    explain = runner.load("explain")
    by = {(r["part"], r["cell"], r["what"]): r for r in explain_rows}
    for cell in ("lstm", "gru"):
        whats = {w for p, c, w in by if p == "forward" and c == cell}
        assert whats == {explain.PLAIN, "gp.unroll", "jit(gp.unroll)",
                         f"torch.nn.{cell.upper()}"}
        for what in ("gp.unroll", "jit(gp.unroll)"):
            assert by["forward", cell, what]["target"] == explain.FORWARD_TARGET
    ex = by["explain", "lstm", "gp.explain"]
    assert "horizon vs float64" in ex["checked"]   # n = 16: the dense reference ran
    assert abs(ex["exponent"] - ex["exponent_ref"]) <= 1e-5 + 2e-4 * abs(ex["exponent_ref"])
    assert abs(ex["horizon"] - ex["horizon_ref"]) <= 1e-5 + 2e-4 * abs(ex["horizon_ref"])
    assert ex["compile_s"] is not None and ex["peak_rss_GiB"] > 0
    top = by["top8", "lstm", "lyapunov_exponents k=8 method=jvp"]
    assert top["target"] == explain.TOP8_TARGET and math.isfinite(top["top1"])
    text = explain.report(explain_rows)
    assert "| part | cell | n | T | what |" in text and "Targets:" in text
    assert "within 1.5x of the plain scan" in text


def test_explain_plain_baselines_match_gradpaths(runner):
    """The plain scans are the cells' maths: equal to gp.unroll, LSTM and GRU (float64)."""
    explain = runner.load("explain")
    import jax

    import gradpaths as gp

    for kind in ("lstm", "gru"):   # float64: conftest.py turns x64 on
        cell = {"lstm": gp.LSTM, "gru": gp.GRU}[kind](3, 5)
        params = cell.init(jax.random.key(2), recurrent_gain=1.5, dtype="float64")
        xs = jax.random.normal(jax.random.key(3), (7, 3), "float64")
        ours = explain.hidden(kind, explain.PLAIN_FNS[kind](params, xs))
        ref = explain.hidden(kind, gp.unroll(cell, params, xs))
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-13)


def test_explain_memory_rows_skip_below_full(runner):
    explain = runner.load("explain")
    rows = explain.memory_skipped("small")
    assert [r["T"] for r in rows] == [5000, 20000]
    assert all(r["status"] == "skipped" and "full" in r["note"] for r in rows)


def test_floor_rows_follow_the_contract_and_pass_their_checks(runner):
    floor = runner.load("floor")
    rows = floor.main("tiny")
    assert [r["what"] for r in rows] == list(floor.VARIANTS.values())
    for row in rows:
        for key in runner.REQUIRED_KEYS:
            assert key in row
        assert row["status"] == "ok" and row["check"] == "ok", row
        assert math.isfinite(row["seconds"]) and math.isfinite(row["ratio"])
    assert "Floors" in floor.report(rows)


def test_saturation_rows_follow_the_contract_and_pass_their_checks(runner):
    saturation = runner.load("saturation")
    rows = saturation.main("tiny")
    assert [r["what"] for r in rows] == [saturation.PLAIN, saturation.STEPPING,
                                         saturation.FUSED]
    for row in rows:
        for key in runner.REQUIRED_KEYS:
            assert key in row
        assert row["status"] == "ok" and row["check"] == "ok", row
        assert math.isfinite(row["seconds"]) and math.isfinite(row["speedup"])
    assert rows[2]["err_over_tol"] <= 1
    assert "× stepping" in saturation.report(rows)


def test_predict_tables_from_synthetic_histories():
    """benchmarks/predict.py's analysis on known histories (no training)."""
    import gradpaths as gp

    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location("_gp_bench_predict",
                                                  os.path.join(BENCH, "predict.py"))
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    histories = []
    for events in ([25, 65], [45]):
        h = gp.History(("R",), (), None)
        h.probe_step = np.arange(0, 100, 10)
        h.top_exponent = np.array([0.4, -1, 0.5, -1, -1, 0.2, 0.3, -1, 0.1, -1])
        h.route_exponents = h.top_exponent[:, None] - 1.0          # never alarms
        h.events = [gp.Event(s, "explosion", 1e3, 1.0, "R", {}, "") for s in events]
        histories.append(h)
    rows = {(r["score"], r["window"], r["min_lead"]): r for r in predict.analyse(histories)}
    top = rows[("top", 1, 0)]               # run-ups: 25 -> {20}, 65 -> {60}, 45 -> {40}
    assert (top["events"], top["hits"], top["alarms"], top["false_alarms"]) == (3, 2, 10, 8)
    assert top["leads"] == [5, 5] and top["base_rate"] == 3 / 20
    assert rows[("route", 3, 0)]["hits"] == 0
    assert "recall" in predict.render(list(rows.values())).splitlines()[0]


def test_orthonormal_script_checks_and_prints_both_tables():
    """orthonormal.py exits 0 only when Householder and "auto" give the same exponents."""
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH, "orthonormal.py"), "--dtype", "float32",
         "--sizes", "8,16", "--T", "20", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=True).stdout
    spectra, kernels = out.split("Dense kernels")

    def numbers(table):   # the data rows of a markdown table, first column dropped
        return [[float(v.strip("% ")) for v in line.strip("|").split("|")[1:]]
                for line in table.splitlines() if line[:3] in ("| 4", "| 8", "| 1")]

    assert len(numbers(spectra)) == 2 and len(numbers(kernels)) == 2, out
    for row in numbers(kernels):                        # us per step and qr / matmul
        assert len(row) == 5 and all(math.isfinite(v) and v > 0 for v in row), out
