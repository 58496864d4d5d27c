"""Reading an ``.npz`` file one array at a time, each only when it is used.

:func:`read_npz` reads the zip's directory and returns a mapping of array names to
:class:`StoredArray`; no array data is decompressed then. An importer reads the
keys it needs through :func:`gradpaths.interop._common.to_numpy`, which calls
:meth:`StoredArray.read`; the arrays outside the requested prefix (another module
of a larger model, an optimizer state saved beside the weights) are never
decompressed, so their size costs no memory.

Before an array's data is decompressed, the sizes are checked: its ``.npy`` header
(shape ``s``, dtype of item size ``b``) must account for exactly the uncompressed
size the zip's directory declares, ``header + b * prod(s)`` bytes. The zip reader
stops at that declared size and checks the CRC, so a member cannot make the reader
allocate more than its header says, and a damaged one is an error, not an array.

Nothing here unpickles: an object array is refused (a pickle can run code).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradpaths._checks import InputError

NPY_SUFFIX = ".npy"
"""``np.savez(path, name=array)`` stores ``array`` as the zip member ``name.npy``."""

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_SAVE_HINT = "save the weights with np.savez(path, **weights)"

# What reading a damaged member can raise, besides OSError: a bad CRC or header
# (BadZipFile), a bad deflate stream (zlib.error), a short stream (EOFError), an
# encrypted member (RuntimeError), an unknown compression (NotImplementedError), a bad
# .npy header (ValueError).
_DAMAGED = (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError,
            NotImplementedError, ValueError)


class StoredArray:
    """One ``.npy`` member of an ``.npz`` file; :meth:`read` decompresses and checks it."""

    def __init__(self, file: Path, shown: str, member: zipfile.ZipInfo, key: str) -> None:
        self.file, self.shown, self.member, self.key = file, shown, member, key

    def __repr__(self) -> str:
        return f"StoredArray({self.shown!r}, {self.key!r})"

    def read(self) -> np.ndarray:
        """The array (InputError for an object array, sizes that disagree, or damage)."""
        where = f"array {self.key!r}"    # the caller names the file
        try:
            with zipfile.ZipFile(self.file) as archive, archive.open(self.member) as stream:
                return _read_npy(stream, self.member.file_size, where)
        except InputError:
            raise
        except _DAMAGED as err:
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise InputError(f"{where}: cannot read it, the file is damaged or truncated "
                             f"({reason})") from None


def _read_npy(stream: Any, declared: int, where: str) -> np.ndarray:
    """A ``.npy`` array from the binary ``stream`` (a zip member or a file), whose
    size (header and data) is ``declared``."""
    magic = stream.read(len(_NPY_MAGIC) + 2)
    if len(magic) < len(_NPY_MAGIC) + 2 or not magic.startswith(_NPY_MAGIC):
        raise InputError(f"{where}: is not a .npy array (np.savez stores each array as one)")
    version = magic[-2], magic[-1]
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise InputError(f"{where}: .npy format version {version[0]}.{version[1]} is not "
                         "read here (expected 1.0 or 2.0, as np.savez writes numeric arrays)")
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (dtype {dtype}), not numbers; "
                         "gradpaths never unpickles data, and reads numeric arrays only")
    size = dtype.itemsize * math.prod(shape)
    header = stream.tell()
    if header + size != declared:
        raise InputError(f"{where}: its header declares shape {shape} of {dtype} "
                         f"({size} bytes of data), but {declared - header} bytes are stored; "
                         "the file is damaged or truncated")
    order: Literal["C", "F"] = "F" if fortran else "C"
    if size == 0:
        return np.empty(shape, dtype, order=order)
    raw = np.empty(size, np.uint8)
    view, done = raw.data, 0
    while done < size:
        got = stream.readinto(view[done:])
        if not got:
            raise InputError(f"{where}: ends after {done} of its {size} bytes; the file is "
                             "truncated")
        done += got
    stream.read(1)      # at the declared end: a zip member's CRC is checked here
    return raw.view(dtype).reshape(shape, order=order)


def read_npz(file: Path, shown: str) -> dict[str, StoredArray]:
    """The arrays of the ``.npz`` file ``file`` (shown as ``shown``), unread: name ->
    :class:`StoredArray`. InputError for a file that is not an ``.npz`` archive, saying
    what it is when that can be told (a ``.npy`` array, a pickle, a torch file, text)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(64)
    except OSError as err:
        raise InputError(f"cannot read {shown!r}: {err.strerror or type(err).__name__}"
                         ) from None
    if not head.startswith(_ZIP_MAGIC):
        raise InputError(f"{shown!r} is not an .npz archive (np.savez writes a zip of .npy "
                         f"arrays): {_what_it_is(head)}")
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise InputError(f"{shown!r} is not a readable zip archive ({err}); the file may be "
                         "truncated or damaged") from None
    names = [m.filename for m in members if not m.is_dir()]
    if names and not any(n.endswith(NPY_SUFFIX) for n in names):
        torch = any(n.endswith("data.pkl") for n in names)
        raise InputError(
            f"{shown!r} holds no .npy arrays" + (
                ": it is a file written by torch.save; name it .pt or .pth (read with "
                "torch installed)" if torch else
                f" (its members: {', '.join(repr(n) for n in names[:5])}"
                f"{', ...' if len(names) > 5 else ''}); {_SAVE_HINT}"))
    arrays: dict[str, StoredArray] = {}
    for member in members:
        if member.is_dir():
            continue
        name = member.filename
        key = name[: -len(NPY_SUFFIX)] if name.endswith(NPY_SUFFIX) else name
        if key in arrays:
            raise InputError(f"{shown!r} holds the array {key!r} twice; the file is damaged")
        arrays[key] = StoredArray(file, shown, member, key)
    return arrays


def read_npy(file: Path, shown: str, hint: str) -> np.ndarray:
    """The array of the ``.npy`` file ``file`` (shown as ``shown``), with the checks of
    an ``.npz`` member (the header's size against the file's; no object arrays).
    InputError saying what the file is when it is not a ``.npy`` array, ending with
    ``hint`` (how to write one)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(64)
            if not head.startswith(_NPY_MAGIC):
                raise InputError(f"{shown!r} is not a .npy array (np.save writes one): "
                                 f"{_what_it_is(head, hint)}")
            handle.seek(0)
            return _read_npy(handle, os.fstat(handle.fileno()).st_size, repr(shown))
    except InputError:
        raise
    except _DAMAGED as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise InputError(f"cannot read {shown!r} as .npy: the file is damaged or truncated "
                         f"({reason})") from None


def _what_it_is(head: bytes, hint: str = _SAVE_HINT) -> str:
    """What the first bytes of a file that is not the one expected say it is."""
    if not head:
        return "it is empty"
    if head.startswith(_NPY_MAGIC):
        return f"it is a single .npy array (np.save), not named arrays; {hint}"
    if head.startswith(_ZIP_MAGIC):
        return f"it is a zip archive (an .npz file of several arrays?); {hint}"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("it is a Python pickle, which gradpaths never loads (unpickling can run "
                f"code); {hint}")
    try:
        head.decode("utf-8")
        text = True
    except UnicodeDecodeError as err:     # a character cut at the end of ``head`` is text
        text = err.start >= len(head) - 3
    if text and not any(b < 0x20 and b not in b"\t\n\r" for b in head):
        return f"it holds text; {hint}"
    return f"its first bytes {head[:8]!r} are no known format; {hint}"
