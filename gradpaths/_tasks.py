r"""Sequence tasks (synthetic, and real text) and the model trained on them.

A task draws batches from an explicit PRNG key (no downloads, no hidden state):
``task.sample(key, batch_size) -> Batch(xs, targets, weights)`` with inputs ``xs``
(B, T, m), targets (B, T, k) for a regression task or (B, T) class indices for a
classification task, and step weights ``w`` (T,) summing to 1. The loss of a batch is

.. math::

    L = \frac{1}{B} \sum_b \sum_t w_t \, \ell(y_{b,t}, \mathrm{target}_{b,t}),

with ``\ell`` the squared error (``"mse"``, averaged over outputs) or the
cross-entropy of logits (``"xent"``). Each task knows its trivial ``baseline``: the
loss of the best predictor that ignores what must be remembered.

A :class:`Model` is a cell with a linear readout from its output ``h``:
``y_t = W_out h_{t+1} + b_out`` (``h_{t+1}`` is the state after reading ``x_t``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import math
import os
import sys
import sysconfig
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._inputs import is_builtin
from gradpaths._protocols import Cell
from gradpaths._state import output

Array = jax.Array
LOSSES = ("mse", "xent")


class Batch(NamedTuple):
    """A batch of sequences.

    Attributes:
      xs: inputs, (B, T, m).
      targets: (B, T, k) floats for ``loss="mse"``; (B, T) int class indices for ``"xent"``.
      weights: (T,) step weights, non-negative, summing to 1 (which steps are scored).
    """

    xs: Array
    targets: Array
    weights: Array


def _check_sample_args(batch_size: Any, dtype: Any) -> tuple[int, Any]:
    return _checks.check_positive_int(batch_size, "batch_size"), _checks.resolve_dtype(dtype)


def _jitted_sample(sample: Any) -> Any:
    """``task.sample`` compiled as one program per (task, batch_size, dtype): called
    eagerly it would compile each random and indexing op on its own."""
    return functools.partial(jax.jit, static_argnums=(0, 2, 3))(sample)


def _last_step(length: int, dtype: Any) -> Array:
    return jnp.zeros((length,), dtype).at[-1].set(1.0)


@dataclasses.dataclass(frozen=True)
class AddingTask:
    r"""The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015).

    Input channel 0 holds values ``u_t ~ U(0, 1)``, channel 1 marks two steps with 1:
    one in the first half, one in the second. At the last step the target is the sum
    of the two marked values; only the last step is scored (squared error).
    Baseline: predicting 1 always scores ``Var(u_a + u_b) = 1/6``.

    Args:
      length: T, the sequence length (>= 2).
    """

    length: int
    name = "adding"
    loss = "mse"
    input_size = 2
    output_size = 1

    def __post_init__(self) -> None:
        _checks.check_positive_int(self.length, "length")
        if self.length < 2:
            raise InputError(f"length: expected >= 2 for the adding task, got {self.length}")

    @property
    def baseline(self) -> float:
        return 1.0 / 6.0

    @_jitted_sample
    def sample(self, key: Array, batch_size: int, dtype: Any = None) -> Batch:
        batch_size, dtype = _check_sample_args(batch_size, dtype)
        T, half = self.length, self.length // 2
        # One draw for everything (random bits are slow to compile on CPU).
        u = jax.random.uniform(key, (batch_size, T + 2), dtype)
        values = u[:, :T]
        first = jnp.minimum(jnp.floor(u[:, T] * half), half - 1).astype(jnp.int32)
        second = half + jnp.minimum(jnp.floor(u[:, T + 1] * (T - half)), T - half - 1).astype(
            jnp.int32)
        steps = jnp.arange(T)[None, :]
        marks = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
        total = jnp.sum(values * marks, axis=1)
        targets = jnp.zeros((batch_size, T, 1), dtype).at[:, -1, 0].set(total)
        xs = jnp.stack([values, marks], axis=-1)
        return Batch(xs, targets, _last_step(T, dtype))


@dataclasses.dataclass(frozen=True)
class CopyTask:
    r"""Copy memory (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016).

    A sequence of ``length`` steps: ``n_copy`` random symbols from ``1..n_symbols``,
    blanks (0), a delimiter (``n_symbols + 1``) at step ``length - n_copy - 1``, then
    ``n_copy`` blanks during which the symbols must be reproduced in order. Inputs
    are one-hot (``m = n_symbols + 2``); outputs are logits over blank and symbols
    (``k = n_symbols + 1``); every step is scored (cross-entropy, mean over steps).
    The delay between a symbol and its copy is ``length - n_copy``.
    Baseline: blanks until the delimiter, then uniform guesses:
    ``n_copy log(n_symbols) / length``.

    Args:
      length: total sequence length (>= 2 n_copy + 1).
      n_symbols: alphabet size (default 8).
      n_copy: number of symbols to copy (default 5).
    """

    length: int
    n_symbols: int = 8
    n_copy: int = 5
    name = "copy"
    loss = "xent"

    def __post_init__(self) -> None:
        _checks.check_positive_int(self.length, "length")
        _checks.check_positive_int(self.n_symbols, "n_symbols")
        _checks.check_positive_int(self.n_copy, "n_copy")
        if self.length < 2 * self.n_copy + 1:
            raise InputError(
                f"length: expected >= 2 * n_copy + 1 = {2 * self.n_copy + 1} for the copy task "
                f"with n_copy={self.n_copy}, got {self.length}"
            )

    @property
    def input_size(self) -> int:
        return self.n_symbols + 2

    @property
    def output_size(self) -> int:
        return self.n_symbols + 1

    @property
    def baseline(self) -> float:
        return self.n_copy * math.log(self.n_symbols) / self.length

    @_jitted_sample
    def sample(self, key: Array, batch_size: int, dtype: Any = None) -> Batch:
        batch_size, dtype = _check_sample_args(batch_size, dtype)
        T, K, A = self.length, self.n_copy, self.n_symbols
        symbols = jax.random.randint(key, (batch_size, K), 1, A + 1)
        blank_in = jnp.zeros((batch_size, T - K), symbols.dtype)
        tokens = jnp.concatenate([symbols, blank_in], axis=1).at[:, T - K - 1].set(A + 1)
        targets = jnp.concatenate([jnp.zeros((batch_size, T - K), symbols.dtype), symbols], 1)
        xs = jax.nn.one_hot(tokens, A + 2, dtype=dtype)
        return Batch(xs, targets, jnp.full((T,), 1.0 / T, dtype))


@dataclasses.dataclass(frozen=True)
class SineTask:
    r"""Next-step prediction of a sine wave of unknown frequency and phase.

    ``x_t = sin(omega t + phi)`` with ``omega ~ U(omega_min, omega_max)`` and
    ``phi ~ U(0, 2 pi)`` per sequence; the target at step t is ``x_{t+1}``, every
    step is scored (squared error, mean over steps). The model must infer ``omega``
    and the phase from what it has seen. Baseline: predicting 0 scores
    ``E[sin^2] = 1/2``.

    Args:
      length: T, the sequence length (>= 1).
      omega_min, omega_max: the frequency range, radians per step.
    """

    length: int
    omega_min: float = 0.1
    omega_max: float = 0.6
    name = "sine"
    loss = "mse"
    input_size = 1
    output_size = 1

    def __post_init__(self) -> None:
        _checks.check_positive_int(self.length, "length")
        if not 0 < self.omega_min <= self.omega_max:
            raise InputError(
                "omega_min, omega_max: expected 0 < omega_min <= omega_max, got "
                f"{self.omega_min}, {self.omega_max}"
            )

    @property
    def baseline(self) -> float:
        return 0.5

    @_jitted_sample
    def sample(self, key: Array, batch_size: int, dtype: Any = None) -> Batch:
        batch_size, dtype = _check_sample_args(batch_size, dtype)
        T = self.length
        u = jax.random.uniform(key, (batch_size, 2), dtype)
        omega = self.omega_min + (self.omega_max - self.omega_min) * u[:, :1]
        phi = 2 * math.pi * u[:, 1:]
        wave = jnp.sin(omega * jnp.arange(T + 1, dtype=dtype)[None, :] + phi)
        return Batch(wave[:, :-1, None], wave[:, 1:, None], jnp.full((T,), 1.0 / T, dtype))


# --------------------------------------------------------------------------- text

#: The standard-library modules whose docstrings make the text corpus, in this order.
#: Pure-Python modules present in every CPython 3.10+ installation.
TEXT_MODULES: tuple[str, ...] = (
    "abc", "argparse", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json",
    "logging", "os", "pathlib", "pickle", "random", "shutil", "statistics", "string",
    "subprocess", "tempfile", "textwrap", "threading", "typing", "unittest", "zipfile",
)
#: The text alphabet: newline, then printable ASCII (space to ``~``); every other
#: character becomes the unknown symbol, index ``len(TEXT_ALPHABET)``.
TEXT_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = "\N{REPLACEMENT CHARACTER}"


def _module_source(name: str) -> str:
    """The path of the standard-library source file of module ``name``."""
    base = os.path.join(sysconfig.get_path("stdlib"), *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    raise InputError(
        f"modules: expected standard-library modules with Python source, got {name!r} "
        f"(no {base}.py or {base}/__init__.py; the text task reads the installed "
        "standard library's source)")


def _docstrings(tree: ast.AST) -> list[str]:
    """The docstrings of a module, its classes and functions, in source order (cleaned
    as ``inspect.cleandoc`` does)."""
    out = []
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            out.append(doc)
    for child in ast.iter_child_nodes(tree):
        out.extend(_docstrings(child))
    return out


def encode_text(text: str) -> np.ndarray:
    """Symbol indices (uint8) of ``text`` in :data:`TEXT_ALPHABET`; any other character
    is the unknown symbol ``len(TEXT_ALPHABET)``."""
    table = np.full(128, len(TEXT_ALPHABET), np.uint8)
    table[[ord(ch) for ch in TEXT_ALPHABET]] = np.arange(len(TEXT_ALPHABET), dtype=np.uint8)
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return np.where(codes < 128, table[np.minimum(codes, 127)], len(TEXT_ALPHABET)).astype(
        np.uint8)


def decode_text(symbols: Any) -> str:
    """The text of symbol indices (the unknown symbol shown as U+FFFD)."""
    chars = TEXT_ALPHABET + UNKNOWN
    return "".join(chars[int(k)] for k in np.asarray(symbols).ravel())


@functools.lru_cache(maxsize=4)
def read_corpus(modules: tuple[str, ...]) -> np.ndarray:
    """The corpus of :class:`TextTask`: the docstrings of ``modules`` (read from the
    installed source with ``ast``, in source order, module after module), joined by a
    blank line, encoded by :func:`encode_text`. Read-only uint8 array (N,)."""
    texts = []
    for name in modules:
        path = _module_source(name)
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
        except (OSError, UnicodeDecodeError, SyntaxError) as err:
            raise InputError(f"modules: could not read the docstrings of {name!r} from "
                             f"{path}: {err}") from err
        texts.extend(_docstrings(tree))
    corpus = encode_text("\n\n".join(texts))
    corpus.flags.writeable = False
    return corpus


@dataclasses.dataclass(frozen=True)
class TextTask:
    r"""Character-level language modelling of real English text, with no download.

    The corpus is the docstrings of the standard-library modules ``modules`` (default
    :data:`TEXT_MODULES`), read from the installed source with ``ast`` in source order,
    module after module, joined by blank lines and mapped to a fixed alphabet of
    ``K = 97`` symbols (newline, printable ASCII, one unknown symbol). Its first
    ``1 - validation_fraction`` is the training text, the rest the validation text.
    The corpus depends on the Python version (docstrings change between releases):
    ``task.python`` and ``task.checksum`` (SHA-256 of the encoded corpus) identify it.

    A sequence is a window of ``length + 1`` consecutive characters ``a_0 .. a_T`` of
    the training text at a uniform random start: inputs ``x_t = onehot(a_t)`` (T, K),
    targets ``a_{t+1}`` (class indices), every step scored (cross-entropy, mean over
    steps). :meth:`validation` gives fixed windows of the validation text.
    Baseline: the unigram entropy of the training text,
    ``-sum_a p_a log p_a`` nats (the best prediction that ignores the past).

    Args:
      length: T, the sequence length (>= 1).
      modules: standard-library module names (a tuple of str).
      validation_fraction: the share of the corpus held out, in (0, 1).
    """

    length: int
    modules: tuple[str, ...] = TEXT_MODULES
    validation_fraction: float = 0.1
    name = "text"
    loss = "xent"
    input_size = len(TEXT_ALPHABET) + 1
    output_size = len(TEXT_ALPHABET) + 1

    def __repr__(self) -> str:
        extra = "" if self.modules == TEXT_MODULES else f", modules={self.modules!r}"
        extra += "" if self.validation_fraction == 0.1 else (
            f", validation_fraction={self.validation_fraction!r}")
        return f"TextTask(length={self.length}{extra})"

    def __post_init__(self) -> None:
        _checks.check_positive_int(self.length, "length")
        if isinstance(self.modules, str) or not all(
                isinstance(m, str) for m in self.modules) or not self.modules:
            raise InputTypeError(f"modules: expected a non-empty sequence of module names (str), "
                            f"got {self.modules!r}")
        object.__setattr__(self, "modules", tuple(self.modules))
        object.__setattr__(self, "validation_fraction", _checks.check_float(
            self.validation_fraction, "validation_fraction", above=0.0, below=1.0,
            expected="a float in (0, 1)"))
        n_train, n_val = len(self.train_text), len(self.validation_text)
        if min(n_train, n_val) < self.length + 1:
            raise InputError(
                f"length: expected at most {min(n_train, n_val) - 1} for this corpus "
                f"({n_train} training and {n_val} validation characters), got {self.length}")

    @property
    def corpus(self) -> np.ndarray:
        """The whole encoded corpus, uint8 (N,)."""
        return read_corpus(self.modules)

    @property
    def split(self) -> int:
        """Index of the first validation character."""
        return int(round(len(self.corpus) * (1 - self.validation_fraction)))

    @property
    def train_text(self) -> np.ndarray:
        return self.corpus[: self.split]

    @property
    def validation_text(self) -> np.ndarray:
        return self.corpus[self.split:]

    @property
    def checksum(self) -> str:
        """SHA-256 (hex) of the encoded corpus."""
        return hashlib.sha256(self.corpus.tobytes()).hexdigest()

    @property
    def python(self) -> str:
        """The Python version whose standard library the corpus was read from."""
        return "{}.{}.{}".format(*sys.version_info[:3])

    @property
    def alphabet(self) -> str:
        """The K symbols, the unknown one last."""
        return TEXT_ALPHABET + UNKNOWN

    @property
    def baseline(self) -> float:
        counts = np.bincount(self.train_text, minlength=self.output_size)
        p = counts[counts > 0] / counts.sum()
        return float(-np.sum(p * np.log(p)))

    def _windows(self, text: Any, starts: Array, dtype: Any) -> Batch:
        T = self.length
        chars = jnp.asarray(text)[starts[:, None] + jnp.arange(T + 1)[None, :]].astype(jnp.int32)
        xs = jax.nn.one_hot(chars[:, :-1], self.input_size, dtype=dtype)
        return Batch(xs, chars[:, 1:], jnp.full((T,), 1.0 / T, dtype))

    @_jitted_sample
    def sample(self, key: Array, batch_size: int, dtype: Any = None) -> Batch:
        batch_size, dtype = _check_sample_args(batch_size, dtype)
        text = self.train_text
        starts = jax.random.randint(key, (batch_size,), 0, len(text) - self.length)
        return self._windows(text, starts, dtype)

    def validation(self, batch_size: int, dtype: Any = None) -> Batch:
        """``batch_size`` fixed windows of the validation text, evenly spaced from its
        start to its end (the same on every call)."""
        batch_size, dtype = _check_sample_args(batch_size, dtype)
        text = self.validation_text
        starts = np.linspace(0, len(text) - self.length - 1, batch_size).round().astype(np.int32)
        return self._windows(text, jnp.asarray(starts), dtype)

    def decode(self, symbols: Any) -> str:
        """The text of symbol indices, e.g. ``task.decode(batch.targets[0])``."""
        return decode_text(symbols)


TASKS: dict[str, type] = {"adding": AddingTask, "copy": CopyTask, "sine": SineTask,
                          "text": TextTask}


def make_task(name: str, length: int, **options: Any) -> Any:
    """A task by name: ``"adding"``, ``"copy"``, ``"sine"`` or ``"text"``, with sequence
    length ``length``.

    ``options`` go to the task's class (e.g. ``n_copy`` for ``"copy"``).

    Example::

        task = gp.make_task("adding", 20)
        batch = task.sample(jax.random.key(0), 32)   # xs (32, 20, 2)
    """
    if not isinstance(name, str) or name not in TASKS:
        raise InputError(f"task: expected one of {', '.join(map(repr, TASKS))}, got {name!r}")
    try:
        return TASKS[name](length, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            fields = [f.name for f in dataclasses.fields(TASKS[name])][1:]
            raise InputTypeError(
                f"options: task {name!r} accepts {fields}, got {sorted(options)}"
            ) from err
        raise


def check_task(task: Any) -> Any:
    """Raise TypeError unless ``task`` follows the task protocol."""
    missing = [a for a in ("length", "input_size", "output_size", "loss", "sample")
               if not hasattr(task, a)]
    if missing:
        raise InputTypeError(
            f"task: expected a task (length, input_size, output_size, loss, sample), got "
            f"{type(task).__name__} without {missing}"
        )
    _checks.check_choice(task.loss, "task.loss", LOSSES)
    return task


# --------------------------------------------------------------------------- model


class Readout(NamedTuple):
    """Linear readout ``y = W h + b``: ``W`` (k, n), ``b`` (k,)."""

    W: Array
    b: Array


class ModelParams(NamedTuple):
    """Parameters of a :class:`Model`: the cell's and the readout's."""

    cell: Any
    readout: Readout


def _features(state: Any) -> Array:
    """What the readout sees: the output ``h`` when the state has one, else all of ``s``
    (:func:`gradpaths._state.output`, the rule a stack's layers read each other by)."""
    return output(state)


def initial_state(cell: Any, dtype: Any) -> Any:
    """``cell.initial_state()`` in ``dtype``: built-in cells take the dtype, custom cells
    (``initial_state()`` without arguments) are cast."""
    if is_builtin(cell):
        return cell.initial_state(dtype)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), cell.initial_state())


