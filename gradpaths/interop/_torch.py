r"""PyTorch ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their ``*Cell`` versions.

PyTorch stacks the gates along the rows: ``weight_ih`` (gH, m), ``weight_hh``
(gH, H), ``bias_ih`` and ``bias_hh`` (gH,), in the order i, f, g, o (LSTM;
``g`` is gradpaths' block input ``z``), r, z, n (GRU) or one block (RNN). The
two biases add, except the GRU's ``b_hn``, which sits inside the reset product:

.. math::

    n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))

Layers and directions of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` are keyed
``_l{k}`` and ``_l{k}_reverse``; the cells have no suffix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from gradpaths import _checks
from gradpaths._checks import InputError, InputTypeError
from gradpaths._stack import Bidirectional, Stack
from gradpaths.interop import _common
from gradpaths.interop._common import MissingKeyError, Reader

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(?:_l(\d+)(_reverse)?)?$")
_KINDS = {4: "LSTM", 3: "GRU", 1: "RNN"}
_GATES = {"LSTM": ("i", "f", "z", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",)}
_MODULES = {
    "LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN",
    "LSTMCell": "LSTM", "GRUCell": "GRU", "RNNCell": "RNN",
}
DIRECTIONS = ("forward", "reverse")
_PROJ = (
    "proj_size > 0 is not supported: with a projection h has size P != H and "
    "h' = W_hr (o * tanh(c')); gradpaths' LSTM has h and c of one size"
)


def _module(source: Any, prefix: str) -> tuple[dict[str, Any], str, str | None]:
    """State dict, kind and nonlinearity of a live torch module (``prefix``: a submodule)."""
    try:
        module = source.get_submodule(prefix) if prefix else source
    except AttributeError as err:
        raise MissingKeyError(f"prefix {prefix!r}: no such submodule ({err})") from err
    names = _common.class_names(module)
    torch_names = [c.__name__ for c in type(module).__mro__
                   if c.__module__.startswith("torch.nn") and c.__name__ in _MODULES]
    if not torch_names:
        raise InputError(
            f"source: expected torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell, got "
            f"{names[0]}; pass the recurrent submodule (prefix='name.of.it') or its state_dict()"
        )
    if getattr(module, "proj_size", 0):
        raise InputError(f"{_PROJ} (module has proj_size={module.proj_size})")
    kind = _MODULES[torch_names[0]]
    nonlinearity = getattr(module, "nonlinearity", None) if kind == "RNN" else None
    return dict(module.state_dict()), kind, nonlinearity


def _parse(reader: Reader) -> dict[tuple[int | None, bool], set[str]]:
    """Group the keys by (layer, reverse); None is the layer of a ``*Cell``."""
    groups: dict[tuple[int | None, bool], set[str]] = {}
    unknown = []
    for key in reader.flat:
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        name, layer, reverse = match.groups()
        groups.setdefault((None if layer is None else int(layer), bool(reverse)), set()).add(name)
    if unknown:
        raise InputError(
            f"state dict: unknown key(s) {_common.listing(reader.name(k) for k in unknown)}; "
            "expected weight_ih, weight_hh, bias_ih, bias_hh (suffixed _l{k} or _l{k}_reverse "
            "for nn.LSTM/GRU/RNN); for a submodule of a larger model pass prefix='its.name'"
        )
    return groups


def _suffix(layer: int | None, reverse: bool) -> str:
    return "" if layer is None else f"_l{layer}" + ("_reverse" if reverse else "")


class _Layout(NamedTuple):
    """The structure of a state dict: its layers (``[None]`` for a cell), directions, biases."""

    layers: list[int | None]
    bidirectional: bool
    has_bias: bool

    def groups(self) -> list[tuple[int | None, bool]]:
        reverse = (False, True) if self.bidirectional else (False,)
        return [(k, rev) for k in self.layers for rev in reverse]


def _layout(reader: Reader, groups: dict[tuple[int | None, bool], set[str]]) -> _Layout:
    """Check the whole dict: layers 0..L-1, both directions or one, the same keys everywhere."""
    layers = sorted({k for k, _ in groups}, key=lambda k: -1 if k is None else k)
    if None in layers and len(layers) > 1:
        raise InputError("state dict: mixes cell keys (weight_ih) and layer keys (weight_ih_l0)")
    numbered = [k for k in layers if k is not None]
    if numbered != list(range(len(numbered))):
        gap = min(set(range(max(numbered) + 1)) - set(numbered))
        raise MissingKeyError(
            f"state dict: layers {numbered} are not 0..{max(numbered)}; missing the keys of layer "
            f"{gap} (weight_ih_l{gap}, weight_hh_l{gap}, ...)"
        )
    names = set().union(*groups.values()) | {"weight_ih", "weight_hh"}
    if "weight_hr" in names:
        k, rev = next(group for group, have in groups.items() if "weight_hr" in have)
        raise InputError(f"{_PROJ} (key {reader.name('weight_hr' + _suffix(k, rev))} present)")
    if ("bias_ih" in names) != ("bias_hh" in names):
        key = "bias_hh" if "bias_ih" in names else "bias_ih"
        raise MissingKeyError(
            f"{reader.name(key + _suffix(layers[0], False))}: missing; PyTorch stores both "
            "biases (bias_ih and bias_hh) or neither (bias=False)"
        )
    layout = _Layout(layers, any(rev for _, rev in groups), "bias_ih" in names)
    for k, rev in layout.groups():
        missing = sorted(names - groups.get((k, rev), set()))
        if missing:
            raise MissingKeyError(
                f"{reader.name(missing[0] + _suffix(k, rev))}: missing (other layers or "
                "directions have it, and every layer needs weight_ih and weight_hh)"
            )
    return layout


def _choose(layout: _Layout, layer: int, direction: str) -> tuple[int | None, bool]:
    """The group of the requested layer and direction, or a ValueError."""
    if layout.layers == [None]:
        if layer != 0 or direction != "forward":
            raise InputError(
                f"layer={layer}, direction={direction!r}: the source is a single cell "
                "(keys without _l{k}); use layer=0, direction='forward'"
            )
        return (None, False)
    if layer >= len(layout.layers):
        raise InputError(
            f"layer: expected 0..{len(layout.layers) - 1} (the state dict has "
            f"{len(layout.layers)} layer(s)), got {layer}"
        )
    if direction == "reverse" and not layout.bidirectional:
        raise InputError(
            f"direction='reverse': the state dict has no *_l{layer}_reverse keys "
            "(the module is not bidirectional)"
        )
    return (layer, direction == "reverse")


def _read(reader: Reader, layout: _Layout, g: int, H: int) -> dict[tuple, dict[str, Any]]:
    """Every group's arrays, shapes checked: layer k > 0 reads num_directions * H inputs."""
    D = 2 if layout.bidirectional else 1
    blocks = {}
    for k, rev in layout.groups():
        s = _suffix(k, rev)
        if k in (None, 0):
            m = _common.matrix_shape(reader, "weight_ih" + s, f"({g}*H, input)")[1]
            m_sym = "(input)"
        else:
            m, m_sym = D * H, f"(num_directions * H = {D}*{H})"
        got = {
            "weight_ih": reader.take("weight_ih" + s, (g * H, m), f"({g}*H, m) with m {m_sym}"),
            "weight_hh": reader.take("weight_hh" + s, (g * H, H), f"({g}*H, H)"),
        }
        if layout.has_bias:
            for name in ("bias_ih", "bias_hh"):
                got[name] = reader.take(name + s, (g * H,), f"({g}*H,)")
        blocks[(k, rev)] = got
    return blocks


