r"""Stacked recurrent networks analysed as one cell.

An L-layer network runs its layers in order at every step: layer 1 reads the
input ``x``, layer k reads the *new* output ``h^{k-1}_{t+1}`` of the layer below,

.. math::

    s^1_{t+1} = F_1(s^1_t, x_t), \qquad
    s^k_{t+1} = F_k(s^k_t, h^{k-1}_{t+1}) \quad (k = 2..L).

Its state is every layer's state, ``s = [s^1; ...; s^L]``, its fields named by
layer (``"1:c"``, ``"1:h"``, ``"2:c"``, ...). With ``A_k = dF_k / ds^k`` (layer
k's own step Jacobian), ``B_k = dF_k / dx`` (its input Jacobian) and ``H_k`` the
rows of its output in layer k's state (the field ``h``, or every row for a cell
without one, such as the LRU, whose whole state is its output), the step Jacobian
is block lower-triangular:

.. math::

    J^{kk} = A_k, \qquad J^{kj} = B_k H_{k-1} J^{k-1, j} \quad (j < k),
    \qquad J^{kj} = 0 \quad (j > k).

Routes (``docs/maths.md``, "Stacks"): ``"k:r"`` is layer k's own route r inside
its diagonal block, ``J^{k:r} = A_k^r`` placed at block (k, k); ``"k-1>k"`` is
everything layer k receives through its input from the layer below, the whole
strictly lower part of block row k, ``B_k H_{k-1} J^{k-1, :}`` (the *full* row of
layer k-1: every route of every layer below). They sum to ``J``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from gradpaths import _checks, _operator
from gradpaths._cells import Edge
from gradpaths._checks import InputError, InputTypeError
from gradpaths._protocols import Activation, has_activations, has_gauge, projected_method
from gradpaths._state import _key_name, has_output_field, layout_of, output, output_rows

Array = jax.Array


# --------------------------------------------------------------------------- state


@jax.tree_util.register_pytree_with_keys_class
class StackState(tuple):
    """The state of a :class:`Stack`: one state per layer, layer 1 first.

    A tuple (``state[0]`` is layer 1's state) whose leaves are named by layer in a
    :class:`~gradpaths.Layout`: ``"1:c"``, ``"1:h"``, ``"2:h"``, ...; ``state.h`` is
    the top layer's output (its ``h``, or its whole state for a cell without one, e.g.
    an LRU's ``[re; im]``).
    """

    __slots__ = ()

    def __new__(cls, layers: Iterable[Any]) -> StackState:
        return super().__new__(cls, tuple(layers))

    def __repr__(self) -> str:
        return f"StackState({', '.join(map(repr, self))})"

    @property
    def h(self) -> Array:
        """The top layer's output (what a readout reads): its field ``h``, or its whole
        state raveled when it has none (:func:`gradpaths._state.output`)."""
        return output(self[-1])

    def tree_flatten_with_keys(self):
        children, aux = [], []
        for k, layer in enumerate(self, 1):
            pairs, treedef = jax.tree_util.tree_flatten_with_path(layer)
            for path, leaf in pairs:
                name = ".".join(_key_name(p) for p in path) or "s"
                children.append((jax.tree_util.GetAttrKey(f"{k}:{name}"), leaf))
            aux.append((treedef, len(pairs)))
        return children, tuple(aux)

    def tree_flatten(self):
        children, aux = self.tree_flatten_with_keys()
        return [leaf for _, leaf in children], aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        layers, start = [], 0
        children = list(children)
        for treedef, count in aux:
            layers.append(jax.tree_util.tree_unflatten(treedef, children[start:start + count]))
            start += count
        return cls(layers)


# --------------------------------------------------------------------------- checks


def _output_size(cell: Any, k: int) -> int:
    """Size of layer k's output (what the layer above and a readout read): its field
    ``h``, or its whole state when it has none (:func:`gradpaths._state.output`)."""
    state = cell.initial_state() if callable(getattr(cell, "initial_state", None)) else None
    h: Any = None
    try:
        h = output(state)
        output_rows(state)                 # h must be a field: its rows are read
    except (TypeError, ValueError):        # not a pytree of arrays, or h not a field
        h = None
    if h is None or not hasattr(h, "shape") or len(h.shape) != 1:
        raise InputTypeError(
            f"layers[{k - 1}]: expected a cell whose initial_state() is a pytree of arrays "
            f"with an output field h of shape (n,) or none (then its whole state is its "
            f"output), got {type(cell).__name__} with initial_state() a "
            f"{type(state).__name__}"
        )
    return int(h.shape[0])


def _check_layers(layers: Any) -> tuple[Any, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise InputTypeError(
            f"layers: expected a list or tuple of cells, got {type(layers).__name__}")
    layers = tuple(layers)
    if not layers:
        raise InputError("layers: expected at least one cell, got an empty sequence")
    for k, cell in enumerate(layers, 1):
        if not callable(getattr(cell, "step", None)):
            raise InputTypeError(
                f"layers[{k - 1}]: expected a cell with step(params, state, x), "
                f"got {type(cell).__name__}"
            )
        if not callable(getattr(cell, "initial_state", None)):
            raise InputTypeError(f"layers[{k - 1}]: expected a cell with initial_state(), "
                            f"got {type(cell).__name__}")
        if isinstance(cell, Stack):
            raise InputTypeError(f"layers[{k - 1}]: expected a single-layer cell, got a Stack "
                            "(list its layers instead)")
    for k in range(2, len(layers) + 1):
        below = _output_size(layers[k - 2], k - 1)
        m = getattr(layers[k - 1], "input_size", None)
        if m is not None and m != below:
            raise InputError(
                f"layers[{k - 1}]: expected input_size {below} (layer {k - 1}'s output "
                f"{'h' if _has_h(layers[k - 2]) else '(its whole state)'} has size {below}), "
                f"got {m}"
            )
    if any(has_gauge(cell) for cell in layers) and not _has_h(layers[-1]):
        # a gradient from the readout enters by one output field (the stack's
        # readout_field "L:h"), which a top layer without h does not have
        raise InputError(
            f"layers[{len(layers) - 1}]: expected a top layer with an output h (a layer "
            f"below declares gauge directions, read through the top layer's h), got "
            f"{type(layers[-1]).__name__}, whose state has no h")
    return layers


def _has_h(cell: Any) -> bool:
    return has_output_field(cell.initial_state())


def _all(layers: tuple[Any, ...], attribute: str) -> bool:
    return all(callable(getattr(cell, attribute, None)) for cell in layers)


def _has_routes(cell: Any) -> bool:
    return isinstance(getattr(cell, "routes", None), tuple) and len(cell.routes) > 0


# --------------------------------------------------------------------------- the stack


@dataclasses.dataclass(frozen=True, init=False)
class Stack:
    r"""An L-layer recurrent network as one cell: layer k reads layer k-1's new output.

    .. math::

        s^1_{t+1} = F_1(s^1_t, x_t), \qquad s^k_{t+1} = F_k(s^k_t, h^{k-1}_{t+1})

    Every analysis that takes a cell takes a stack: params are a tuple of the layers'
    params, the state a :class:`StackState` (fields ``"1:c"``, ``"1:h"``, ``"2:h"``...),
    and the step Jacobian ``J`` ((d, d), ``d`` the sum of the layers' state sizes) is
    block lower-triangular in layers.

    Routes, which sum to ``J`` exactly:

    * ``"k:r"``: layer k's own route r (e.g. ``"1:carousel"``, ``"2:o"``), in the
      diagonal block (k, k) only;
    * ``"k-1>k"`` (e.g. ``"1>2"``): everything layer k receives through its input
      weights from layer k-1's new output, ``B_k H_{k-1} J^{k-1, j}`` for every
      ``j < k``: the whole strictly lower part of block row k.

    The closed form stacks the layers' own edges and adds the inter-layer routes as
    one matrix-free edge (``B_k`` is the layer's input linearisation, applied without
    forming it). It exists when every layer has one.

    A layer's output (what the layer above and a readout read) is its state's field
    ``h``, or, for a cell without one (the LRU), its whole state raveled (an LRU's
    ``[Re x; Im x]``, of which the next layer's input weights take the linear output
    map ``Re(C x)``).

    Args:
      layers: the cells, layer 1 (reading ``x``) first. Layer k's ``input_size``
        must equal layer k-1's output size.

    Example::

        stack = gp.Stack([gp.LSTM(3, 8), gp.LSTM(8, 5)])
        params = stack.init(jax.random.key(0))
        J = gp.step_jacobians(stack, params, xs)     # (T, 26, 26), zero above the layer blocks
        J.block("2:h", "1:c")                        # d h^2_{t+1} / d c^1_t
    """

    layers: tuple[Any, ...]

    def __init__(self, layers: Sequence[Any]) -> None:
        object.__setattr__(self, "layers", _check_layers(layers))

    # -- sizes and names

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def input_size(self) -> int | None:
        """m, the width of ``x`` (layer 1's input size)."""
        return getattr(self.layers[0], "input_size", None)

    @property
    def hidden_size(self) -> int:
        """The size of the top layer's output (what a readout reads): its ``h``'s, or its
        whole state's for a cell without ``h`` (an ``LRU(m, N)``: 2N)."""
        return _output_size(self.layers[-1], len(self.layers))

    @property
    def routes(self) -> tuple[str, ...]:
        """``"k:r"`` for each layer's routes and ``"k-1>k"`` between layers, bottom up;
        empty when a layer defines no routes."""
        if not all(_has_routes(cell) for cell in self.layers):
            return ()
        out: list[str] = []
        for k, cell in enumerate(self.layers, 1):
            if k > 1:
                out.append(f"{k - 1}>{k}")
            out += [f"{k}:{r}" for r in cell.routes]
        return tuple(out)

    def layer(self, k: int) -> Any:
        """Layer ``k`` (1-based, as in the route and field names)."""
        expected = f"an int in 1..{len(self.layers)}"
        k = _checks.scalar(k, "layer", integer=True, expected=expected)
        if not 1 <= k <= len(self.layers):
            raise InputError(f"layer: expected {expected}, got {k!r}")
        return self.layers[k - 1]

    # -- gauge directions (present when a layer has them)

    @property
    def gauge_directions(self) -> Callable[[Any], Array] | None:
        """``gauge_directions(state)``: (d, g) the layers' gauge tangents, each in its
        own layer's rows (``g`` their total number); None unless some layer declares
        gauge directions (:class:`gradpaths._protocols.GaugedCell`). A layer's gauge
        direction moves no later output of that layer, so no later state of the layers
        above it: it is a gauge direction of the stack."""
        if not any(has_gauge(cell) for cell in self.layers):
            return None
        return self._gauge_directions

    def _gauge_directions(self, state: Any) -> Array:
        cols = []
        sizes = [layout_of(s).size for s in state]
        for k, (cell, s) in enumerate(zip(self.layers, state)):
            if has_gauge(cell):
                V = cell.gauge_directions(s)
                cols.append(jnp.zeros((sum(sizes), V.shape[1]), V.dtype).at[
                    sum(sizes[:k]):sum(sizes[:k + 1])].set(V))
        return jnp.concatenate(cols, axis=1)

    def readout_field(self, block: Any = None) -> str | None:
        """What a gradient from the readout enters by (used where some layer declares
        gauge directions): for the whole state (``block`` None) the top layer's output
        ``"L:h"``; for layer k's block (all its fields) or a block of its fields, the
        layer's own :meth:`readout_field` named by layer (``"k:h"`` for an sLSTM
        layer's block ``ds^k/ds^k``: what the layer above reads of it), None where the
        layer has no gauge directions (the block is measured whole)."""
        if block is None:
            return f"{len(self.layers)}:h"
        fields = block[0] if isinstance(block[0], tuple) else (block[0],)
        heads = {f.split(":", 1)[0] for f in fields}
        if len(heads) != 1 or not (head := heads.pop()).isdigit() \
                or not 1 <= int(head) <= len(self.layers):
            return None
        cell = self.layers[int(head) - 1]
        if not has_gauge(cell):
            return None
        own = tuple(f.split(":", 1)[1] for f in fields)
        whole = set(own) == set(layout_of(self.layers[int(head) - 1].initial_state()).names)
        field = cell.readout_field(None if whole else (own if len(own) > 1 else own[0],) * 2)
        return None if field is None else f"{head}:{field}"

    # -- params and states

    def init(self, key: Array, **options: Any) -> tuple[Any, ...]:
        """Each layer's ``init`` with its own key (split from ``key``) and ``options``."""
        keys = jax.random.split(key, len(self.layers))
        return tuple(cell.init(k, **options) for cell, k in zip(self.layers, keys))

    def initial_state(self, dtype: Any = None) -> StackState:
        """Each layer's ``initial_state(dtype)`` (zeros)."""
        return StackState(cell.initial_state(dtype) for cell in self.layers)

    def check_params(self, params: Any) -> None:
        """Raise TypeError/ValueError unless ``params`` is a tuple of the layers' params."""
        if not isinstance(params, (tuple, list)) or hasattr(params, "_fields"):
            raise InputTypeError(f"params: expected a tuple of {len(self.layers)} layers' params, "
                                 f"got {type(params).__name__}")
        if len(params) != len(self.layers):
            raise InputError(f"params: expected {len(self.layers)} layers' params, "
                             f"got {len(params)}")
        for k, (cell, p) in enumerate(zip(self.layers, params), 1):
            if callable(getattr(cell, "check_params", None)):
                try:
                    cell.check_params(p)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"layer {k}: {err}") from err

    def _check_call(self, params: Any, state: Any, x: Array) -> None:
        self.check_params(params)
        if not isinstance(state, tuple) or len(state) != len(self.layers):
            raise InputTypeError(f"state: expected a StackState of {len(self.layers)} layers' "
                            f"states, got {type(state).__name__}")
        m = self.input_size
        if m is not None and tuple(x.shape) != (m,):
            raise InputError(f"x: expected shape ({m},) for layer 1, got {tuple(x.shape)}")

    # -- one step

    def step(self, params: Any, state: Any, x: Array,
             read: Callable[[str, Array], Array] | None = None) -> StackState:
        """One step of every layer, bottom up; pure.

        ``read(route, value)`` (as in :meth:`gradpaths.LSTM.forward`) cuts routes:
        layer k's own edges read through ``"k:r"``, its input through ``"k-1>k"``.
        The input fed up is the lower layer's output with *all* its routes kept,
        so ``"k-1>k"`` carries the whole lower block row whatever else is cut.
        """
        self._check_call(params, state, x)
        new, inp = [], x
        for k, (cell, p, s) in enumerate(zip(self.layers, params, state), 1):
            if read is None:
                s_new = cell.step(p, s, inp)
                new.append(s_new)
                inp = output(s_new)
                continue
            x_k = inp if k == 1 else read(f"{k - 1}>{k}", inp)
            new.append(cell.step(p, s, x_k, lambda r, v, k=k: read(f"{k}:{r}", v)))
            if k < len(self.layers):
                inp = output(cell.step(p, s, inp))
        return StackState(new)

    # -- activations (gate saturation), of the layers that report theirs

    @property
    def activation_names(self) -> tuple[str, ...]:
        """``"k:g"`` for each activation ``g`` of each layer that reports its
        activations (e.g. ``"1:f"``, ``"2:tanh(c)"``), bottom up; empty when none does."""
        return tuple(f"{k}:{g}" for k, cell in enumerate(self.layers, 1)
                     if has_activations(cell) for g in cell.activation_names)

    def activations(self, params: Any, state: Any, x: Array) -> dict[str, Activation]:
        """``"k:g"`` -> layer k's :class:`~gradpaths.Activation` ``g`` at this step, each
        layer reading the new output of the layer below (as :meth:`step`)."""
        return self.step_activations(params, state, x)[1]

    def step_activations(self, params: Any, state: Any, x: Array
                         ) -> tuple[StackState, dict[str, Activation]]:
        """:meth:`step` and :meth:`activations` in one pass (a layer with ``project``
        and ``activations_projected`` gives both from one forward pass)."""
        new, out, inp = [], {}, x
        for k, (cell, p, s) in enumerate(zip(self.layers, params, state), 1):
            fused = projected_method(cell, "activations_projected")
            if fused is not None:
                s_new, acts = fused(p, s, cell.project(p, inp[None])[0])
            else:
                s_new = cell.step(p, s, inp)
                acts = cell.activations(p, s, inp) if has_activations(cell) else {}
            out.update({f"{k}:{g}": a for g, a in acts.items()})
            new.append(s_new)
            inp = output(s_new)
        return StackState(new), out

    # -- closed form (present when every layer has one)

    @property
    def edges(self) -> Callable[..., dict[str, Any]] | None:
        """``edges(params, state, x)``: the entry edges of one step (closed form); None
        unless every layer has a closed form."""
        if not _all(self.layers, "edges"):
            return None
        return lambda params, state, x: self._linearise(params, state, x)[1]

    @property
    def linearise(self) -> Callable[..., tuple[StackState, dict[str, Any]]] | None:
        """``linearise(params, state, x) -> (next_state, edges)``; None unless every
        layer has a closed form."""
        return self._linearise if _all(self.layers, "edges") else None

    def fixed_matrices(self, params: Any) -> dict[str, tuple[str, Array]]:
        """The layers' parameter-only edge matrices, named by layer:
        ``"k:r" -> ("k:field", M)``."""
        out = {}
        for k, (cell, p) in enumerate(zip(self.layers, params), 1):
            if callable(getattr(cell, "fixed_matrices", None)):
                for r, (src, M) in cell.fixed_matrices(p).items():
                    out[f"{k}:{r}"] = (f"{k}:{src}", M)
        return out

    def _linearise(self, params: Any, state: Any, x: Array
                   ) -> tuple[StackState, dict[str, Any]]:
        """The next state and the entry edges: each layer's own edges renamed by layer,
        and one :class:`~gradpaths._operator.MatrixFreeEdge` for all ``"k-1>k"``."""
        self._check_call(params, state, x)
        new, own, inputs, rows = [], [], [], []
        edges: dict[str, Edge | _operator.MatrixFreeEdge] = {}
        inp = x
        for k, (cell, p, s) in enumerate(zip(self.layers, params, state), 1):
            s_new, layer_edges = _operator.linearise(cell, p, s, inp)
            lay = layout_of(s)
            own.append(_operator._Closed(lay, layer_edges, s_new, True, {}))
            rows.append(output_rows(s))
            for r, e in layer_edges.items():
                edges[f"{k}:{r}"] = Edge(
                    f"{k}:{e.source}", {f"{k}:{f}": v for f, v in e.rows.items()}, e.matrix)
            if k > 1:
                def fk(u, cell=cell, p=p, s=s, lay=lay):
                    return lay.ravel(cell.step(p, s, u))
                _, B = jax.linearize(fk, inp)
                inputs.append((B, jax.linear_transpose(B, inp)))
            new.append(s_new)
            inp = output(s_new)
        nxt = StackState(new)
        if len(self.layers) > 1:
            between = self._between(own, inputs, rows, layout_of(nxt).ravel(nxt).dtype)
            for k in range(2, len(self.layers) + 1):
                edges[f"{k - 1}>{k}"] = between
        return nxt, edges

    def _between(self, own: list[Any], inputs: list[Any], h_rows: list[slice], dtype: Any
                 ) -> _operator.MatrixFreeEdge:
        """The inter-layer routes as one matrix-free edge.

        Push (``V`` (d, K)): ``y_1 = A_1 V_1``, ``e_k = B_k H_{k-1} y_{k-1}``,
        ``y_k = A_k V_k + e_k``; the output is ``w_k e_k`` in layer k's rows. Pull:
        the transpose, top down: the cotangent of ``e_k`` is ``w_k G_k`` plus what
        reaches ``y_k`` from above; ``A_k^T`` of the latter goes to layer k's
        columns, ``H^T B_k^T`` of the former to layer k-1's output.
        """
        L = len(self.layers)
        sl = [slice(sum(lay.layout.size for lay in own[:k]),
                    sum(lay.layout.size for lay in own[:k + 1])) for k in range(L)]
        routes = tuple(f"{k}>{k + 1}" for k in range(1, L))
        full = _operator.FULL

        def top(w: dict[str, Any]) -> int:
            return max(int(r.split(">")[1]) for r in w) - 1     # 0-based top layer

        def push(V: Array, w: dict[str, Any]) -> Array:
            out = jnp.zeros_like(V)
            y = own[0].apply(full, V[sl[0]])
            for k in range(1, top(w) + 1):
                B = inputs[k - 1][0]
                e = jax.vmap(B, in_axes=1, out_axes=1)(y[h_rows[k - 1]])
                name = f"{k}>{k + 1}"
                if name in w:
                    out = out.at[sl[k]].add(w[name] * e)
                if k < top(w):
                    y = own[k].apply(full, V[sl[k]]) + e
            return out

        def pull(G: Array, w: dict[str, Any]) -> Array:
            out = jnp.zeros_like(G)
            q = None                      # cotangent reaching y_k from above
            for k in range(top(w), 0, -1):
                name = f"{k}>{k + 1}"
                c_e = w[name] * G[sl[k]] if name in w else jnp.zeros_like(G[sl[k]])
                if q is not None:
                    out = out.at[sl[k]].add(own[k].apply_T(full, q))
                    c_e = c_e + q
                BT = inputs[k - 1][1]
                g_h = jax.vmap(lambda g, BT=BT: BT(g)[0], in_axes=1, out_axes=1)(c_e)
                q = jnp.zeros((own[k - 1].layout.size, G.shape[1]), G.dtype
                              ).at[h_rows[k - 1]].set(g_h)
            out = out.at[sl[0]].add(own[0].apply_T(full, q))
            return out

        return _operator.MatrixFreeEdge(routes, push, pull, dtype)


# --------------------------------------------------------------------------- bidirectional


@dataclasses.dataclass(frozen=True)
class Bidirectional:
    r"""A bidirectional layer: two recurrences over one sequence, in opposite orders.

    .. math::

        s^f_{t+1} = F_f(s^f_t, x_t) \quad (t = 0..T-1), \qquad
        s^r_{t+1} = F_r(s^r_t, x_{T-1-t}),

    and the output at step t is ``[h^f_{t+1}; h^r_{T-t}]`` (PyTorch's and Keras'
    ``out``). The directions share no state, so each is its own cell, analysed over
    its own input order: ``reverse`` over the sequence read backwards in time
    (:func:`reverse_time`: ``xs[::-1]`` for one sequence (T, m), ``xs[:, ::-1]`` for a
    batch (B, T, m)). Params are the pair ``(forward params, reverse params)``.

    A stack of bidirectional layers couples the directions (layer k reads both
    directions' outputs of layer k-1 at every step, and the reverse one is only known
    after the whole sequence has been read), so it is no recurrence in one time
    direction and no :class:`Stack`; import its layers one by one instead.

    Attributes:
      forward, reverse: the two cells (same input size).
    """

    forward: Any
    reverse: Any

    #: What an analysis that takes one cell says when given a Bidirectional.
    analyse_instead: ClassVar[str] = (
        "a Bidirectional layer is two recurrences, one per direction: analyse "
        "model.forward with params[0] over xs and model.reverse with params[1] over "
        "model.inputs(xs)[1] (xs read backwards in time); gp.explain_bidirectional "
        "explains both")

    def __post_init__(self) -> None:
        for name in ("forward", "reverse"):
            if not callable(getattr(getattr(self, name), "step", None)):
                raise InputTypeError(f"{name}: expected a cell with step(params, state, x), "
                                f"got {type(getattr(self, name)).__name__}")
        m_f = getattr(self.forward, "input_size", None)
        m_r = getattr(self.reverse, "input_size", None)
        if m_f is not None and m_r is not None and m_f != m_r:
            raise InputError(f"reverse: expected input_size {m_f} (the forward cell's), "
                             f"got {m_r}")

    @property
    def input_size(self) -> int | None:
        return getattr(self.forward, "input_size", None)

    def init(self, key: Array, **options: Any) -> tuple[Any, Any]:
        """Each direction's ``init`` with its own key."""
        kf, kr = jax.random.split(key)
        return self.forward.init(kf, **options), self.reverse.init(kr, **options)

    def inputs(self, xs: Any) -> tuple[Array, Array]:
        """What each direction reads: ``(xs, reverse_time(xs))``, for one sequence
        (T, m) or a batch (B, T, m)."""
        xs = jnp.asarray(xs)
        return xs, reverse_time(xs)

    def outputs(self, params: tuple[Any, Any], xs: Any, state0: Any = None) -> Array:
        """The layer's output (T, H_f + H_r): ``[h^f_{t+1}; h^r_{T-t}]`` at step t; for
        a batch ``xs`` (B, T, m), (B, T, H_f + H_r).

        ``state0``: None (zeros) or the pair of the directions' initial states (shared
        by every sequence of a batch)."""
        from gradpaths._jacobians import unroll

        xs = jnp.asarray(xs)
        if xs.ndim == 3:
            return jnp.stack([self.outputs(params, x, state0) for x in xs])
        f0, r0 = (None, None) if state0 is None else state0
        h_f = jax.vmap(output)(unroll(self.forward, params[0], xs, f0))[1:]
        h_r = jax.vmap(output)(unroll(self.reverse, params[1], reverse_time(xs), r0))[1:]
        return jnp.concatenate([h_f, reverse_time(h_r)], axis=-1)


def reverse_time(xs: Array) -> Array:
    """A sequence read backwards in time: ``xs[::-1]`` for (T, m), ``xs[:, ::-1]`` for a
    batch (B, T, m) (time is the second-to-last axis either way)."""
    if xs.ndim < 2:
        raise InputError(f"xs: expected shape (T, m) or (B, T, m), got {tuple(xs.shape)}")
    return jnp.flip(xs, axis=-2)


_READS = ("x_0 .. x_{T-1}", "x_{T-1} .. x_0")     # the order each direction reads xs in


class BidirectionalExplanation(tuple):
    """The explanations of both directions of a :class:`Bidirectional`; ``str`` prints
    them side by side. Attributes ``forward`` and ``reverse``."""

    __slots__ = ()

    def __new__(cls, forward: Any, reverse: Any) -> BidirectionalExplanation:
        return super().__new__(cls, (forward, reverse))

    @property
    def forward(self) -> Any:
        return self[0]

    @property
    def reverse(self) -> Any:
        return self[1]

    def to_dict(self) -> dict[str, Any]:
        """Both explanations as plain JSON types (each :meth:`gradpaths.Explanation.to_dict`),
        with the order each direction reads the sequence in: ``{"kind":
        "bidirectional", "forward": {..., "reads": "x_0 .. x_{T-1}"}, "reverse": {...,
        "reads": "x_{T-1} .. x_0"}}``. The reverse direction's steps (``local``,
        ``peak_steps``) count from the sequence's last step: its step t reads
        ``x_{T-1-t}``."""
        return dict(kind="bidirectional",
                    forward={**self.forward.to_dict(), "reads": _READS[0]},
                    reverse={**self.reverse.to_dict(), "reads": _READS[1]})

    def __str__(self) -> str:
        left = [f"forward (reads {_READS[0]})", ""] + str(self.forward).splitlines()
        right = [f"reverse (reads {_READS[1]})", ""] + str(self.reverse).splitlines()
        width = max(len(line) for line in left) + 4
        rows = max(len(left), len(right))
        left += [""] * (rows - len(left))
        right += [""] * (rows - len(right))
        return "\n".join((a.ljust(width) + b).rstrip() for a, b in zip(left, right))


def explain_bidirectional(model: Bidirectional, params: tuple[Any, Any], xs: Any,
                          state0: Any = None, **options: Any) -> BidirectionalExplanation:
    """:func:`gradpaths.explain` of each direction of a bidirectional layer over its own
    input order (the reverse one over each sequence read backwards in time).

    Args:
      model: a :class:`Bidirectional` (e.g. from ``gp.interop.from_torch`` of a
        one-layer ``bidirectional=True`` module).
      params: ``(forward params, reverse params)``.
      xs: the layer's inputs, one sequence (T, m) or a batch (B, T, m), in the
        sequences' own order.
      state0: None or ``(forward state0, reverse state0)``.
      **options: passed to :func:`gradpaths.explain` (``warmup``, ``seed``...).

    Returns:
      :class:`BidirectionalExplanation` ``(forward, reverse)``; print it to see both
      side by side.
    """
    from gradpaths._explain import explain

    if not isinstance(model, Bidirectional):
        raise InputTypeError(f"model: expected a gp.Bidirectional, got {type(model).__name__}")
    if not isinstance(params, (tuple, list)) or len(params) != 2:
        raise InputTypeError("params: expected the pair (forward params, reverse params), "
                        f"got {type(params).__name__}")
    f0, r0 = (None, None) if state0 is None else state0
    xs = jnp.asarray(xs)
    return BidirectionalExplanation(
        explain(model.forward, params[0], xs, f0, **options),
        explain(model.reverse, params[1], reverse_time(xs), r0, **options))
