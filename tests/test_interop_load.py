"""``gp.interop.load``: weights files read into the importers, and clear errors."""

from __future__ import annotations

import pickle
import sys

import jax
import numpy as np
import pytest
from interop_cases import CASES, DIRECTIONS, check, load, source_of

import gradpaths as gp
from gradpaths.interop import _load


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
        ((tmp_path,), {}, gp.InputError, "no such file"),
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
        ((text, "torch"), {}, gp.InputError, "cannot read .*notes.npz.* as .npz"),
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
