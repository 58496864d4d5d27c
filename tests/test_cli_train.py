"""``gradpaths train``: training runs, their reports, and Ctrl-C."""

from __future__ import annotations

import numpy as np
from cli_helpers import PNG, assert_one_line_error, run, strict_json

import gradpaths as gp


def test_train_default(capsys):
    code, out, err = run(["train", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    assert list(data) == ["no clipping"]
    h = data["no clipping"]
    assert h["step"] == list(range(300))
    assert len(h["loss"]) == 300 and h["routes"] == ["carousel", "z", "i", "f", "o"]
    assert not any(h["clipped"])


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


def test_train_records_then_report(tmp_path, capsys):
    """--records writes the run's probes and events as they happen; gradpaths report
    reads them back: the same probes as the run's history."""
    path = tmp_path / "run.jsonl"
    code, out, err = run(["train", "--steps", "12", "--probe-every", "5", "--records",
                          str(path), "--json"], capsys)
    assert code == 0, err
    h = gp.History.from_dict(strict_json(out)["no clipping"])
    records = gp.read_records(path)
    assert [r.to_dict() for r in records] == [r.to_dict() for r in h.records()]
    assert [r.step for r in records if isinstance(r, gp.Probe)] == [0, 5, 10, 12]
    code, out, err = run(["report", str(path), "--json"], capsys)
    assert code == 0, err
    back = strict_json(out)["run.jsonl"]
    assert back["probe_step"] == [0, 5, 10, 12] and back["top_exponent"] == [
        gp.Probe.to_dict(r)["top_exponent"] for r in records if isinstance(r, gp.Probe)]
    # An existing file is never appended to by a new run; one run per file. The advice
    # is the command line's own (it has no resume=True: no checkpoint to resume from).
    for extra in ([], ["--compare"]):
        code, out, err = run(["train", "--steps", "12", "--records", str(path), *extra],
                             capsys)
        assert_one_line_error(code, out, err, "train")
        assert (f"--records: {str(path)!r} exists; choose another path, or move the file away"
                if not extra else "expected one run") in err
        assert "resume" not in err
