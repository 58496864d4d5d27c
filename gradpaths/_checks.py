"""Validation shared by every public function.

Two tiers, as in the rest of the library:

* shapes, dtypes and options are checked in Python at trace time and raise
  :class:`InputError` (a ``ValueError``) or :class:`InputTypeError` (also a
  ``TypeError``) naming what was expected and what was got;
* values (non-finite parameters, inputs or states) are checked eagerly when the
  arguments are concrete. Inside ``jax.jit`` the values are tracers and cannot be
  inspected in Python; wrap the jitted function with :func:`checked` to keep the
  same checks in the compiled code (they become ``checkify`` checks).
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Set by `checked`: while tracing under it, value checks on tracers become
# checkify checks instead of being skipped.
_TRACED_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gradpaths_traced_checks", default=False
)


class InputError(ValueError):
    """Bad input to gradpaths: a wrong value, shape, option, file or source.

    Every check on what a user passes raises this class (or a subclass), so that a
    caller can tell a mistake in the input from a failure inside the library: the
    command line exits with status 2 on an ``InputError`` and reports anything else
    as an internal error. It is a ``ValueError``, so ``except ValueError`` still
    catches it.
    """


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type (also a ``TypeError``)."""


class NonFiniteError(InputError):
    """A parameter, input or state holds NaN or infinity."""


def default_float() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def resolve_dtype(dtype: Any) -> jnp.dtype:
    """``None`` -> the default float; otherwise a floating dtype, or TypeError."""
    if dtype is None:
        return default_float()
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise InputTypeError(f"dtype: expected a floating dtype, got {dtype!r}") from err
    if not jnp.issubdtype(dt, jnp.floating):
        raise InputTypeError(f"dtype: expected a floating dtype, got {dt}")
    return jnp.dtype(jax.dtypes.canonicalize_dtype(dt))


def json_number(x: Any) -> float | str:
    """A float for JSON: non-finite values become the strings ``'inf'``, ``'-inf'``,
    ``'nan'`` (``float()`` reads them back), so ``json.dumps(..., allow_nan=False)``
    works and ``-inf`` (an exactly singular product) stays distinct from NaN."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def number_from_json(value: Any, name: str) -> float:
    """Inverse of :func:`json_number`: a JSON number, or one of the strings ``'nan'``,
    ``'inf'``, ``'-inf'``; anything else (``None`` included) is an :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name}: expected a number or 'nan'/'inf'/'-inf', got {value!r}")
    if isinstance(value, str):
        if value not in ("nan", "inf", "-inf"):
            raise InputError(f"{name}: expected a number or 'nan'/'inf'/'-inf', got {value!r}")
    try:
        return float(value)
    except OverflowError:       # an int beyond the float range
        raise InputError(f"{name}: expected a number in the float range, got an int of "
                         f"{len(str(value).lstrip('-'))} digits") from None


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_not_traced(function: str, **trees: Any) -> None:
    """Raise :class:`InputError` when a leaf of ``trees`` is a tracer: ``function``
    returns host values (numbers, text, numpy arrays), so it cannot run inside
    ``jax.jit``, ``jax.vmap`` or ``jax.grad``. It compiles its own work (once per
    shapes), so calling it outside costs nothing more."""
    for arg, tree in trees.items():
        if any(not is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(tree)):
            raise InputError(
                f"{function}: expected concrete arrays, got a traced {arg} (called inside "
                f"jax.jit, jax.vmap or jax.grad); {function} returns host values (numbers, "
                f"text, numpy arrays) and compiles its own work once per shapes: call it "
                f"outside the transformation")


def as_array(x: Any, name: str) -> jax.Array | np.ndarray:
    """Array-like -> array (tracers pass through); anything else -> TypeError."""
    if isinstance(x, (jax.Array, np.ndarray)):
        return x
    if isinstance(x, (list, tuple, float, int, np.generic)):
        try:
            return np.asarray(x)
        except ValueError as err:
            raise InputTypeError(
                f"{name}: expected an array, got a ragged {type(x).__name__}") from err
    raise InputTypeError(f"{name}: expected an array, got {type(x).__name__}")