def from_torch(
    source: Any,
    *,
    layer: int | None = None,
    direction: str | None = None,
    nonlinearity: str | None = None,
    prefix: str = "",
    dtype: Any = None,
) -> tuple[Any, Any]:
    r"""Import a PyTorch recurrent module: the whole stack, or one layer and direction.

    PyTorch's LSTM (gates i, f, g, o stacked in ``weight_ih`` (4H, m) and
    ``weight_hh`` (4H, H)) becomes :class:`gradpaths.LSTM` with ``W.z = W_ig``,
    ``W.i = W_ii``, ... and ``b = b_ih + b_hh``; the GRU (r, z, n) becomes
    :class:`gradpaths.GRU` with ``b.n = b_in`` and ``b_hn`` kept inside the reset
    product; the RNN becomes :class:`gradpaths.RNN`. ``gp.unroll`` then reproduces
    PyTorch's outputs ``h_t`` (and final ``c``) to round-off.

    Args:
      source: an ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``,
        ``nn.GRUCell`` or ``nn.RNNCell`` (or a model holding one, with
        ``prefix``), or a mapping like its ``state_dict()`` (tensors or NumPy
        arrays, e.g. a loaded ``.npz``). The kind is told from the keys and the
        shapes: ``weight_hh`` of shape (gH, H) with g = 4, 3, 1.
      layer: None (default) for the whole module: a cell for a ``*Cell`` or a
        one-layer module, a :class:`gradpaths.Stack` for ``num_layers > 1``, a
        :class:`gradpaths.Bidirectional` for a one-layer bidirectional module.
        An int ``k`` picks layer k alone (keys ``*_l{k}``; 0 for a cell), whose
        input is then the outputs of the layers below.
      direction: None, ``"forward"`` or ``"reverse"`` (keys ``*_l{k}_reverse`` of a
        bidirectional module; run the imported cell on the reversed sequence). None
        is ``"forward"``, except that a one-layer bidirectional module imported
        whole gives both directions. A multi-layer bidirectional module couples its
        directions between layers and is refused whole: pick ``layer=`` and
        ``direction=``.
      nonlinearity: ``"tanh"`` or ``"relu"`` for an RNN; a state dict does not
        record it, so None means tanh (or the module's own, given a module).
      prefix: the submodule's name in a larger model's state dict or module
        (``"encoder.rnn"`` for keys ``encoder.rnn.weight_ih_l0``, ...).
      dtype: of the params; None follows the source (float64 stays float64 under x64).

    Returns:
      ``(cell, params)``: a gradpaths ``LSTM``/``GRU``/``RNN`` of input size m
      (for layer k > 0 that is H times the number of directions) and its params; or
      ``(gp.Stack, tuple of the layers' params)``; or ``(gp.Bidirectional,
      (forward params, reverse params))``.

    Raises:
      ValueError: unknown keys, shapes that do not fit, a layer or direction not in
        the source, ``proj_size > 0`` (not supported), a bad ``nonlinearity``.
      KeyError: a missing key (the error is also a ValueError).

    Example::

        lstm = torch.nn.LSTM(3, 8, num_layers=2)
        stack, params = gp.interop.from_torch(lstm.state_dict())   # both layers
        cell, params1 = gp.interop.from_torch(lstm.state_dict(), layer=1)
        states = gp.unroll(cell, params1, h0s)   # h0s: (T, 8), layer 0's outputs
    """
    if direction is not None:
        _checks.check_choice(direction, "direction", DIRECTIONS)
    if layer is not None:
        _checks.check_positive_int(layer, "layer", allow_zero=True)
    if nonlinearity is not None:
        _checks.check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
    module_kind = module_nonlinearity = None
    if isinstance(source, Mapping):
        flat = _common.select(_common.flatten(source, ".", "state dict"), prefix, ".")
    elif callable(getattr(source, "state_dict", None)):
        flat, module_kind, module_nonlinearity = _module(source, prefix)
        prefix = ""
    else:
        raise InputTypeError(
            f"source: expected a torch.nn module or a state dict mapping, "
            f"got {type(source).__name__}"
        )
    reader = Reader(flat, prefix=prefix, sep=".")
    layout = _layout(reader, _parse(reader))
    whole = _whole(layout, layer, direction)
    chosen = None if whole else _choose(layout, layer or 0, direction or "forward")

    # kind and H from the first weight_hh; then every group's shapes are checked
    first = "weight_hh" + _suffix(layout.layers[0], False)
    gH, H = _common.matrix_shape(reader, first, "(g*H, H)")
    g = _common.gate_count((gH, H), 0, reader.name(first), _KINDS)
    kind = _KINDS[g]
    if module_kind is not None and module_kind != kind:
        raise InputError(f"weight_hh: shape ({gH}, {H}) does not fit a torch {module_kind}")
    if kind == "RNN":
        if nonlinearity is not None and module_nonlinearity not in (None, nonlinearity):
            raise InputError(
                f"nonlinearity: the module uses {module_nonlinearity!r}, got {nonlinearity!r}"
            )
        nonlinearity = nonlinearity or module_nonlinearity or "tanh"
    elif nonlinearity is not None:
        raise InputError(f"nonlinearity: applies to an RNN only; the source is a torch {kind}")
    blocks = _read(reader, layout, g, H)
    if whole == "refused":
        _refuse_bidirectional(layout)
    if chosen is not None:
        return _build(blocks[chosen], kind, H, layout.has_bias, nonlinearity, dtype)
    parts = {key: _build(blocks[key], kind, H, layout.has_bias, nonlinearity, dtype)
             for key in layout.groups()}
    if whole == "bidirectional":
        (f, pf), (r, pr) = parts[(0, False)], parts[(0, True)]
        return Bidirectional(f, r), (pf, pr)
    return Stack([c for c, _ in parts.values()]), tuple(p for _, p in parts.values())


