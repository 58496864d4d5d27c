"""Checkpoints: params, optimizer state, history and settings in one ``.npz`` file,
written atomically (a temporary file, flushed, then renamed over the path)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths import _checks
from gradpaths._checks import InputError
from gradpaths._train._history import History

_CHECKPOINT_FORMAT = "gradpaths.train/1"


def save_checkpoint(path: str | os.PathLike, params: Any, opt_state: Any, history: History,
                    meta: dict[str, Any]) -> None:
    """Write params, optimizer state, history and ``meta`` to ``path`` atomically.

    The file is written next to ``path`` under a fresh temporary name, flushed to
    disk, then renamed over ``path`` (``os.replace``): a crash leaves either the
    old checkpoint or the new one, never a torn file.
    """
    path = os.fspath(path)
    arrays: dict[str, Any] = {  # Any: numpy's savez stub types **kwds as allow_pickle
        "format": np.array(_CHECKPOINT_FORMAT),
        "history": np.array(json.dumps(history.to_dict())),
        "meta": np.array(json.dumps(meta)),
    }
    for prefix, tree in (("params", params), ("opt", opt_state)):
        for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
            arrays[f"{prefix}_{i}"] = np.asarray(leaf)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`save_checkpoint` (its format tag is
    read; a damaged file can still pass, and :func:`load_checkpoint` then says so)."""
    try:    # np.load(path) leaves the file open when it is a damaged zip: open it here
        with open(os.fspath(path), "rb") as f, np.load(f, allow_pickle=False) as data:
            return "format" in data.files and str(data["format"]) == _CHECKPOINT_FORMAT
    except (*_READ_ERRORS, AttributeError, TypeError):    # TypeError: a .npy, no `with`
        return False


def load_checkpoint(path: str | os.PathLike, params: Any, opt_state: Any
                    ) -> tuple[Any, Any, History, dict[str, Any]]:
    """Read a checkpoint; ``params`` and ``opt_state`` give the expected structure.

    Raises:
      ValueError: naming ``path``: no such file, not a gradpaths checkpoint, damaged
        (truncated or corrupted), or arrays that do not fit ``params``/``opt_state``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint: no such file {path!r}")
    if not is_checkpoint(path):
        with open(path, "rb") as f:
            head = f.read(64)
        # np.savez writes "format" first: a zip whose first member is format.npy is a
        # checkpoint that can no longer be read.
        if head.startswith(b"PK\x03\x04") and b"format.npy" in head:
            raise InputError(f"checkpoint: {path!r} is damaged (truncated or corrupted); "
                             "delete it, or resume from a copy")
        raise InputError(f"checkpoint: expected a gradpaths training checkpoint, got {path!r}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            history_text, meta_text = str(data["history"]), str(data["meta"])
            stored = {k: data[k] for k in data.files if k.startswith(("params_", "opt_"))}
    except _READ_ERRORS as err:
        raise InputError(f"checkpoint: {path!r} is damaged (truncated or corrupted: {err}); "
                         "delete it, or resume from a copy") from None
    try:
        history = History.from_dict(json.loads(history_text))
        meta = json.loads(meta_text)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"checkpoint: {path!r} is damaged: its history cannot be read "
                         f"({type(err).__name__}: {err})") from None
    trees = []
    for prefix, like in (("params", params), ("opt", opt_state)):
        leaves, treedef = jax.tree_util.tree_flatten(like)
        names = sorted((k for k in stored if k.startswith(prefix + "_")),
                       key=lambda k: int(k.rsplit("_", 1)[1]))
        if len(names) != len(leaves):
            raise InputError(f"checkpoint: expected {len(leaves)} {prefix} arrays, got "
                             f"{len(names)} in {path!r}")
        new = []
        for name, leaf in zip(names, leaves, strict=True):
            value = stored[name]
            if value.shape != np.shape(leaf):
                raise InputError(f"checkpoint: {name} expected shape {np.shape(leaf)}, got "
                                 f"{value.shape} in {path!r}")
            new.append(jnp.asarray(value, jnp.asarray(leaf).dtype))
        trees.append(jax.tree_util.tree_unflatten(treedef, new))
    return trees[0], trees[1], history, meta


def check_checkpoint_path(path: Any, resume: bool) -> str:
    """``path`` as a string, or a clear error before any training: the folder must exist
    and be writable; an existing file is only continued (``resume=True``)."""
    path = _checks.writable_file_path(path, "checkpoint")
    if os.path.lexists(path) and not resume:
        raise FileExistsError(
            f"checkpoint: {path!r} exists; pass resume=True to continue from it "
            "or choose another path (it is never overwritten otherwise)")
    return path