def _kind(value: Any) -> str:
    """How a refused scalar is named in a message: its type, and its dtype and shape
    for an array."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


@overload
def scalar(value: Any, name: str, *, integer: Literal[True],
           expected: str | None = None) -> int: ...
@overload
def scalar(value: Any, name: str, *, integer: Literal[False] = False,
           expected: str | None = None) -> float: ...
def scalar(value: Any, name: str, *, integer: bool = False,
           expected: str | None = None) -> int | float:
    """The one rule for scalar arguments: ``value`` as a Python ``int`` (``integer``)
    or ``float``, or :class:`InputTypeError`.

    Accepted for an int: a Python ``int``, a numpy integer, and a 0-d integer array of
    any library (numpy, JAX, or anything with ``__array__``). For a float, also a Python
    ``float``, a numpy floating number and a 0-d real (floating or integer) array.
    Refused: ``bool`` and boolean arrays (a flag is not a number), strings, complex
    numbers, arrays of any other shape, and values traced by ``jax.jit`` (a scalar
    argument must be known before tracing: pass it as a static argument). Values
    are not checked here (the callers say which range they expect); an integer too
    large for a float becomes ``inf``. ``expected`` replaces the message's "an int" /
    "a float".
    """
    what = expected or ("an int" if integer else "a float")
    if isinstance(value, jax.core.Tracer):
        raise InputTypeError(f"{name}: expected {what} known outside jax.jit, got a traced "
                             "value (make it a static argument)")
    if isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name}: expected {what}, got bool {value!r}")
    if isinstance(value, int):
        number: Any = value
    elif isinstance(value, float) and not integer:
        number = value
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__array__"):
        raise InputTypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r:.80}")
    else:
        try:
            array = np.asarray(value)
        except Exception as err:        # an __array__ that fails: not a number
            raise InputTypeError(f"{name}: expected {what}, got {_kind(value)}") from err
        # bool is kind "b", complex "c"; bfloat16 (kind "V") is a float to jnp.issubdtype
        real = array.dtype.kind in "iu" or not integer and jnp.issubdtype(array.dtype,
                                                                         jnp.floating)
        if array.shape != () or not real:
            raise InputTypeError(f"{name}: expected {what}, got {_kind(value)}")
        number = array.item()
    if integer:
        return int(number)
    try:
        return float(number)
    except OverflowError:       # an int beyond the float range
        return math.inf if number > 0 else -math.inf


def check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    """``value`` (by :func:`scalar`'s rule) as an int ``>= 1`` (``>= 0`` with
    ``allow_zero``), or a clear error."""
    value = scalar(value, name, integer=True)
    low = 0 if allow_zero else 1
    if value < low:
        raise InputError(f"{name}: expected an int >= {low}, got {value}")
    return value


def check_float(value: Any, name: str, *, above: float | None = None,
                at_least: float | None = None, below: float | None = None,
                expected: str | None = None) -> float:
    """``value`` (by :func:`scalar`'s rule) as a finite float, optionally ``> above``,
    ``>= at_least`` and ``< below``; else :class:`InputTypeError` (not a real number)
    or :class:`InputError` (out of range). ``expected`` replaces the message's
    description of what was expected."""
    bounds = [f"> {above}" if above is not None else "",
              f">= {at_least}" if at_least is not None else "",
              f"< {below}" if below is not None else ""]
    number = scalar(value, name, expected=expected)
    expected = expected or " ".join(["a finite float", *filter(None, bounds)])
    if not (math.isfinite(number) and (above is None or number > above)
            and (at_least is None or number >= at_least) and (below is None or number < below)):
        raise InputError(f"{name}: expected {expected}, got {number}")
    return number


def check_positive_float(value: Any, name: str, *, above: float = 0.0) -> float:
    """``value`` as a float, or :class:`InputTypeError` (not a real number) /
    :class:`InputError` (not finite or not ``> above``)."""
    return check_float(value, name, above=above)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """A PRNG key, the one way gradpaths takes randomness.

    Accepts a typed key (``jax.random.key(0)``), a raw ``uint32[2]`` key
    (``jax.random.PRNGKey(0)``) or an int seed >= 0 (by :func:`scalar`'s rule: also a 0-d
    integer array), which becomes ``jax.random.key(seed)``. Returns a typed scalar key;
    anything else raises :class:`InputTypeError` (or :class:`InputError` for a negative
    int or a batch of keys).
    """
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise InputError(f"{name}: expected a single PRNG key, got shape {key.shape}")
        return key
    if is_concrete(key) and not isinstance(key, (bool, np.bool_)) and (
            isinstance(key, int) or np.shape(key) == () and hasattr(key, "dtype")
            and np.issubdtype(key.dtype, np.integer)):
        seed = scalar(key, name, integer=True)
        if not 0 <= seed < 2**63:
            raise InputError(f"{name}: expected a PRNG key or an int seed >= 0, got {seed}")
        return jax.random.key(seed)
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise InputTypeError(f"{name}: expected a PRNG key (jax.random.key(seed)) or an int seed, "
                         f"got {type(key).__name__} {key!r}")


def key_data(key: Any, name: str = "key") -> jax.Array:
    """The raw ``uint32`` data of :func:`check_key`'s key: what jitted functions take,
    so that a new key does not recompile (:func:`gradpaths._products.as_key` wraps it
    back)."""
    return jax.random.key_data(check_key(key, name))


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_shape(x: Any, expected: tuple[int, ...], name: str) -> None:
    shape = tuple(np.shape(x))
    if shape != tuple(expected):
        raise InputError(f"{name}: expected shape {tuple(expected)}, got {shape}")


def check_finite(tree: Any, name: str) -> None:
    """Raise :class:`NonFiniteError` if any floating leaf of ``tree`` is not finite.

    Concrete leaves are checked now. Traced leaves are checked in the compiled
    code when tracing happens under :func:`checked`, and skipped otherwise.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        where = name + jax.tree_util.keystr(path)
        if is_concrete(leaf):
            bad = ~np.isfinite(np.asarray(leaf))
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise NonFiniteError(
                    f"{where}: expected finite values, got {int(bad.sum())} non-finite "
                    f"(first at index {first}: {np.asarray(leaf)[first]})"
                )
        elif _TRACED_CHECKS.get():
            checkify.check(
                jnp.all(jnp.isfinite(leaf)), f"{where}: expected finite values, got NaN or inf"
            )


def checked(fn: Callable) -> Callable:
    """Run ``fn`` (which may be jitted) with gradpaths' value checks compiled in.

    Outside ``jit`` every public function checks its arguments for NaN and inf
    itself. Inside ``jit`` the values are unknown at trace time, so those checks
    are skipped unless the jitted function is wrapped by ``checked``, outermost::

        f = gp.checked(jax.jit(lambda p, xs: gp.step_jacobians(cell, p, xs).matrix))
        f(params, xs)   # raises NonFiniteError if params or xs hold NaN/inf

    ``checked`` raises after the compiled function has run, so it must itself run
    outside ``jit``: ``jax.jit(gp.checked(f))`` is refused with an
    :class:`InputError` that says so. The wrapped function must not have been traced
    before without ``checked`` (a jit cache entry traced without checks would be
    reused).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _TRACED_CHECKS.set(True)
        try:
            err, out = checkify.checkify(fn, errors=checkify.user_checks)(*args, **kwargs)
        finally:
            _TRACED_CHECKS.reset(token)
        try:
            message = err.get()
        except jax.errors.ConcretizationTypeError:
            raise InputError(
                "gp.checked: expected to run outside jax.jit (it raises once the compiled "
                "function has run, which a traced caller cannot), got a traced call: wrap "
                "the jitted function, gp.checked(jax.jit(f)), not jax.jit(gp.checked(f))"
            ) from None
        if message is not None:
            raise NonFiniteError(message.split(" (check failed at")[0])
        return out

    return wrapper


def writable_file_path(path: Any, name: str) -> str:
    """``path`` as a string naming a file that can be created in an existing, writable
    folder (it may exist already: the caller decides what that means), or a clear
    error naming ``name``."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"{name}: expected None or a file path, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not path.strip():
        raise InputError(f"{name}: expected a file path, got {path!r}")
    if os.path.isdir(path):
        raise InputError(f"{name}: {path!r} is a folder; expected a file path in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"{name}: the folder {folder!r} of {path!r} does not exist; "
                         "create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{name}: cannot write in the folder {folder!r} of {path!r}")
    return path


def readable_file_path(path: str | os.PathLike[str], name: str = "") -> str:
    """``path`` as a string naming an existing regular file, or a clear error (prefixed
    ``name: `` when given): no such file, a folder, or a FIFO, socket or device, which
    is refused before it is opened (reading a FIFO would wait for a writer)."""
    shown = os.fsdecode(os.fspath(path))
    head = f"{name}: " if name else ""
    try:
        mode = os.stat(shown).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{head}no such file {shown!r}") from None
    except (OSError, ValueError) as err:    # ValueError: a NUL byte in the path
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"{head}cannot read {shown!r}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{head}{shown!r} is a folder; expected a file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise InputError(f"{head}{shown!r} is {kind}, not a regular file; expected a file")
    return shown