def _whole(layout: _Layout, layer: int | None, direction: str | None) -> str | None:
    """``"stack"`` or ``"bidirectional"`` when the whole multi-part module is wanted
    (``layer`` None), None for one cell, ``"refused"`` for a bidirectional stack."""
    if layer is not None or layout.layers == [None]:
        return None
    if layout.bidirectional:
        if len(layout.layers) > 1:
            return "refused"             # after the shapes are checked
        return None if direction is not None else "bidirectional"
    if direction == "reverse":
        return None                      # _choose names the missing *_reverse keys
    return "stack" if len(layout.layers) > 1 else None


def _refuse_bidirectional(layout: _Layout) -> None:
    raise _checks.InputError(
        f"layer=None: the state dict is a {len(layout.layers)}-layer bidirectional module, "
        "whose layer k reads both directions' outputs of layer k-1 at every step (the "
        "reverse ones exist only after the whole sequence), so it is no single recurrence; "
        "import one layer and direction with layer=k, direction='forward'|'reverse' and "
        "feed it the outputs of the layers below"
    )


def _build(got: dict[str, Any], kind: str, H: int, has_bias: bool, nonlinearity: str | None,
           dtype: Any) -> tuple[Any, Any]:
    """One layer and direction's ``(cell, params)`` from its checked arrays."""
    m = got["weight_ih"].shape[1]
    gates = _GATES[kind]
    W = _common.split(got["weight_ih"], gates, axis=0)
    R = _common.split(got["weight_hh"], gates, axis=0)
    zero = _common.zeros(H)
    b_ih = _common.split(got["bias_ih"], gates, 0) if has_bias else dict.fromkeys(gates, zero)
    b_hh = _common.split(got["bias_hh"], gates, 0) if has_bias else dict.fromkeys(gates, zero)
    sources = list(got.values())
    if kind == "LSTM":
        return _common.lstm(
            m, H, {q: [W[q]] for q in gates}, {q: [R[q]] for q in gates},
            {q: [b_ih[q], b_hh[q]] for q in gates}, dtype, sources,
        )
    if kind == "GRU":
        b = {"r": [b_ih["r"], b_hh["r"]], "z": [b_ih["z"], b_hh["z"]], "n": [b_ih["n"]]}
        return _common.gru(
            m, H, {q: [W[q]] for q in gates}, {q: [R[q]] for q in gates}, b, [b_hh["n"]],
            dtype, sources,
        )
    assert nonlinearity is not None, "from_torch resolves an RNN's nonlinearity before building"
    return _common.rnn(m, H, [W["h"]], [R["h"]], [b_ih["h"], b_hh["h"]], nonlinearity, dtype,
                       sources)
