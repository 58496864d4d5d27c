"""Synthetic tasks (adding, copy, sine) and the cell + readout model."""

from __future__ import annotations

import hashlib
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import gradpaths as gp

KEY = jax.random.key(0)


@pytest.mark.parametrize("name, length, m, k", [("adding", 9, 2, 1), ("copy", 12, 10, 9),
                                                ("sine", 7, 1, 1),
                                                ("text", 8, 97, 97)])
def test_shapes_weights_and_seeds(name, length, m, k):
    task = gp.make_task(name, length, **({"n_copy": 3} if name == "copy" else {}))
    assert (task.length, task.input_size, task.output_size) == (length, m, k)
    b = task.sample(KEY, 5)
    assert b.xs.shape == (5, length, m) and b.xs.dtype == jnp.float64
    if task.loss == "mse":
        assert b.targets.shape == (5, length, k)
    else:
        assert b.targets.shape == (5, length) and jnp.issubdtype(b.targets.dtype, jnp.integer)
    assert b.weights.shape == (length,)
    assert_close(jnp.sum(b.weights), 1.0)
    again = task.sample(KEY, 5)
    other = task.sample(jax.random.key(1), 5)
    np.testing.assert_array_equal(again.xs, b.xs)
    assert not np.array_equal(other.xs, b.xs)
    assert task.sample(KEY, 2, jnp.float32).xs.dtype == jnp.float32


