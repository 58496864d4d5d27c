"""``gradpaths report``: a records file written by a user's own loop becomes the report
folder of ``gradpaths train``; torn lines are skipped and said so."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from cli_helpers import MARKER, PNG, assert_one_line_error, run, strict_json

import gradpaths as gp

CELL = gp.LSTM(2, 4)
STEPS, PROBE_EVERY, SPIKE = 21, 5, 12


def _loop(path, norms):
    """A loop that records as a user's would: a probe every 5 steps with that step's
    gradient norm, the detector fed every step, each event attributed by a probe. Its
    'update' scales the recurrent weights; ``norms`` stand for the gradient norms."""
    params = CELL.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 8, 2))
    detector = gp.ExplosionDetector()
    probes = []
    for step in range(STEPS):
        if step % PROBE_EVERY == 0:
            probes.append(gp.probe(CELL, params, xs, step=step, grad_norm=norms[step],
                                   loss=1.0 / (1 + step)))
            gp.append_record(path, probes[-1])
        event = detector.update(norms[step], step=step)
        if event is not None:
            event = event.with_routes(gp.probe(CELL, params, xs, growth_only=True))
            gp.append_record(path, event)
        params = params._replace(R=jax.tree_util.tree_map(lambda r: 1.05 * r, params.R))
        gp.append_record(path, {"step": step, "lr": 0.1})     # the user's own numbers
    return probes


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A records file: probes at steps 0, 5, ..., 20, one explosion at step 12 whose norm
    (500) is the largest; the largest probe norm (8, step 20) is the 5th probe."""
    norms = np.ones(STEPS)
    norms[PROBE_EVERY * np.arange(5)] = [1.0, 2.0, 3.0, 4.0, 8.0]
    norms[SPIKE] = 500.0
    path = tmp_path_factory.mktemp("rec") / "run.jsonl"
    return path, _loop(path, norms)


