"""Importing from a weights file: :func:`load` reads the file and runs the importer.

The file is read into a plain mapping of NumPy arrays, then handed to
``from_<format>`` with the options given, so :func:`load` accepts exactly what the
importer accepts (its keyword arguments are read from its signature, not listed
here) and returns exactly what it returns.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradpaths._checks import InputError, InputTypeError, check_choice, readable_file_path
from gradpaths.interop._equinox import from_equinox
from gradpaths.interop._flax import from_flax
from gradpaths.interop._haiku import from_haiku
from gradpaths.interop._keras import from_keras
from gradpaths.interop._npz import read_npz
from gradpaths.interop._torch import from_torch

IMPORTERS: dict[str, Callable[..., Any]] = {
    "torch": from_torch,
    "keras": from_keras,
    "flax": from_flax,
    "equinox": from_equinox,
    "haiku": from_haiku,
}
"""The importer of each format: ``load(path, format)`` calls ``IMPORTERS[format]``."""

FORMATS = tuple(IMPORTERS)
"""The formats :func:`load` reads: ``"torch"``, ``"keras"``, ``"flax"``, ``"equinox"``,
``"haiku"``."""

TORCH_SUFFIXES = (".pt", ".pth")
"""Suffixes of files written by ``torch.save`` (read only with torch installed)."""

SUFFIXES = (".npz", *TORCH_SUFFIXES)
"""Suffixes :func:`load` reads: ``.npz`` (any format) and ``.pt``/``.pth`` (torch)."""

_NOT_A_STATE_DICT = ("{path!r} is not a state dict gradpaths can read (a mapping of "
                     "parameter names to tensors); save one with "
                     "torch.save(model.state_dict(), path)")


def options_of(format: str) -> tuple[str, ...]:
    """The keyword options ``load(path, format, **options)`` takes: those of
    ``from_<format>``, in the order of its signature (``"layer"``, ``"direction"``,
    ``"prefix"``, ``"dtype"``, ...)."""
    check_choice(format, "format", FORMATS)
    parameters = inspect.signature(IMPORTERS[format]).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> Any:
    """Import a recurrent layer from a weights file.

    Reads ``path`` into a mapping of arrays and returns
    ``gp.interop.from_<format>(mapping, **options)``. Example::

        np.savez("lstm.npz", **{k: v.numpy() for k, v in lstm.state_dict().items()})
        cell, params = gp.interop.load("lstm.npz", "torch", layer=1, direction="reverse")

    Args:
      path: a ``.npz`` file of named arrays (any format: a state dict saved with
        ``np.savez(path, **state_dict)``, Keras weights by path, Flax or Haiku params
        flattened with ``/`` in their keys; only the arrays the importer reads are
        decompressed, each after its declared size is checked, so arrays outside
        ``prefix`` cost nothing), or a ``.pt``/``.pth`` state dict written
        by ``torch.save`` (format torch; needs torch, and is read with
        ``weights_only=True``). A torch checkpoint ``{"state_dict": {...}}`` is
        unwrapped when no ``prefix`` is given.
      format: ``"torch"``, ``"keras"``, ``"flax"``, ``"equinox"`` or ``"haiku"``
        (:data:`FORMATS`); None means torch for ``.pt``/``.pth`` and is refused for
        ``.npz``, whose arrays do not say which framework wrote them.
      **options: keyword arguments of the importer, e.g. ``prefix``, ``layer``,
        ``direction``, ``dtype`` (:func:`options_of` lists them per format).

    Returns:
      What the importer returns: ``(cell, params)``.

    Raises:
      InputError: no such file, a folder or FIFO, a suffix or format gradpaths cannot
        read, a file that is not what its suffix says (a ``.npy`` array, a pickle or
        text named ``.npz``; never unpickled), damaged or truncated, or holds no
        arrays, an option the importer does not take, or weights that do not fit the
        format (the importer's message, after the path).
      InputTypeError: ``path`` is not a path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    shown = readable_file_path(path)
    file = Path(shown)
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{shown!r}: expected a {' or '.join(SUFFIXES)} file, got suffix "
                         f"{suffix or 'none'!r}")
    if format is None:
        if suffix not in TORCH_SUFFIXES:
            raise InputError(f"format: required for a {suffix} file (one of "
                             f"{', '.join(FORMATS)})")
        format = "torch"
    check_choice(format, "format", FORMATS)
    if suffix in TORCH_SUFFIXES and format != "torch":
        raise InputError(f"format: a {suffix} file holds torch weights, got {format!r}")
    allowed = options_of(format)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"options: from_{format} takes {', '.join(allowed)}; got "
                         f"{', '.join(unknown)}")
    source = _read_torch(file, shown) if suffix in TORCH_SUFFIXES else _read_npz(file, shown)
    if format == "torch" and not options.get("prefix"):
        source = _unwrap_state_dict(source)
    try:
        return IMPORTERS[format](source, **options)
    except InputError as err:
        raise _in_context(err, f"{shown!r} as {format} weights: {err}") from err


def _in_context(err: InputError, message: str) -> InputError:
    """An error of the same class as ``err`` (MissingKeyError stays one) with ``message``."""
    try:
        return type(err)(message)
    except TypeError:       # a subclass whose constructor takes more than a message
        return InputError(message)


def _read_npz(file: Path, shown: str) -> Mapping[str, Any]:
    """The file's arrays, each decompressed only when the importer reads it."""
    source = read_npz(file, shown)
    if not source:
        raise InputError(f"{shown!r} holds no arrays")
    return source


def _read_torch(file: Path, shown: str) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise InputError(f"reading {file.suffix} needs torch (not installed); save the state "
                         "dict as .npz instead: np.savez('w.npz', **{k: v.numpy() for k, v "
                         "in model.state_dict().items()})") from None
    try:
        source = torch.load(file, map_location="cpu", weights_only=True)
    except OSError as err:
        raise InputError(f"cannot read {shown!r}: {err.strerror or type(err).__name__}"
                         ) from None
    except Exception:
        # torch's own message can advise an unsafe load and carry terminal escape codes.
        raise InputError(_NOT_A_STATE_DICT.format(path=shown)) from None
    if not isinstance(source, Mapping):
        raise InputError(_NOT_A_STATE_DICT.format(path=shown))
    return source


def _unwrap_state_dict(source: Mapping[str, Any]) -> Mapping[str, Any]:
    """A torch checkpoint saved as ``{"state_dict": {...}}`` -> the inner dict."""
    inner = source.get("state_dict") if len(source) == 1 else None
    return inner if isinstance(inner, Mapping) else source
