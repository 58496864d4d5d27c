"""``gp.interop.load``: weights files read into the importers, and clear errors."""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import tracemalloc
import warnings
import zipfile

import jax
import numpy as np
import pytest
from interop_cases import CASES, DIRECTIONS, check, load, source_of

import gradpaths as gp
from gradpaths.interop import _load, _npz


def _saved(tmp_path, name, source=None):
    """The fixture's weights saved as a user would: ``np.savez(path, **weights)``."""
    path = tmp_path / f"{name}.npz"
    np.savez(path, **(source_of(load(name)) if source is None else source))
    return path


def _assert_same(got, want):
    (cell, params), (cell_w, params_w) = got, want
    assert cell == cell_w
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves_w, tree_w = jax.tree_util.tree_flatten(params_w)
    assert tree == tree_w
    for a, b in zip(leaves, leaves_w, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_equals_the_importer_on_the_mapping(name, tmp_path):
    """Every fixture, every layer and direction: the file gives what the mapping gives."""
    case = CASES[name]
    path = _saved(tmp_path, name)
    source = source_of(load(name))
    for k in range(case.layers):
        for d in DIRECTIONS[: case.directions]:
            kwargs = case.kwargs(k, d)
            _assert_same(gp.interop.load(path, case.framework, **kwargs),
                         case.importer(source, **kwargs))


def test_load_reproduces_torch_outputs(tmp_path):
    """Round trip to the framework's own numbers: a 2-layer bidirectional torch LSTM
    loaded layer by layer from an .npz reproduces torch's outputs and final states."""
    case = CASES["torch_lstm"]
    path = _saved(tmp_path, "torch_lstm")
    check(case, load("torch_lstm"),
          lambda k, d: gp.interop.load(str(path), "torch", **case.kwargs(k, d)))


def test_options_are_the_importers_keywords():
    assert _load.FORMATS == gp.interop.FRAMEWORKS
    assert _load.options_of("torch") == ("layer", "direction", "nonlinearity", "prefix",
                                         "dtype")
    assert set(_load.options_of("haiku")) == {"prefix", "dtype"}
    with pytest.raises(gp.InputError, match="format: expected one of 'torch'.*got 'tf'"):
        _load.options_of("tf")


def test_torch_checkpoint_and_dtype(tmp_path):
    source = source_of(load("torch_lstmcell"))
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{f"state_dict.{k}": v for k, v in source.items()})
    # A flat file of "state_dict.<name>" keys is read with the prefix.
    _assert_same(gp.interop.load(path, "torch", prefix="state_dict", dtype=np.float32),
                 gp.interop.from_torch(source, dtype=np.float32))
    assert _load._unwrap_state_dict({"state_dict": source}) is source
    assert _load._unwrap_state_dict(source) is source


def test_load_errors_name_the_file_and_the_trouble(tmp_path):
    path = _saved(tmp_path, "torch_lstm")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    npy = tmp_path / "xs.npy"
    np.save(npy, np.zeros(3))
    cases = [
        ((tmp_path / "nope.npz", "torch"), {}, gp.InputError, "no such file .*nope.npz"),
        ((tmp_path, "torch"), {}, gp.InputError, r"is a folder; expected a file"),
        ((npy, "torch"), {}, gp.InputError, r"expected a \.npz or \.pt or \.pth file, got "
                                            r"suffix '\.npy'"),
        ((path,), {}, gp.InputError, r"format: required for a \.npz file \(one of torch, keras"),
        ((path, "tf"), {}, gp.InputError, "format: expected one of .*got 'tf'"),
        ((path, "haiku"), {"layer": 1}, gp.InputError,
         "options: from_haiku takes prefix, dtype; got layer"),
        ((path, "torch"), {"layer": 5}, gp.InputError,
         r"as torch weights: layer: expected 0\.\.1 .*got 5"),
        ((path, "torch"), {"direction": "up"}, gp.InputError, "direction: expected one of"),
        ((path, "keras"), {}, gp.InputError, "as keras weights: weights: unknown key"),
        ((path, "torch"), {"prefix": "encoder"}, gp.interop.MissingKeyError,
         r"as torch weights: prefix 'encoder': no key starts with 'encoder\.'"),
        ((text, "torch"), {}, gp.InputError, r"notes.npz' is not an .npz archive .*: it "
                                             "holds text"),
        ((empty, "torch"), {}, gp.InputError, "holds no arrays"),
        ((42, "torch"), {}, gp.InputTypeError, "path: expected a str or os.PathLike, got int"),
    ]
    for args, kwargs, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            gp.interop.load(*args, **kwargs)