def test_report_of_a_users_records(records, tmp_path, capsys):
    path, probes = records
    out_dir = tmp_path / "rep"
    code, out, err = run(["report", str(path), "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert err == ""
    assert "run.jsonl: 5 probes and 1 events (1 explosions, 0 NaN/inf) up to step 20" in out
    assert "largest gradient norm recorded: 500 (step 12)" in out
    assert "note:" not in out       # step 12 could be judged; the probes' count is not steps
    report = strict_json((out_dir / "report.json").read_text())
    assert report["report"] == "train" and report["settings"]["records"] == [str(path)]
    run_ = report["runs"]["run.jsonl"]
    assert run_["steps"] == 20 and run_["probes"] == 5 and run_["per_step"] is False
    assert run_["explosions"] == 1 and run_["max_grad_norm"] == 500.0
    assert run_["max_grad_norm_step"] == SPIKE and run_["max_grad_norm_judged"] is True
    assert report["records"]["run.jsonl"]["warnings"] == []
    history = strict_json((out_dir / run_["file"]).read_text())
    assert history["probe_step"] == [0, 5, 10, 15, 20] and history["per_step"] is False
    np.testing.assert_array_equal(history["top_exponent"], [p.top_exponent for p in probes])
    assert [e["step"] for e in history["events"]] == [SPIKE]
    assert (out_dir / "training_curves.png").read_bytes()[:8] == PNG
    assert set(json.loads((out_dir / MARKER).read_text())["files"]) == {
        "report.json", "report.md", run_["file"], "training_curves.png"}
    md = (out_dir / "report.md").read_text()
    assert "| run.jsonl | 20 |" in md and "from records: 5 probes and 1 events" in md
    # The --out rules of every command: refused without --force, replaced with it.
    code, out, err = run(["report", str(path), "--out", str(out_dir)], capsys)
    assert_one_line_error(code, out, err, "report")
    assert "pass --force" in err
    code, out, err = run(["report", str(path), "--out", str(out_dir), "--force", "--json"],
                         capsys)
    assert code == 0, err
    assert strict_json(out)["runs"]["run.jsonl"]["steps"] == 20


def test_a_torn_last_line_is_reported_on_stderr(records, tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    shutil.copy(records[0], path)
    with open(path, "ab") as f:             # a writer killed mid-line
        f.write(b'{"type": "probe", "step": 2')
    out_dir = tmp_path / "rep"
    code, out, err = run(["report", str(path), "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert err.startswith("gradpaths report: warning: records: ") and "torn line" in err
    report = strict_json((out_dir / "report.json").read_text())
    (warning,) = report["records"]["run.jsonl"]["warnings"]
    assert "skipped 1 torn line" in warning
    assert report["runs"]["run.jsonl"]["probes"] == 5
    assert "skipped 1 torn line" in (out_dir / "report.md").read_text()


def test_an_unjudged_largest_norm_is_told_by_its_step(tmp_path, capsys):
    """The note on the detector's first steps follows the records' step numbers."""
    path = tmp_path / "early.jsonl"
    pr = gp.Probe(0.5, 0.1, np.zeros(5), np.zeros(5), np.zeros(0), None, None, CELL.routes)
    for step, norm in ((0, 1.0), (2, 900.0), (10, 1.0), (30, 5.0)):
        gp.append_record(path, pr._replace(step=step, grad_norm=norm))
    code, out, err = run(["report", str(path)], capsys)
    assert code == 0, err
    assert ("note: the largest gradient norm (900, step 2) came before the explosion detector "
            "had 5 steps of history") in out
    assert "4 probes and 0 events (0 explosions, 0 NaN/inf) up to step 30" in out
    code, out, err = run(["report", str(path), "--json"], capsys)
    assert code == 0, err
    assert strict_json(out)["early.jsonl"]["probe_step"] == [0, 2, 10, 30]


def test_report_errors(records, tmp_path, capsys):
    code, out, err = run(["report", str(tmp_path / "none.jsonl")], capsys)
    assert_one_line_error(code, out, err, "report")
    assert "records: no such file" in err
    empty = tmp_path / "empty.jsonl"
    gp.append_record(empty, {"step": 0})
    code, out, err = run(["report", str(empty)], capsys)
    assert_one_line_error(code, out, err, "report")
    assert "expected probes or events" in err
    other = tmp_path / "notes.txt"
    other.write_text("mine\n")
    code, out, err = run(["report", str(other)], capsys)
    assert_one_line_error(code, out, err, "report")
    assert "not a gradpaths records file" in err
    code, out, err = run(["report", str(records[0]), str(records[0])], capsys)
    assert_one_line_error(code, out, err, "report")
    assert "expected distinct files" in err


def test_report_of_probes_without_gradient_norms(tmp_path, capsys):
    """gp.probe's grad_norm is optional, and a diverged run records NaN norms: the
    report is written, with the figure and a note, not an internal error."""
    pr = gp.Probe(None, -0.3, np.zeros(5), np.zeros(5), np.zeros(0), None, None, CELL.routes)
    for name, norm in (("bare.jsonl", None), ("nan.jsonl", np.nan)):
        path = tmp_path / name
        for step in (0, 5, 10):
            gp.append_record(path, pr._replace(step=step, grad_norm=norm))
        out_dir = tmp_path / f"rep-{name}"
        code, out, err = run(["report", str(path), "--out", str(out_dir)], capsys)
        assert code == 0, err
        assert "note: no probe or event carries a positive finite gradient norm" in out
        assert (out_dir / "training_curves.png").read_bytes()[:8] == PNG
        report = strict_json((out_dir / "report.json").read_text())
        assert report["runs"][name]["max_grad_norm"] is None
        assert report["runs"][name]["probes"] == 3
        assert ("no probe or event carries a positive finite gradient norm"
                in (out_dir / "report.md").read_text())


def test_hostile_records_files_are_bad_input(tmp_path, capsys):
    """A step beyond int64 and a line nested 100 000 deep: exit 2, the line named."""
    good = {"type": "probe", **gp.Probe(0.5, 0.1, np.zeros(5), np.zeros(5), np.zeros(0), 3,
                                        1.0, CELL.routes).to_dict()}
    event = {"type": "event", "step": 3, "kind": "explosion", "grad_norm": 5.0, "median": 1.0,
             "dominant_route": None, "route_drop": {}, "message": "step 3"}
    header = '{"type": "header", "format": "gradpaths.records/1"}'
    lines = {"big-probe": (json.dumps({**good, "step": 2**70}), "expected an int below 2**63"),
             "big-event": (json.dumps({**event, "step": 2**70}), "expected an int below 2**63"),
             "float-step": (json.dumps({**event, "step": 1.5}), "step: expected an int"),
             "bad-route": (json.dumps({**event, "dominant_route": ["o"]}), "dominant_route"),
             "deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
             "deep-data": ('{"type": "data", "data": ' + "[" * 100_000 + "]" * 100_000 + "}",
                           "nested too deeply")}
    for name, (line, why) in lines.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join([header, json.dumps(good), line, ""]))
        code, out, err = run(["report", str(path)], capsys)
        assert_one_line_error(code, out, err, "report")
        assert f"{name}.jsonl' line 3 is damaged" in err and why in err, err


def test_the_same_file_twice_is_refused(records, tmp_path, capsys, monkeypatch):
    """``a.jsonl ./a.jsonl`` (or a link to it) would compare a file with itself."""
    path = records[0]
    monkeypatch.chdir(path.parent)
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    for twice in (["run.jsonl", "./run.jsonl"], [str(path), str(link)],
                  ["run.jsonl", f"../{path.parent.name}/run.jsonl"]):
        code, out, err = run(["report", *twice], capsys)
        assert_one_line_error(code, out, err, "report")
        assert f"{twice[0]!r} and {twice[1]!r} are the same file" in err