def step_loss(kind: str, y: Array, target: Array) -> Array:
    r"""One step's loss: ``mean_k (y_k - target_k)^2`` (mse) or
    ``logsumexp(y) - y[target]`` (xent, ``target`` an int)."""
    if kind == "mse":
        return jnp.mean((y - target) ** 2)
    return jax.nn.logsumexp(y) - jnp.take(y, target)


@dataclasses.dataclass(frozen=True)
class Model:
    r"""A recurrent cell with a linear readout from its output.

    .. math::

        s_{t+1} = \mathrm{step}(s_t, x_t), \qquad y_t = W_{out} h_{t+1} + b_{out},
        \qquad L = \sum_t w_t \, \ell(y_t, \mathrm{target}_t)

    Args:
      cell: a gradpaths cell (``LSTM``, ``GRU``, ``RNN``) or any cell whose state
        has a field ``h`` (otherwise the readout sees the whole raveled state).
      output_size: k.
      loss: ``"mse"`` (squared error) or ``"xent"`` (cross-entropy of logits).

    Example::

        task = gp.make_task("adding", 20)
        model = gp.Model.for_task(gp.LSTM(task.input_size, 16), task)
        params = model.init(jax.random.key(0))
    """

    cell: Cell
    output_size: int
    loss: str = "mse"

    def __post_init__(self) -> None:
        if not callable(getattr(self.cell, "step", None)):
            raise InputTypeError(
                f"cell: expected an object with step(params, state, x), got "
                f"{type(self.cell).__name__}"
            )
        _checks.check_positive_int(self.output_size, "output_size")
        _checks.check_choice(self.loss, "loss", LOSSES)

    @classmethod
    def for_task(cls, cell: Cell, task: Any) -> Model:
        """The model whose output size and loss fit ``task``."""
        check_task(task)
        input_size = getattr(cell, "input_size", task.input_size)  # optional for a custom cell
        if input_size != task.input_size:
            raise InputError(
                f"cell: expected input_size {task.input_size} for task {task!r}, "
                f"got {input_size}"
            )
        return cls(cell, task.output_size, task.loss)

    @property
    def feature_size(self) -> int:
        return int(np.prod(jax.eval_shape(lambda: _features(self.cell.initial_state())).shape))

    def init(self, key: Array, *, dtype: Any = None, **cell_init: Any) -> ModelParams:
        """Cell parameters from ``cell.init(key, dtype=dtype, **cell_init)`` and a readout
        ``W_out ~ N(0, 1/n)``, ``b_out = 0``."""
        dtype = _checks.resolve_dtype(dtype)
        kc, kr = jax.random.split(key)
        cell_params = self.cell.init(kc, dtype=dtype, **cell_init)
        n = self.feature_size
        W = jax.random.normal(kr, (self.output_size, n), dtype) / n**0.5
        return ModelParams(cell_params, Readout(W, jnp.zeros((self.output_size,), dtype)))

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` fit this model."""
        if not isinstance(params, ModelParams):
            raise InputTypeError(f"params: expected ModelParams, got {type(params).__name__}")
        check_cell = getattr(self.cell, "check_params", None)  # optional for a custom cell
        if callable(check_cell):
            check_cell(params.cell)
        if not isinstance(params.readout, Readout):
            raise InputTypeError(
                f"params.readout: expected Readout, got {type(params.readout).__name__}"
            )
        k, n = self.output_size, self.feature_size
        _checks.check_shape(params.readout.W, (k, n), "params.readout.W")
        _checks.check_shape(params.readout.b, (k,), "params.readout.b")

    def output(self, readout: Readout, state: Any) -> Array:
        """``y = W_out h + b_out`` for one state: (k,)."""
        return jnp.dot(readout.W, _features(state), precision=jax.lax.Precision.HIGHEST) + readout.b

    def step_losses(self, params: ModelParams, xs: Array, targets: Array,
                    state0: Any = None) -> Array:
        """``l_t`` for one sequence ``xs`` (T, m): shape (T,). No input validation."""
        state0 = initial_state(self.cell, xs.dtype) if state0 is None else state0

        def body(state, inp):
            x, target = inp
            new = self.cell.step(params.cell, state, x)
            return new, step_loss(self.loss, self.output(params.readout, new), target)

        return jax.lax.scan(body, state0, (xs, targets))[1]

    def sequence_loss(self, params: ModelParams, xs: Array, targets: Array, weights: Array,
                      state0: Any = None) -> Array:
        """``sum_t w_t l_t`` for one sequence. No input validation."""
        return jnp.sum(weights * self.step_losses(params, xs, targets, state0))

    def batch_loss(self, params: ModelParams, batch: Batch) -> Array:
        """Mean over the batch of ``sum_t w_t l_t``. No input validation (use inside jit)."""
        per_seq = jax.vmap(self.sequence_loss, in_axes=(None, 0, 0, None))(
            params, batch.xs, batch.targets, batch.weights)
        return jnp.mean(per_seq)