class _FakeTorch:
    """``torch`` with a ``load`` that fails, or returns, as torch does."""

    def __init__(self, error=None, value=None):
        self.error, self.value = error, value

    def load(self, *args, **kwargs):
        assert kwargs["weights_only"] is True
        if self.error is not None:
            raise self.error
        return self.value


def test_torch_files(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(gp.InputError, match=r"format: a \.pt file holds torch weights, got "
                                            "'keras'"):
        gp.interop.load(path, "keras")
    monkeypatch.setitem(sys.modules, "torch", None)        # torch not installed
    with pytest.raises(gp.InputError, match=r"reading \.pt needs torch .* as \.npz instead"):
        gp.interop.load(path)
    # A state dict, and a checkpoint wrapping one, import as the mapping does.
    source = source_of(load("torch_gru"))
    for value in (source, {"state_dict": source}):
        monkeypatch.setitem(sys.modules, "torch", _FakeTorch(value=value))
        _assert_same(gp.interop.load(path, layer=1), gp.interop.from_torch(source, layer=1))
    # What torch will not read safely is refused without torch's advice to load unsafely.
    advice = ("weights_only=False", "\x1b[")
    errors = [
        RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central "
                     "directory. ... you can load with `weights_only=False` ..."),
        pickle.UnpicklingError("Weights only load failed. \x1b[1mWeightsUnpickler error: "
                               "Unsupported global: GLOBAL __main__.Net\x1b[0m ... "
                               "weights_only=False"),
    ]
    for fake in [_FakeTorch(error=e) for e in errors] + [_FakeTorch(value=[1, 2, 3])]:
        monkeypatch.setitem(sys.modules, "torch", fake)
        with pytest.raises(gp.InputError) as info:
            gp.interop.load(path)
        message = str(info.value)
        assert message == (f"{str(path)!r} is not a state dict gradpaths can read (a mapping "
                           "of parameter names to tensors); save one with "
                           "torch.save(model.state_dict(), path)")
        assert not any(a in message for a in advice)
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch(error=PermissionError(13, "denied")))
    with pytest.raises(gp.InputError, match=r"cannot read .*model.pt': denied"):
        gp.interop.load(path)


# --------------------------------------------------------------------------- hostile files


def _message(path, *args, **kwargs):
    with pytest.raises(gp.InputError) as info:
        gp.interop.load(path, *args, **kwargs)
    return str(info.value)


