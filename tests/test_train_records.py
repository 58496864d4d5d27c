"""JSON-lines records: appended whole, never truncated, torn lines skipped with a
warning, corruption elsewhere refused."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import gradpaths as gp

PROBE = gp.Probe(0.5, -0.25, np.array([0.1, -np.inf]), np.array([np.nan, 0.2]),
                 np.array([0.0, 1.0, 0.5]), 10, 3.0, ("carousel", "o"), ("i", "f", "o"))
EVENT = gp.Event(12, "explosion", 40.0, 2.0, "o", {"carousel": -np.inf, "o": 0.3},
                 "step 12: gradient norm 40 is 20 x the running median 2; dominant route 'o'")


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, gp.Probe):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    else:
        assert json.dumps(a.to_dict() if isinstance(a, gp.Event) else a) == json.dumps(
            b.to_dict() if isinstance(b, gp.Event) else b)


def test_records_round_trip(tmp_path):
    path = tmp_path / "run.jsonl"
    written = [PROBE, EVENT, {"step": 13, "lr": np.float32(0.5), "note": "mine"},
               PROBE._replace(step=20, loss=None, grad_norm=None)]
    for r in written:
        gp.append_record(path, r)
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b'{"type": "header", "format": "gradpaths.records/1"}'
    assert len(lines) == 6 and lines[-1] == b""        # header, 4 records, final newline
    assert all(json.loads(line) for line in lines[:-1])
    assert json.loads(lines[1])["route_exponents"] == [0.1, "-inf"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = gp.read_records(path)
    for a, b in zip(back, written[:2], strict=False):
        _same(a, b)
    assert back[2] == {"step": 13, "lr": 0.5, "note": "mine"}
    assert back[3].loss is None and back[3].grad_norm is None and back[3].step == 20
    h = gp.History.from_records(back)
    np.testing.assert_array_equal(h.probe_step, [10, 20])
    assert h.explosions == [EVENT]


def test_a_torn_last_line_is_skipped_and_the_next_writer_appends_after_it(tmp_path):
    path = tmp_path / "run.jsonl"
    gp.append_record(path, PROBE)
    gp.append_record(path, EVENT)
    whole = path.read_bytes()
    line = whole.split(b"\n")[2]
    with open(path, "ab") as f:     # a writer that died mid-line
        f.write(line[:17])
    torn = path.read_bytes()
    with pytest.warns(gp.RecordWarning, match=r"skipped 1 torn line\(s\) .* at line\(s\) 4"):
        back = gp.read_records(path)
    assert len(back) == 2 and back[1].step == 12
    # The next writer keeps the torn bytes, closes them and marks them, then appends.
    gp.append_record(path, PROBE._replace(step=30))
    after = path.read_bytes()
    assert after.startswith(torn)                       # never truncated or rewritten
    assert after[len(torn):].split(b"\n")[:2] == [b"", b'{"type": "torn", "length": 17}']
    with pytest.warns(gp.RecordWarning, match=r"at line\(s\) 4"):
        back = gp.read_records(path)
    assert [r.step for r in back] == [10, 12, 30]
    gp.append_record(path, EVENT)                      # no second marker once closed
    with pytest.warns(gp.RecordWarning, match=r"skipped 1 torn"):
        assert [r.step for r in gp.read_records(path)] == [10, 12, 30, 12]


def test_a_torn_header_and_an_empty_file(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b'{"type": "hea')             # the very first write was cut
    with pytest.warns(gp.RecordWarning, match="line\\(s\\) 1"):
        assert gp.read_records(path) == []
    gp.append_record(path, PROBE)
    with pytest.warns(gp.RecordWarning):
        (back,) = gp.read_records(path)
    assert back.step == 10
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert gp.read_records(empty) == []
    gp.append_record(empty, EVENT)
    assert gp.read_records(empty)[0].step == 12


def test_corruption_elsewhere_is_refused_and_other_files_are_never_touched(tmp_path):
    path = tmp_path / "run.jsonl"
    for r in (PROBE, EVENT, PROBE):
        gp.append_record(path, r)
    lines = path.read_bytes().split(b"\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([*lines[:2], lines[2][:-5], *lines[3:]]))
    with pytest.raises(ValueError, match=r"bad.jsonl' line 3 is damaged \(not JSON"):
        gp.read_records(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_bytes(b"\n".join([*lines[:2], lines[2].replace(b'"kind": "explosion"',
                                                               b'"kind": "boom"'), b""]))
    with pytest.raises(ValueError, match=r"line 3 is damaged .*kind: expected one of"):
        gp.read_records(wrong)
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    with pytest.raises(ValueError, match="is not a gradpaths records file .* never appended"):
        gp.append_record(mine, PROBE)
    assert mine.read_text() == "my notes\n"
    with pytest.raises(ValueError, match="line 1: expected the gradpaths.records/1 header"):
        gp.read_records(mine)
    with pytest.raises(ValueError, match="records: no such file"):
        gp.read_records(tmp_path / "none.jsonl")
    with pytest.raises(TypeError, match="record: expected a gradpaths.Probe, a gradpaths.Event"):
        gp.append_record(path, [1, 2])
    with pytest.raises(TypeError, match=r"record: expected string keys \(JSON's\), got tuple"):
        gp.append_record(path, {(1, 2): 3.0})
    with pytest.raises(ValueError, match="records: the folder .* does not exist"):
        gp.append_record(tmp_path / "nodir" / "run.jsonl", PROBE)
    assert path.read_bytes() == b"\n".join(lines)    # refused records leave no trace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "notes.txt", "run.jsonl",
                                                          "wrong.jsonl"]   # no temporary file


@pytest.mark.parametrize("round_", range(5))
def test_writers_at_the_same_time_never_interleave(tmp_path, round_):
    """Four threads append 50 records each to one file (``os.write`` releases the GIL):
    every line is whole and every record is there once. Without the writers' lock, a
    writer that reads the tail while another's line is half written takes it for a
    torn line (measured: every one of 30 such files damaged; with the lock, none)."""
    import threading

    path = tmp_path / "run.jsonl"

    def write(k):
        for i in range(50):
            gp.append_record(path, {"writer": k, "i": i, "pad": "x" * 2000}, fsync=False)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = gp.read_records(path)
    assert sorted((r["writer"], r["i"]) for r in back) == [(k, i) for k in range(4)
                                                           for i in range(50)]


def test_a_records_file_is_plotted(tmp_path):
    path = tmp_path / "run.jsonl"
    for step in (0, 10, 20):
        gp.append_record(path, PROBE._replace(step=step, grad_norm=1.0 + step))
    gp.append_record(path, EVENT)
    fig = gp.plot.training_curves(gp.History.from_records(gp.read_records(path)))
    ax_grad, ax_exp = fig.axes[1], fig.axes[2]
    np.testing.assert_array_equal(ax_exp.lines[0].get_xdata(), [0, 10, 20])
    np.testing.assert_array_equal(ax_exp.lines[0].get_ydata(), [-0.25] * 3)
    assert any("explosions: 1" in t.get_text() for t in ax_grad.get_legend().get_texts())


def test_errors_are_input_errors(tmp_path):
    """Bad records and files are gradpaths input errors (the command line's exit 2)."""
    with pytest.raises(gp.InputTypeError, match="record: expected JSON-safe values, got object"):
        gp.append_record(tmp_path / "run.jsonl", {"x": object()})
    with pytest.raises(gp.InputError, match="records: no such file"):
        gp.read_records(tmp_path / "run.jsonl")


def test_a_resume_marker_drops_the_abandoned_steps(tmp_path):
    """Records of steps >= t written before a resume marker at t are dropped; the
    others (and records without a step) are kept, and the file is never cut."""
    from gradpaths._train import mark_resume

    path = tmp_path / "run.jsonl"
    for step in (0, 10, 20):
        gp.append_record(path, PROBE._replace(step=step))
    gp.append_record(path, EVENT)                                   # step 12
    gp.append_record(path, {"step": 15, "mine": 1})
    gp.append_record(path, {"mine": 2})
    mark_resume(path, 12)
    gp.append_record(path, PROBE._replace(step=20, top_exponent=0.5))
    size = path.stat().st_size
    back = gp.read_records(path)
    assert [(type(r).__name__, r.step if not isinstance(r, dict) else r.get("step"))
            for r in back] == [("Probe", 0), ("Probe", 10), ("dict", None), ("Probe", 20)]
    assert back[-1].top_exponent == 0.5 and path.stat().st_size == size
    with pytest.raises(ValueError, match="step: expected an int >= 0, got -1"):
        mark_resume(path, -1)
    with open(path, "a") as f:
        f.write('{"type": "resume", "step": "x"}\n')
    with pytest.raises(ValueError, match="line 10 is damaged"):
        gp.read_records(path)


def test_one_rule_for_non_finite_numbers_of_every_type(tmp_path):
    """NaN and infinities are the strings 'nan', 'inf', '-inf' whatever their type
    (Python, numpy, JAX; alone, in lists, in arrays), in a mapping as in a probe."""
    import jax.numpy as jnp

    path = tmp_path / "run.jsonl"
    record = {"py": float("nan"), "f64": np.float64("inf"), "f32": np.float32("nan"),
              "jax": jnp.array(-np.inf), "list": [float("inf"), 1.5], "array": np.array(
                  [np.nan, 2.0], np.float32), "nested": {"loss": float("-inf")},
              "int": np.int64(3), "flag": True, "none": None}
    gp.append_record(path, record)
    (back,) = gp.read_records(path)
    assert back == {"py": "nan", "f64": "inf", "f32": "nan", "jax": "-inf",
                    "list": ["inf", 1.5], "array": ["nan", 2.0], "nested": {"loss": "-inf"},
                    "int": 3, "flag": True, "none": None}
    assert json.loads(path.read_bytes().split(b"\n")[1])["data"] == back


def test_records_that_cannot_be_read_back_are_refused(tmp_path):
    """Keys that JSON would turn into strings, a folder, a circular or too deep mapping, a
    step beyond int64: clear errors, and nothing written."""
    from gradpaths._train import MAX_DEPTH, mark_resume

    path = tmp_path / "run.jsonl"
    gp.append_record(path, {"step": 0})
    size = path.stat().st_size
    with pytest.raises(gp.InputTypeError, match=r"string keys .* got tuple \(1, 2\) at \['a'\]"):
        gp.append_record(path, {"a": {(1, 2): 3.0}})
    with pytest.raises(gp.InputTypeError, match="string keys .* got int 0"):
        gp.append_record(path, {0: 1.0})
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(gp.InputError, match=r"circular reference at \['self'\]"):
        gp.append_record(path, loop)
    deep: list = []
    for _ in range(MAX_DEPTH - 1):         # MAX_DEPTH lists, in the record: one too many
        deep = [deep]
    with pytest.raises(gp.InputError, match=f"at most {MAX_DEPTH} levels of nested lists"):
        gp.append_record(path, {"deep": deep})
    gp.append_record(path, {"deep": deep[0]})            # the deepest allowed reads back
    assert gp.read_records(path)[-1] == {"deep": deep[0]}
    size = path.stat().st_size
    with pytest.raises(gp.InputError, match="record.step: expected an int below 2\\*\\*63"):
        gp.append_record(path, PROBE._replace(step=2**70))
    with pytest.raises(gp.InputError, match="step: expected an int below 2\\*\\*63"):
        mark_resume(path, 2**63)
    assert path.stat().st_size == size
    with pytest.raises(gp.InputError, match="is a folder; expected a file path"):
        gp.append_record(tmp_path, PROBE)
    with pytest.raises(gp.InputError, match="is a folder; expected a file path"):
        gp.read_records(tmp_path)


def test_hostile_lines_are_damaged_lines(tmp_path):
    """A step beyond int64, a line nested 100 000 deep, numbers beyond the float range:
    an InputError naming the line, never an OverflowError or a RecursionError."""
    path = tmp_path / "run.jsonl"
    gp.append_record(path, PROBE)
    good = path.read_text()
    probe = json.loads(good.splitlines()[1])
    for line, why in ((json.dumps({**probe, "step": 2**70}), "expected an int below 2\\*\\*63"),
                      (json.dumps({**probe, "loss": 10**400}), "float range"),
                      ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                      (json.dumps({"type": "resume", "step": 2**64}), "below 2\\*\\*63")):
        path.write_text(good + line + "\n" + good.splitlines()[1] + "\n")
        with pytest.raises(gp.InputError, match=f"line 3 is damaged .*{why}"):
            gp.read_records(path)