def test_adding_structure():
    T = 10
    b = gp.make_task("adding", T).sample(KEY, 200)
    values, marks = np.asarray(b.xs[..., 0]), np.asarray(b.xs[..., 1])
    assert np.all((values >= 0) & (values < 1))
    np.testing.assert_array_equal(marks[:, : T // 2].sum(1), 1)
    np.testing.assert_array_equal(marks[:, T // 2:].sum(1), 1)
    assert_close(b.targets[:, -1, 0], (values * marks).sum(1))
    np.testing.assert_array_equal(b.targets[:, :-1], 0)
    np.testing.assert_array_equal(b.weights, np.eye(T)[-1])


def test_copy_structure():
    task = gp.make_task("copy", 11, n_symbols=4, n_copy=3)
    b = task.sample(KEY, 50)
    tokens = np.argmax(np.asarray(b.xs), -1)
    np.testing.assert_array_equal(np.asarray(b.xs).sum(-1), 1)      # one-hot
    symbols = tokens[:, :3]
    assert np.all((symbols >= 1) & (symbols <= 4))
    np.testing.assert_array_equal(tokens[:, 3:7], 0)
    np.testing.assert_array_equal(tokens[:, 7], 5)                 # delimiter
    np.testing.assert_array_equal(tokens[:, 8:], 0)
    np.testing.assert_array_equal(b.targets[:, :8], 0)
    np.testing.assert_array_equal(b.targets[:, 8:], symbols)


def test_sine_targets_are_the_next_input():
    b = gp.make_task("sine", 8, omega_min=0.2, omega_max=0.3).sample(KEY, 6)
    assert_close(b.targets[:, :-1, 0], b.xs[:, 1:, 0])
    steps = np.diff(np.arcsin(np.clip(np.asarray(b.xs[:, :2, 0]), -1, 1)), axis=1)
    assert np.all(np.abs(steps) <= 0.3 + 1e-9)   # consecutive values within the max frequency


def test_baselines():
    # Adding: predicting 1 scores Var(u_a + u_b) = 1/6 (statistical check, 40k sums).
    adding = gp.make_task("adding", 6)
    b = adding.sample(KEY, 40_000)
    mse = float(jnp.mean((b.targets[:, -1, 0] - 1.0) ** 2))
    assert abs(mse - adding.baseline) < 0.005 and adding.baseline == 1 / 6
    # Copy: blanks until the delimiter, then uniform over the symbols, exactly.
    copy = gp.make_task("copy", 13, n_symbols=5, n_copy=4)
    b = copy.sample(KEY, 3)
    blank, uniform = jnp.array([30.0] + [0.0] * 5), jnp.array([-30.0] + [0.0] * 5)
    logits = jnp.stack([blank] * 9 + [uniform] * 4)
    cells_model = gp.Model(gp.RNN(copy.input_size, 1), copy.output_size, "xent")
    per_step = jax.vmap(lambda y, t: gp._tasks.step_loss("xent", y, t))
    losses = jnp.stack([jnp.sum(b.weights * per_step(logits, tg)) for tg in b.targets])
    assert_close(losses, np.full(3, copy.baseline))
    assert math.isclose(copy.baseline, 4 * math.log(5) / 13)
    assert cells_model.loss == "xent"
    # Sine: predicting 0 scores E[sin^2] = 1/2.
    sine = gp.make_task("sine", 5)
    b = sine.sample(KEY, 20_000)
    assert abs(float(jnp.mean(b.targets**2)) - sine.baseline) < 0.01


def test_bad_tasks():
    with pytest.raises(ValueError, match="task: expected one of 'adding', 'copy', 'sine'"):
        gp.make_task("parity", 10)
    with pytest.raises(ValueError, match="length: expected an int >= 1, got 0"):
        gp.make_task("sine", 0)
    with pytest.raises(ValueError, match="length: expected an int >= 1, got -3"):
        gp.make_task("adding", -3)
    with pytest.raises(TypeError, match="length: expected an int"):
        gp.make_task("adding", 10.0)
    with pytest.raises(ValueError, match="expected >= 2 for the adding task"):
        gp.make_task("adding", 1)
    with pytest.raises(ValueError, match=r"expected >= 2 \* n_copy \+ 1 = 11"):
        gp.make_task("copy", 10)
    with pytest.raises(ValueError, match="n_copy: expected an int >= 1"):
        gp.make_task("copy", 10, n_copy=0)
    with pytest.raises(TypeError, match=r"options: task 'sine' accepts \['omega_min'"):
        gp.make_task("sine", 10, n_copy=3)
    with pytest.raises(ValueError, match="omega_min, omega_max"):
        gp.make_task("sine", 10, omega_min=0.5, omega_max=0.1)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        gp.make_task("adding", 4).sample(KEY, 0)


def test_model_loss_matches_a_plain_loop():
    task = gp.make_task("adding", 5)
    model = gp.Model.for_task(gp.GRU(2, 4), task)
    params = model.init(jax.random.key(3))
    assert params.readout.W.shape == (1, 4) and params.readout.b.shape == (1,)
    b = task.sample(KEY, 3)
    step = jax.jit(model.cell.step)
    W, bias, weights = (np.asarray(a) for a in (*params.readout, b.weights))
    expected = []
    for xs, targets in zip(np.asarray(b.xs), np.asarray(b.targets), strict=True):
        state, total = model.cell.initial_state(), 0.0
        for t in range(5):
            state = step(params.cell, state, xs[t])
            y = W @ np.asarray(state.h) + bias
            total += weights[t] * np.mean((y - targets[t]) ** 2)
        expected.append(total)
    assert_close(model.batch_loss(params, b), np.mean(expected))
    assert_close(jax.jit(model.batch_loss)(params, b), np.mean(expected))


def test_model_checks():
    task = gp.make_task("copy", 9, n_copy=2)
    with pytest.raises(ValueError, match="cell: expected input_size 10"):
        gp.Model.for_task(gp.LSTM(3, 4), task)
    with pytest.raises(ValueError, match="loss: expected one of 'mse', 'xent'"):
        gp.Model(gp.LSTM(3, 4), 2, "l1")
    with pytest.raises(ValueError, match="output_size: expected an int >= 1"):
        gp.Model(gp.LSTM(3, 4), 0)
    with pytest.raises(TypeError, match="cell: expected an object with step"):
        gp.Model("lstm", 2)
    with pytest.raises(TypeError, match="task: expected a task"):
        gp.Model.for_task(gp.LSTM(3, 4), "adding")
    model = gp.Model.for_task(gp.LSTM(10, 4), task)
    assert (model.output_size, model.loss) == (9, "xent")
    params = model.init(jax.random.key(0), dtype=jnp.float32, forget_bias=2.0)
    assert params.readout.W.dtype == jnp.float32
    assert_close(params.cell.b.f, np.full(4, 2.0))
    with pytest.raises(ValueError, match=r"params.readout.W: expected shape \(9, 4\)"):
        model.check_params(params._replace(readout=gp.Readout(jnp.ones((9, 5)), jnp.ones(9))))


# --------------------------------------------------------------------------- text


def test_text_corpus_is_deterministic_and_its_split_fixed():
    from gradpaths import _tasks

    task = gp.make_task("text", 50)
    corpus = np.array(task.corpus)
    _tasks.read_corpus.cache_clear()              # read the files again
    again = gp.make_task("text", 50)
    assert again.corpus.tobytes() == corpus.tobytes() and again.checksum == task.checksum
    assert task.checksum == hashlib.sha256(corpus.tobytes()).hexdigest()
    assert task.python == "{}.{}.{}".format(*sys.version_info[:3])
    n = len(corpus)
    assert task.split == round(0.9 * n)
    np.testing.assert_array_equal(np.concatenate([task.train_text, task.validation_text]), corpus)
    assert not task.corpus.flags.writeable


def test_text_corpus_starts_with_the_first_modules_docstring():
    import abc
    import inspect

    task = gp.make_task("text", 10)
    doc = inspect.getdoc(abc)                     # abc is first in TEXT_MODULES
    assert task.modules[0] == "abc" and doc
    assert task.decode(task.corpus[: len(doc) + 2]) == doc + "\n\n"


def test_text_alphabet_round_trip():
    task = gp.make_task("text", 10)
    text = "Return x.\n  ~{}\tλ"
    codes = gp._tasks.encode_text(text)
    assert task.input_size == task.output_size == len(task.alphabet) == 97
    np.testing.assert_array_equal(codes[-2:], [96, 96])      # tab and lambda: unknown
    assert task.decode(codes) == text[:-2] + "\N{REPLACEMENT CHARACTER}" * 2


def test_text_batches_are_windows_of_the_training_text():
    task = gp.make_task("text", 30)
    sources = [(task.sample(KEY, 6), task.train_text), (task.validation(4), task.validation_text)]
    for batch, text in sources:
        xs, targets = np.asarray(batch.xs), np.asarray(batch.targets)
        np.testing.assert_array_equal(xs.sum(-1), 1)                      # one-hot
        chars = np.concatenate([np.argmax(xs, -1), targets[:, -1:]], axis=1)
        np.testing.assert_array_equal(chars[:, 1:], targets)               # next character
        assert_close(batch.weights, np.full(30, 1 / 30))
        windows = [bytes(w.astype(np.uint8)) for w in chars]
        assert all(w in text.tobytes() for w in windows)
    v1, v2 = task.validation(4), task.validation(4, jnp.float32)
    np.testing.assert_array_equal(v1.targets, v2.targets)                  # fixed windows
    assert v2.xs.dtype == jnp.float32
    first = task.validation_text[:31]
    np.testing.assert_array_equal(v1.targets[0], first[1:])                 # starts at 0


def test_text_baseline_is_the_unigram_loss():
    task = gp.make_task("text", 10)
    counts = np.bincount(task.train_text, minlength=97).astype(np.float64)
    with np.errstate(divide="ignore"):
        logp = jnp.asarray(np.log(counts / counts.sum()))      # -inf for absent symbols
    # The xent step loss of the unigram prediction, averaged over the training text.
    present = np.nonzero(counts)[0]
    losses = jax.vmap(lambda a: gp._tasks.step_loss("xent", logp, a))(jnp.asarray(present))
    mean = np.sum(counts[present] * np.asarray(losses)) / counts.sum()
    assert_close(task.baseline, mean)
    assert 2.5 < task.baseline < math.log(97)


@pytest.mark.parametrize("options, error, match", [
    ({"modules": ("no_such_module_xyz",)}, ValueError, "no_such_module_xyz"),
    ({"modules": "abc"}, TypeError, "modules"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"modules": ("string",), "validation_fraction": 0.5}, ValueError, "length: expected at most"),
])
def test_text_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        gp.make_task("text", 1000, **options)