def _member_offset(path, name):
    """Where the data of the zip member ``name`` starts in the file at ``path``."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = path.read_bytes()
    # local header: 30 bytes, then the name and the extra field (lengths at 26 and 28)
    start = info.header_offset
    n, extra = int.from_bytes(raw[start + 26:start + 28], "little"), int.from_bytes(
        raw[start + 28:start + 30], "little")
    return start + 30 + n + extra


def test_load_says_what_a_file_that_is_no_npz_is(tmp_path):
    """A file named .npz that is something else, a folder or a FIFO: the message says
    what it is, and never repeats numpy's advice to load pickled data unsafely."""
    def named(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    npy = tmp_path / "xs.npy"
    np.save(npy, np.zeros(3))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"w": 1}], dtype=object), allow_pickle=True)
    zipped = tmp_path / "notes.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "hello")
    torch_zip = tmp_path / "model.zip"      # how torch.save lays out its zip
    with zipfile.ZipFile(torch_zip, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps({}))
        archive.writestr("model/version", "3\n")
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    (tmp_path / "folder.npz").mkdir()
    cases = {
        named("renamed.npz", npy.read_bytes()): r"it is a single \.npy array \(np\.save\)",
        named("objects.npz", objects.read_bytes()): r"it is a single \.npy array \(np\.save\)",
        named("text.npz", b"weight_ih: [1, 2, 3]\n"): "it holds text",
        named("pickle.npz", pickle.dumps({"w": np.zeros(3)})):
            "it is a Python pickle, which gradpaths never loads",
        named("pickle5.npz", pickle.dumps([1.0], protocol=5)):
            "it is a Python pickle, which gradpaths never loads",
        named("empty.npz", b""): "is not an .npz archive .*: it is empty",
        named("binary.npz", bytes(range(256))): "its first bytes .* are no known format",
        named("zipped.npz", zipped.read_bytes()): r"holds no \.npy arrays \(its members: "
                                                   "'readme.txt'\\)",
        named("torch.npz", torch_zip.read_bytes()): "holds no .npy arrays: it is a file "
                                                     r"written by torch.save; name it \.pt",
        tmp_path / "folder.npz": "folder.npz' is a folder; expected a file",
        fifo: r"pipe.npz' is a FIFO \(named pipe\), not a regular file",
    }
    for path, pattern in cases.items():
        message = _message(path, "torch")
        assert re.search(pattern, message), (path.name, message)
        assert "allow_pickle" not in message and "unsafe" not in message, message


def test_load_refuses_damaged_members_and_object_arrays(tmp_path):
    """A truncated zip, a member whose CRC fails, a member whose .npy header declares more
    data than the zip holds (checked before anything is allocated), an object array."""
    source = source_of(load("torch_gru"))
    good = _saved(tmp_path, "torch_gru")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is not a readable zip archive" in _message(truncated, "torch")

    flipped = tmp_path / "flipped.npz"
    raw = bytearray(good.read_bytes())
    raw[_member_offset(good, "weight_hh_l0.npy") + 200] ^= 0xFF    # inside the data
    flipped.write_bytes(bytes(raw))
    message = _message(flipped, "torch")
    assert "array 'weight_hh_l0': cannot read it, the file is damaged" in message, message

    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as archive:
        for key, value in source.items():
            if key != "weight_hh_l1":
                archive.writestr(f"{key}.npy", _npy_bytes(value))
        archive.writestr("weight_hh_l1.npy", _npy_header((2**40,)) + bytes(16))
    message = _message(huge, "torch")
    assert ("array 'weight_hh_l1': its header declares shape (1099511627776,) of float64 "
            "(8796093022208 bytes of data), but 16 bytes are stored") in message, message

    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**source, "bias_hh_l0": np.array([None], dtype=object)})
    message = _message(objects, "torch")
    assert "array 'bias_hh_l0': holds Python objects (dtype object)" in message, message
    assert "allow_pickle" not in message and "unsafe" not in message


def _npy_header(shape, descr="<f8"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _npy_bytes(value):
    buffer = io.BytesIO()
    np.save(buffer, value)
    return buffer.getvalue()


def _with_unrelated(tmp_path, name, unrelated):
    """The torch GRU fixture under prefix 'encoder.', beside an array 'decoder.big' whose
    member data is ``unrelated`` (bytes, or a callable writing into the open member)."""
    source = source_of(load("torch_gru"))
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in source.items():
            archive.writestr(f"encoder.{key}.npy", _npy_bytes(value))
        with archive.open("decoder.big.npy", "w", force_zip64=True) as member:
            unrelated(member)
    return path, source


def test_load_reads_only_the_arrays_the_importer_needs(tmp_path, monkeypatch):
    """Arrays outside the prefix are never decompressed: a damaged one does not matter, and
    none of their bytes are read (issue 24, item 12)."""
    def damaged(member):
        member.write(_npy_bytes(np.zeros(4))[:-8])     # header says 32 bytes; 24 stored

    path, source = _with_unrelated(tmp_path, "damaged.npz", damaged)
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    _assert_same(gp.interop.load(path, "torch", prefix="encoder", layer=1),
                 gp.interop.from_torch(source, layer=1))
    assert opened and all(name.startswith("encoder.") for name in opened), opened
    monkeypatch.undo()
    with pytest.raises(gp.InputError, match=r"array 'decoder.big': its header declares shape "
                                            r"\(4,\) of float64 \(32 bytes of data\), but "
                                            "24 bytes are stored"):
        _npz.read_npz(path, str(path))["decoder.big"].read()    # damaged it is


def test_load_memory_stays_small_beside_a_large_array(tmp_path):
    """A 64 MiB array of zeros outside the prefix (64 KiB compressed): loading the small
    layer beside it allocates far less than that array (traced by tracemalloc)."""
    size = 64 * 2**20

    def zeros(member):
        member.write(_npy_header((size // 8,)))
        chunk = bytes(2**20)
        for _ in range(size // len(chunk)):
            member.write(chunk)

    path, source = _with_unrelated(tmp_path, "big.npz", zeros)
    assert path.stat().st_size < size // 100
    tracemalloc.start()
    try:
        got = gp.interop.load(path, "torch", prefix="encoder", layer=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _assert_same(got, gp.interop.from_torch(source, layer=0))
    assert peak < size // 8, f"peak {peak / 2**20:.1f} MiB while loading a small layer"


def test_load_hidden_size_zero_says_so(tmp_path):
    """H = 0 is named as such (it was 'expected (0, 0) for RNN ... got (0, 0)')."""
    cases = {
        "torch": {"weight_ih": np.zeros((0, 3)), "weight_hh": np.zeros((0, 0))},
        "equinox": {"weight_ih": np.zeros((0, 3)), "weight_hh": np.zeros((0, 0))},
        "keras": {"kernel": np.zeros((3, 0)), "recurrent_kernel": np.zeros((0, 0)),
                  "bias": np.zeros(0)},
    }
    for fmt, source in cases.items():
        path = tmp_path / f"{fmt}.npz"
        np.savez(path, **source)
        message = _message(path, fmt)
        assert re.search(r"shape \(0, 0\) has hidden size H = 0; expected at least one "
                         "hidden unit", message), (fmt, message)


def test_torch_meta_sparse_and_quantized_tensors(tmp_path):
    """Tensors that hold no dense float values: the message says what they are (a meta
    tensor raised a raw NotImplementedError; a sparse one was called a dtype problem)."""
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(3, 4)
    state = lstm.state_dict()
    meta = {k: v.to("meta") for k, v in state.items()}
    sparse = {**state, "weight_hh_l0": state["weight_hh_l0"].to_sparse()}
    with warnings.catch_warnings():     # quantized tensors are deprecated in torch 2.10+
        warnings.simplefilter("ignore")
        quantized = {**state, "weight_hh_l0": torch.quantize_per_tensor(
            state["weight_hh_l0"], 0.1, 0, torch.qint8)}
    bfloat = {**state, "weight_hh_l0": state["weight_hh_l0"].to(torch.bfloat16)}
    cases = {
        "meta": (meta, r"weight_hh_l0: is a meta tensor \(a shape \(16, 4\) without values"),
        "sparse": (sparse, r"weight_hh_l0: is a sparse_coo tensor \(layout torch.sparse_coo\)"
                           r"; expected a dense one"),
        "quantized": (quantized, r"weight_hh_l0: is a quantized tensor"),
        "bfloat16": (bfloat, r"weight_hh_l0: cannot read a torch tensor of dtype "
                             r"torch.bfloat16"),
    }
    for name, (value, pattern) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(value, path)
        # the file (torch will not read quantized tensors with weights_only), the mapping
        for file in (path, None) if name != "quantized" else (None,):
            with pytest.raises(gp.InputError) as info:
                gp.interop.load(file) if file else gp.interop.from_torch(value)
            assert re.search(pattern, str(info.value)), (name, str(info.value))
