r"""The step Jacobian operator: one place where a step's Jacobian is formed or applied.

Every analysis of gradpaths stands on the linearisation of one step,
``s' = F(s, x)``, at the state it reaches:

* ``matrix(spec)``: the (size, size) Jacobian ``J`` of a *spec* (below);
* ``apply(spec, V) = J V`` for a block of tangents ``V`` (size, k), without ``J``;
* ``apply_T(spec, G) = J^T G`` for a block of cotangents, without ``J``;
* ``apply_many(specs, V)`` / ``apply_T_many``: one column per spec, all specs of
  an analysis pushed together, so that each recurrent matrix is read once per step
  (one matrix-matrix product per stacked group of edges, not one matrix-vector
  product per spec and route); with ``which`` (an int array, traced or not) column
  ``j`` belongs to ``specs[which[j]]`` instead, so that an analysis can push only
  some of its specs (those not yet converged) through a narrower product;
* ``next``: the state ``s'``.

A *spec* chooses the Jacobian sequence: ``routes`` None for the full ``J``, or a
set ``S`` of route names for ``J^S = sum_{r in S} J^r`` (each route cut only in the
derivative, never in the forward pass); ``block`` None for the whole state, or
``(f, f)`` for the diagonal block ``J[f, f] = d f' / d f``, where ``f`` is one field
name or a tuple of field names (the block spanning all of them, e.g. every field of
one layer of a stack, ``(("2:c", "2:h"), ("2:c", "2:h"))``).

The backend is chosen once per analysis (:func:`step_operator`):

* ``"analytic"``: closed form from the cell's entry edges (:meth:`edges`: each edge
  is ``diag(rows[out]) M`` from a source field to the output fields, and
  ``J^S = sum_{e in S} edge_e``). Edges from one source with a matrix are stacked,
  so ``apply`` costs one ``(sum_e n_e, n) x (n, k)`` product per source field and
  ``apply_T`` its transpose. An edge that is no single ``diag(rows) M`` (a product
  through several fields, e.g. between the layers of a stack) is a
  :class:`MatrixFreeEdge`: a linear map and its transpose on the whole state,
  possibly serving several routes at once.
* ``"jacfwd"`` / ``"jacrev"``: autodiff of the step (any cell), one
  ``jax.linearize`` per distinct route set (routes outside the set read
  ``stop_gradient`` of the previous state); ``apply`` is a batch of JVPs, ``apply_T``
  a batch of VJPs (the transposed linearisation), ``matrix`` pushes the identity
  (jacfwd) or pulls it (jacrev).

Orientation: ``J[a, b] = d s'_a / d s_b``. A non-finite entering state makes every
entry of the matrix, ``apply`` and ``apply_T`` NaN (entries that do not depend on the
state included) and the next state non-finite, so a diverging trajectory surfaces as
an error and never as a plausible number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradpaths._protocols import has_routes, projected_method
from gradpaths._state import Layout

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
BACKENDS = ("analytic", "jacfwd", "jacrev")


def dot(A: Array, B: Array) -> Array:
    """``A @ B`` at full precision (float32 stays float32 on accelerators that default
    to TF32)."""
    return jnp.matmul(A, B, precision=_HIGHEST)


def dot_T(A: Array, B: Array) -> Array:
    """``A^T @ B`` without materialising ``A^T`` (a transposed copy of a large matrix
    in every step of a scan costs more than the product)."""
    return jax.lax.dot_general(A, B, (((0,), (0,)), ((), ())), precision=_HIGHEST)


class Spec(NamedTuple):
    """Which Jacobian sequence: ``routes`` (None: all) restricted to ``block`` (None: all).

    ``block`` is ``(f, f)`` with ``f`` a field name or a tuple of field names: the
    diagonal block on those fields' rows and columns (in the layout's order)."""

    routes: tuple[str, ...] | None
    block: tuple[Any, Any] | None


FULL = Spec(None, None)


def block_fields(block: tuple[Any, Any]) -> tuple[str, ...]:
    """The field names a diagonal block spans: ``(f,)`` for ``(f, f)``, ``F`` for ``(F, F)``."""
    fields = block[0]
    return (fields,) if isinstance(fields, str) else tuple(fields)


def block_rows(layout: Layout, spec: Spec) -> slice | np.ndarray:
    """The state rows of the spec's block: a slice when its fields are contiguous in the
    layout (one field, or one layer of a stack), else an index array; every row for
    ``block`` None."""
    if spec.block is None:
        return slice(None)
    slices = [layout.slice(f) for f in block_fields(spec.block)]
    if len(slices) == 1:
        return slices[0]
    rows = np.concatenate([np.arange(s.start, s.stop) for s in slices])
    if np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
        return slice(int(rows[0]), int(rows[0]) + rows.size)
    return rows


def spec_size(layout: Layout, spec: Spec) -> int:
    """Side of the spec's square Jacobian: ``d``, or the block's size (the sum of its
    fields' sizes)."""
    if spec.block is None:
        return layout.size
    return sum(layout.sizes[layout.names.index(f)] for f in block_fields(spec.block))


class MatrixFreeEdge(NamedTuple):
    """Entry edges given as a linear map on the whole state, never as one matrix.

    One object may serve several routes (it sits in a cell's edges under each of
    their names) so that work they share is done once per step. With ``w`` a dict
    route -> weight (a scalar, or a (1, K) row weighting the columns), for the
    routes of ``routes`` present in ``w``:

    * ``push(V, w) = sum_r w_r J^r V``, ``V`` (d, K) in full state coordinates;
    * ``pull(G, w) = sum_r (J^r)^T (w_r G)``, ``G`` (d, K).

    Both return (d, K) in full state coordinates; ``dtype`` is the step's dtype.
    """

    routes: tuple[str, ...]
    push: Callable[[Array, dict[str, Any]], Array]
    pull: Callable[[Array, dict[str, Any]], Array]
    dtype: Any


def _free(edge: Any) -> bool:
    return isinstance(edge, MatrixFreeEdge)


def _fixed_matrices(cell: Any, params: Any) -> dict[str, tuple[str, Array]]:
    """``cell.fixed_matrices(params)`` (route -> (source field, parameter-only matrix)),
    or ``{}`` for a cell without it."""
    fixed_of = getattr(cell, "fixed_matrices", None)
    return fixed_of(params) if callable(fixed_of) else {}


def _columns(a: Any, which: Any) -> Array:
    """The columns ``which`` (traced or not) of ``a``, along its last axis."""
    return jnp.take(jnp.asarray(a), jnp.asarray(which), axis=-1)


def _free_parts(edges: dict[str, Any], chosen: Iterable[str], weights: Any = None
                ) -> list[tuple[MatrixFreeEdge, dict[str, Any]]]:
    """The distinct matrix-free edges among ``chosen`` (in order), each with the
    weights of its chosen routes (1 when ``weights`` is None)."""
    parts: dict[int, tuple[MatrixFreeEdge, dict[str, Any]]] = {}
    for r in chosen:
        edge = edges[r]
        if _free(edge):
            part = parts.setdefault(id(edge), (edge, {}))
            part[1][r] = 1 if weights is None else weights[r]
    return list(parts.values())


def has_closed_form(cell: Any) -> bool:
    return callable(getattr(cell, "edges", None))


def reader(routes: tuple[str, ...] | None) -> Callable[[str, Array], Array]:
    """Edge reader keeping the routes in ``routes`` (all when None) and cutting the rest."""
    if routes is None:
        return lambda route, value: value
    keep = frozenset(routes)
    return lambda route, value: value if route in keep else jax.lax.stop_gradient(value)


def flat_step(cell: Any, params: Any, layout: Layout, routes: tuple[str, ...] | None
              ) -> Callable[[Array, Array], Array]:
    """``(s, x) -> s'`` on raveled states, with the routes outside ``routes`` cut.

    A routed cell gets a reader even when every route is kept: a built-in cell then
    forms each gate's recurrent product on its own, which a block of tangents
    (``jacfwd``, a vmapped JVP) and its transpose (``jacrev``) run 1.3-2.5x faster than
    the stacked product of the fused forward pass (n = 128-512)."""
    if routes is None and not has_routes(cell):
        return lambda s, x: layout.ravel(cell.step(params, layout.unravel(s), x))
    read = reader(routes)
    return lambda s, x: layout.ravel(cell.step(params, layout.unravel(s), x, read))


def _field_mask(layout: Layout, spec: Spec, dtype: Any) -> np.ndarray:
    """(d,) 1 on the block's rows (on every row for the whole state)."""
    if spec.block is None:
        return np.ones((layout.size,), np.dtype(dtype))
    mask = np.zeros((layout.size,), np.dtype(dtype))
    mask[block_rows(layout, spec)] = 1
    return mask


def _embed(layout: Layout, spec: Spec, V: Array) -> Array:
    """A spec's (size, k) block -> full (d, k) coordinates (zeros outside the block)."""
    if spec.block is None:
        return V
    full = jnp.zeros((layout.size, V.shape[1]), V.dtype)
    return full.at[block_rows(layout, spec)].set(V)


def _restrict(layout: Layout, spec: Spec, W: Array) -> Array:
    return W if spec.block is None else W[block_rows(layout, spec)]


def _columns_mask(layout: Layout, specs: Sequence[Spec], dtype: Any) -> np.ndarray | None:
    """(d, S) field masks of several specs, or None when no spec has a block."""
    if all(s.block is None for s in specs):
        return None
    return np.stack([_field_mask(layout, s, dtype) for s in specs], axis=1)


# --------------------------------------------------------------------------- closed form


class _Group(NamedTuple):
    """Edges with a matrix that leave one source field: stacked once per step."""

    source: str
    names: tuple[str, ...]
    rows: tuple[int, ...]       # each edge's number of rows in the stack


class _Closed:
    """One step's linearisation from the cell's entry edges."""

    def __init__(self, layout: Layout, edges: dict[str, Any], nxt: Any, ok: Array | bool,
                 fixed: dict[tuple[str, ...], tuple[Array, Array]]) -> None:
        self.layout, self.edges, self.next, self._ok = layout, edges, nxt, ok
        self._fixed = fixed
        self._groups: dict[tuple[str, ...], tuple[_Group, ...]] = {}
        self._stacks: dict[tuple[str, ...], Array] = dict((k, v[0]) for k, v in fixed.items())
        self._union = tuple(r for names in fixed for r in names)

    def _widen(self, weights: dict[str, Any]) -> dict[str, Any]:
        """Route weights over a precomputed stack: a subset of its routes is pushed
        through the whole stack with zero weights for the others (one product with
        matrices prepared before the scan beats a smaller one prepared every step)."""
        chosen = tuple(weights)
        matrix_routes = {r for r in chosen
                         if not _free(self.edges[r]) and self.edges[r].matrix is not None}
        if (not self._union or any(g.names in self._fixed for g in self._grouped(chosen))
                or not matrix_routes <= set(self._union)):
            return weights
        return {r: weights.get(r, 0) for r in self.edges if r in weights or r in self._union}

    def _grouped(self, chosen: tuple[str, ...]) -> tuple[_Group, ...]:
        """The matrix edges among ``chosen``, grouped by source field."""
        if chosen not in self._groups:
            groups: dict[str, list[str]] = {}
            for r in chosen:
                if not _free(self.edges[r]) and self.edges[r].matrix is not None:
                    groups.setdefault(self.edges[r].source, []).append(r)
            self._groups[chosen] = tuple(
                _Group(src, tuple(rs), tuple(self.edges[r].matrix.shape[0] for r in rs))
                for src, rs in groups.items())
        return self._groups[chosen]

    def _stack_T(self, group: _Group, U: Array) -> Array:
        """``stack^T U``, with the transposed stack prepared before the scan when the
        group's matrices are the cell's fixed ones."""
        if group.names in self._fixed:
            return dot(self._fixed[group.names][1], U)
        return dot_T(self._stack(group), U)

    def _stack(self, group: _Group) -> Array:
        if group.names not in self._stacks:
            mats = [self.edges[r].matrix for r in group.names]
            self._stacks[group.names] = mats[0] if len(mats) == 1 else jnp.concatenate(mats)
        return self._stacks[group.names]

    def _poison(self, out: Array) -> Array:
        return jnp.where(self._ok, out, jnp.nan)

    # -- many specs, one column each (or one shared route mask per column group)

    def _route_weights(self, specs: Sequence[Spec], dtype: Any) -> dict[str, Any]:
        """Per edge, the (K,) 0/1 weights of the columns whose spec keeps it; edges no
        spec keeps are left out, edges every spec keeps get the scalar 1."""
        out: dict[str, Any] = {}
        for r in self.edges:
            w = [s.routes is None or r in s.routes for s in specs]
            if all(w):
                out[r] = 1
            elif any(w):
                out[r] = np.asarray(w, np.dtype(dtype))[None, :]
        return out

    @staticmethod
    def _select(weights: dict[str, Any], fmask: Any, which: Any
                ) -> tuple[dict[str, Any], Any]:
        """The route weights and field masks of the columns ``which`` (indices into the
        specs' columns; traced or not), for :meth:`apply_many` with ``which``."""
        if which is None:
            return weights, fmask
        picked = {r: w if np.ndim(w) == 0 else _columns(w, which) for r, w in weights.items()}
        return picked, None if fmask is None else _columns(fmask, which)

    def _split(self, weights: dict[str, Any], K: int, share: float
               ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Per matrix edge, the columns whose weight is not 0, when pushing each edge
        through its own matrix on those columns only takes at most ``share`` of the
        column products of pushing every column through the stack: ``{route: (cols,
        inverse)}`` (``inverse`` maps each of the K columns to its place in ``cols``, or
        to ``len(cols)``: a zero column). None keeps the stacked product.

        ``apply_many`` with many specs is the case: an LSTM's 17 route sets use each
        gate's matrix in 9 of the 17 columns, 36 column products split against 68
        stacked. Measured on CPU (float32, those 17 sets, sweeps of T steps):
        ``apply_many`` runs 1.7x faster stacked at n = 128, 1.07x at n = 512 and as fast
        at n = 2048 (the column gathers and scatters cost more than the products they
        save), so it splits only past a 4x saving (``share`` 0.25); ``apply_T_many``
        runs 1.2x faster split at n = 512 and as fast at n = 128 and 2048 (``share``
        0.6)."""
        if any(isinstance(w, jax.Array) for w in weights.values()):
            return None         # columns chosen at run time (``which``): stacked
        plan: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        stacked = split = 0
        for r, w in weights.items():
            edge = self.edges[r]
            if _free(edge) or edge.matrix is None:
                continue
            if np.ndim(w) == 0:
                cols = np.arange(K) if w != 0 else np.zeros((0,), int)
            else:
                cols = np.flatnonzero(np.asarray(w).reshape(-1))
            inverse = np.full((K,), cols.size)
            inverse[cols] = np.arange(cols.size)
            plan[r] = (cols, inverse)
            stacked += K * edge.matrix.shape[0]
            split += cols.size * edge.matrix.shape[0]
        return plan if plan and split <= share * stacked else None

    @staticmethod
    def _scatter(part: Array, inverse: np.ndarray) -> Array:
        """(m, k) results of the kept columns -> (m, K), zeros in the other columns."""
        padded = jnp.concatenate([part, jnp.zeros((part.shape[0], 1), part.dtype)], axis=1)
        return jnp.take(padded, inverse, axis=1)

    def _add_rows(self, out: dict[str, Any], name: str, part: Array) -> None:
        """``out[k] += diag(rows[k]) part`` for each output field ``k`` of edge ``name``
        (``out`` holds one (n_k, K) sum per field, None while empty)."""
        for field, coeff in self.edges[name].rows.items():
            if coeff is not None:
                term = coeff[:, None] * part
                out[field] = term if out[field] is None else out[field] + term

    def _joined(self, out: dict[str, Any], extra: list[Array], K: int, dtype: Any) -> Array:
        """The per-field sums as one (d, K) array (zeros for empty fields), plus the
        (d, K) results of matrix-free edges: one join per step, not one zero-padded
        (d, K) array per edge."""
        acc = jnp.concatenate([jnp.zeros((size, K), dtype) if out[f] is None else out[f]
                               for f, size in zip(self.layout.names, self.layout.sizes)])
        for term in extra:
            acc = acc + term
        return acc

    def _push(self, V: Array, weights: dict[str, Any], fmask: Any) -> Array:
        """``sum_r w_r (J^r V)`` column-wise; ``V`` (d, K) full coordinates."""
        lay, K = self.layout, V.shape[1]
        split = self._split(weights, K, 0.25)
        if split is None:
            weights = self._widen(weights)
        if fmask is not None:
            V = V * fmask
        src = {f: V[lay.slice(f)] for f in lay.names}
        out: dict[str, Any] = dict.fromkeys(lay.names)
        chosen = tuple(weights)
        for r in chosen:
            edge = self.edges[r]
            if not _free(edge) and edge.matrix is None:
                self._add_rows(out, r, src[edge.source] * weights[r])
        extra = [edge.push(V, w) for edge, w in _free_parts(self.edges, chosen, weights)]
        if split is not None:
            for r, (cols, inverse) in split.items():
                if cols.size == 0:
                    continue
                edge = self.edges[r]
                w = weights[r] if np.ndim(weights[r]) == 0 else weights[r][:, cols]
                part = dot(edge.matrix, src[edge.source][:, cols]) * w
                self._add_rows(out, r, self._scatter(part, inverse))
            chosen = ()
        for g in self._grouped(chosen):
            moved = dot(self._stack(g), src[g.source])
            start = 0
            for r, m in zip(g.names, g.rows):
                self._add_rows(out, r, moved[start:start + m] * weights[r])
                start += m
        acc = self._joined(out, extra, K, V.dtype)
        if fmask is not None:
            acc = acc * fmask
        return self._poison(acc)

    def _pull(self, G: Array, weights: dict[str, Any], fmask: Any) -> Array:
        """``sum_r w_r (J^r)^T G`` column-wise; ``G`` (d, K) full coordinates."""
        lay = self.layout
        split = self._split(weights, G.shape[1], 0.6)
        if split is None:
            weights = self._widen(weights)
        if fmask is not None:
            G = G * fmask
        acc = jnp.zeros_like(G)

        def gathered(name: str) -> Array:
            edge = self.edges[name]
            total = None
            for out in lay.names:
                coeff = edge.rows.get(out)
                if coeff is None:
                    continue
                term = coeff[:, None] * G[lay.slice(out)]
                total = term if total is None else total + term
            return total * weights[name]

        chosen = tuple(weights)
        for r in chosen:
            if not _free(self.edges[r]) and self.edges[r].matrix is None:
                acc = acc.at[lay.slice(self.edges[r].source)].add(gathered(r))
        for edge, w in _free_parts(self.edges, chosen, weights):
            acc = acc + edge.pull(G, w)
        if split is not None:
            for r, (cols, inverse) in split.items():
                if cols.size == 0:
                    continue
                U = gathered(r)[:, cols]
                fixed = self._fixed.get((r,))
                part = (dot(fixed[1], U) if fixed is not None
                        else dot_T(self.edges[r].matrix, U))
                acc = acc.at[lay.slice(self.edges[r].source)].add(self._scatter(part, inverse))
            chosen = ()
        for g in self._grouped(chosen):
            U = jnp.concatenate([gathered(r) for r in g.names])
            src = lay.slice(g.source)
            acc = acc.at[src].add(self._stack_T(g, U))
        if fmask is not None:
            acc = acc * fmask
        return self._poison(acc)

    # -- public face

    def matrix(self, spec: Spec) -> Array:
        J = assemble(self.edges, self.layout, spec.routes)
        return self._poison(_restrict_matrix(self.layout, spec, J))

    def apply(self, spec: Spec, V: Array) -> Array:
        full = _embed(self.layout, spec, V)
        w = self._route_weights([spec], V.dtype)
        out = self._push(full, w, None if spec.block is None
                         else _field_mask(self.layout, spec, V.dtype)[:, None])
        return _restrict(self.layout, spec, out)

    def apply_T(self, spec: Spec, G: Array) -> Array:
        full = _embed(self.layout, spec, G)
        w = self._route_weights([spec], G.dtype)
        out = self._pull(full, w, None if spec.block is None
                         else _field_mask(self.layout, spec, G.dtype)[:, None])
        return _restrict(self.layout, spec, out)

    def apply_many(self, specs: Sequence[Spec], V: Array, which: Any = None) -> Array:
        return self._push(V, *self._select(self._route_weights(specs, V.dtype),
                                           _columns_mask(self.layout, specs, V.dtype), which))

    def apply_T_many(self, specs: Sequence[Spec], G: Array, which: Any = None) -> Array:
        return self._pull(G, *self._select(self._route_weights(specs, G.dtype),
                                           _columns_mask(self.layout, specs, G.dtype), which))


def _restrict_matrix(layout: Layout, spec: Spec, J: Array) -> Array:
    if spec.block is None:
        return J
    rows = block_rows(layout, spec)
    if isinstance(rows, slice):
        return J[rows, rows]
    return J[np.ix_(rows, rows)]


def assemble(edges: dict[str, Any], layout: Layout, routes: Iterable[str] | None = None
             ) -> Array:
    """The (d, d) Jacobian of one step from its entry edges (all, or those in ``routes``).

    ``J = sum_e a_e[:, None] * M_e``: ``a_e`` (d,) stacks the edge's row coefficients
    over the output fields (zeros where ``rows[out]`` is None) and ``M_e`` (d, d)
    holds its matrix in the rows of those fields and the columns of its source; a
    :class:`MatrixFreeEdge` adds its map applied to the identity.
    Diagonal edges from one source are summed as vectors first and enter through a
    constant identity mask. ``M_e`` depends on the parameters only (built once under
    ``vmap``), and the sum is one elementwise broadcast, which XLA fuses into a single
    loop writing each entry once (a concatenation of blocks is not fused on CPU and
    wrote the (T, d, d) result three times).
    """
    chosen = edges if routes is None else {r: edges[r] for r in routes}
    free = _free_parts(chosen, chosen)
    chosen = {r: e for r, e in chosen.items() if not _free(e)}
    arrays = [v for e in chosen.values() for v in (*e.rows.values(), e.matrix) if v is not None]
    dtypes = [*arrays, *(e.dtype for e, _ in free)]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.float32
    d = layout.size
    field = {name: layout.slice(name) for name in layout.names}

    def coefficients(edge: Any) -> Array:
        return jnp.concatenate([
            jnp.zeros((size,), dtype) if edge.rows.get(out) is None else edge.rows[out]
            for out, size in zip(layout.names, layout.sizes)
        ])

    total = jnp.zeros((d, d), dtype)
    diagonal: dict[str, Array] = {}
    mask = np.zeros((d, d), bool)
    for edge in chosen.values():
        outs = [out for out, coeff in edge.rows.items() if coeff is not None]
        if not outs:
            continue
        a = coefficients(edge)
        src = field[edge.source]
        if edge.matrix is None:
            diagonal[edge.source] = a + diagonal[edge.source] if edge.source in diagonal else a
            for out in outs:
                mask[field[out], src] = np.eye(field[out].stop - field[out].start,
                                               src.stop - src.start, dtype=bool)
            continue
        placed = jnp.zeros((d, d), dtype)
        for out in outs:
            placed = placed.at[field[out], src].set(edge.matrix)
        total = total + a[:, None] * placed
    for source, a in diagonal.items():
        cols = np.zeros((1, d), bool)
        cols[:, field[source]] = True
        total = total + jnp.where(mask & cols, a[:, None], 0)
    for edge, w in free:
        total = total + edge.push(jnp.eye(d, dtype=dtype), w)
    return total


# --------------------------------------------------------------------------- autodiff


class _Autodiff:
    """One step's linearisation by autodiff: a JVP and its transpose per route set."""

    def __init__(self, cell: Any, params: Any, layout: Layout, route_sets: Sequence[Any],
                 state: Any, x: Array, ok: Array, matrix_mode: str) -> None:
        self.layout, self._mode = layout, matrix_mode
        s = layout.ravel(state)
        self._dtype = s.dtype
        self._lin: dict[Any, Callable] = {}
        self._lin_T: dict[Any, Callable] = {}
        # NaN where the entering state is not finite (module docstring): the step is
        # linearised as ``s' + p * sum(u - s)`` with ``p = 0`` (finite state: every
        # output is unchanged, exactly; ``u - s`` is 0 at the point, so a large state
        # cannot overflow the sum) or ``NaN``, so each tangent gets ``p * sum(v)`` added
        # and each cotangent ``p * sum(g)``: NaN in every entry (``NaN * 0`` included).
        # XLA fuses this into the tangent's last operation; a ``where`` on the assembled
        # (d, d) matrix was one more pass and a fresh buffer per step (a third of
        # jacfwd's time at n = 512).
        p = jnp.where(ok, 0, jnp.nan).astype(s.dtype)
        nxt = None
        for routes in route_sets:
            if routes in self._lin:
                continue
            step = flat_step(cell, params, layout, routes)
            nxt, lin = jax.linearize(lambda u, step=step: step(u, x) + p * jnp.sum(u - s), s)
            self._lin[routes] = lin
            self._lin_T[routes] = jax.linear_transpose(lin, s)
        assert nxt is not None, "route_sets is never empty (None stands for all routes)"
        self.next = layout.unravel(nxt)

    def _push(self, routes: Any, V: Array) -> Array:
        return jax.vmap(self._lin[routes], in_axes=1, out_axes=1)(V)

    def _pull(self, routes: Any, G: Array) -> Array:
        return jax.vmap(lambda g: self._lin_T[routes](g)[0], in_axes=1, out_axes=1)(G)

    def matrix(self, spec: Spec) -> Array:
        eye = jnp.eye(self.layout.size, dtype=self._dtype)
        if self._mode == "jacrev":
            J = self._pull(spec.routes, eye).T
        else:
            J = self._push(spec.routes, eye)
        return _restrict_matrix(self.layout, spec, J)

    def apply(self, spec: Spec, V: Array) -> Array:
        out = self._push(spec.routes, _embed(self.layout, spec, V))
        return _restrict(self.layout, spec, out)

    def apply_T(self, spec: Spec, G: Array) -> Array:
        out = self._pull(spec.routes, _embed(self.layout, spec, G))
        return _restrict(self.layout, spec, out)

    def _many(self, specs: Sequence[Spec], V: Array, fn: Callable, which: Any) -> Array:
        mask: Any = _columns_mask(self.layout, specs, V.dtype)
        if which is not None and mask is not None:
            mask = _columns(mask, which)
        if mask is not None:
            V = V * mask
        out = jnp.zeros_like(V)
        by_routes: dict[Any, list[int]] = {}
        for j, s in enumerate(specs):
            by_routes.setdefault(s.routes, []).append(j)
        if which is not None:
            # columns chosen at run time: every route set pushes every column, and
            # each column keeps its own spec's (a batch of JVPs per route set)
            group = np.zeros((len(specs),), int)
            for k, cols in enumerate(by_routes.values()):
                group[cols] = k
            mine = _columns(group, which)
            for k, routes in enumerate(by_routes):
                out = jnp.where((mine == k)[None, :], fn(routes, V), out)
        else:
            for routes, cols in by_routes.items():
                idx = np.asarray(cols)
                out = out.at[:, idx].set(fn(routes, V[:, idx]))
        if mask is not None:
            out = out * mask
        return out

    def apply_many(self, specs: Sequence[Spec], V: Array, which: Any = None) -> Array:
        return self._many(specs, V, self._push, which)

    def apply_T_many(self, specs: Sequence[Spec], G: Array, which: Any = None) -> Array:
        return self._many(specs, G, self._pull, which)


# --------------------------------------------------------------------------- entry point


class StepOperator(NamedTuple):
    """The linearisation of a cell's step, for a fixed backend and set of specs.

    ``op.at(state, x)`` linearises one step and returns an object with ``next``
    (the state ``s'``), ``matrix(spec)``, ``apply(spec, V)``, ``apply_T(spec, G)``,
    ``apply_many(specs, V, which=None)`` and ``apply_T_many(specs, G, which=None)``
    (module docstring).
    The edges (closed form) or linearisations (autodiff) of the step are formed
    once and serve every spec.
    """

    cell: Any
    params: Any
    layout: Layout
    specs: tuple[Spec, ...]
    backend: str
    fixed: dict[tuple[str, ...], tuple[Array, Array]]
    projected: bool = False

    def inputs(self, xs: Array) -> Array:
        """What :meth:`at` takes for each step of ``xs`` (T, m): ``xs`` itself, or with
        ``projected`` the cell's input products of all steps at once
        (``cell.project(params, xs)``, one ``(T, m) x (m, G n)`` product)."""
        return self.cell.project(self.params, xs) if self.projected else xs

    def at(self, state: Any, x: Array) -> Any:
        """The linearisation at ``state`` for one step's input ``x`` (one row of
        :meth:`inputs`)."""
        ok = jnp.all(jnp.isfinite(self.layout.ravel(state)))
        if self.projected:
            nxt, edges = self.cell.linearise_projected(self.params, state, x)
            return _Closed(self.layout, edges, nxt, ok, self.fixed)
        if self.backend == "analytic":
            nxt, edges = linearise(self.cell, self.params, state, x)
            return _Closed(self.layout, edges, nxt, ok, self.fixed)
        route_sets = tuple(dict.fromkeys(s.routes for s in self.specs)) or (None,)
        return _Autodiff(self.cell, self.params, self.layout, route_sets, state, x, ok,
                         self.backend)


    def coefficients(self, lin: Any) -> Any:
        """The part of a closed-form step ``lin`` (from :meth:`at`) that changes from
        step to step: each edge's row coefficients, and whether the entering state was
        finite. A scan can keep them for every step (``O(T n)`` numbers) and
        :meth:`from_coefficients` rebuilds each step from them without the forward
        pass; only when :meth:`reusable` says so."""
        return {r: e.rows for r, e in lin.edges.items()}, jnp.asarray(lin._ok)

    def reusable(self, lin: Any) -> bool:
        """Whether a step like ``lin`` is rebuilt from its :meth:`coefficients` alone:
        closed form, and every edge diagonal or with a parameter-only matrix
        (``cell.fixed_matrices``; not a :class:`MatrixFreeEdge`)."""
        if not isinstance(lin, _Closed):
            return False
        fixed = _fixed_matrices(self.cell, self.params)
        return all(not _free(e) and (e.matrix is None or (r in fixed and fixed[r][0] == e.source))
                   for r, e in lin.edges.items())

    def from_coefficients(self, like: Any, coefficients: Any) -> Any:
        """The step whose :meth:`coefficients` are ``coefficients``, with the edges'
        sources and parameter-only matrices of ``like`` (any step of the same cell;
        :meth:`reusable`). Its ``next`` is None: the forward pass is not run."""
        rows, ok = coefficients
        fixed = _fixed_matrices(self.cell, self.params)
        edges = {r: e._replace(rows=rows[r], matrix=None if e.matrix is None else fixed[r][1])
                 for r, e in like.edges.items()}
        return _Closed(self.layout, edges, None, ok, self.fixed)


def linearise(cell: Any, params: Any, state: Any, x: Array) -> tuple[Any, dict[str, Any]]:
    """``(next_state, edges)`` of one step of a closed-form cell (one forward pass when
    the cell offers ``linearise``)."""
    if callable(getattr(cell, "linearise", None)):
        return cell.linearise(params, state, x)
    return cell.step(params, state, x), cell.edges(params, state, x)


def can_project(cell: Any) -> bool:
    """Whether ``cell`` linearises a step from its projected input (``project`` and
    ``linearise_projected``: the built-in closed-form cells)."""
    return projected_method(cell, "linearise_projected") is not None


def step_operator(cell: Any, params: Any, layout: Layout, specs: Sequence[Spec] = (FULL,),
                  backend: str = "auto", projected: bool = False) -> StepOperator:
    """The :class:`StepOperator` of ``cell`` for ``specs``; ``backend`` ``"auto"`` is the
    closed form where the cell has ``edges``, else ``"jacfwd"``. ``projected``: take
    projected inputs (:meth:`StepOperator.inputs`) where the closed-form cell can
    (:func:`can_project`), saving one small product per step of every sweep over
    stored inputs; ignored otherwise."""
    if backend == "auto":
        backend = "analytic" if has_closed_form(cell) else "jacfwd"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or 'auto', got {backend!r}")
    specs = tuple(Spec(*s) for s in specs)
    fixed = _fixed_stacks(cell, params, specs) if backend == "analytic" else {}
    projected = bool(projected) and backend == "analytic" and can_project(cell)
    return StepOperator(cell, params, layout, specs, backend, fixed, projected)


def _fixed_stacks(cell: Any, params: Any, specs: tuple[Spec, ...]
                  ) -> dict[tuple[str, ...], tuple[Array, Array]]:
    """The cell's parameter-only edge matrices (``cell.fixed_matrices``), stacked per
    source field and transposed once, before any scan: route names -> ``(stack,
    stack^T)``. Built for the union of the specs' routes, for the one spec's own
    routes when there is one, and for each route alone when there are several specs
    (``_Closed._split``). The transpose is materialised (an optimisation barrier
    keeps XLA from folding it back into every step's product, where a transposed
    thin product runs an order of magnitude slower on CPU)."""
    fixed = _fixed_matrices(cell, params)       # route -> (source field, matrix)
    if not fixed:
        return {}
    every = tuple(getattr(cell, "routes", ())) or tuple(fixed)
    wanted = [tuple(r for r in every if any(s.routes is None or r in s.routes for s in specs))]
    if len(specs) == 1 and specs[0].routes is not None:
        wanted.append(specs[0].routes)
    if len(specs) > 1:      # one column per spec: each edge on its own columns
        wanted.extend((r,) for r in wanted[0])
    out: dict[tuple[str, ...], tuple[Array, Array]] = {}
    for chosen in wanted:
        by_source: dict[str, list[str]] = {}
        for r in chosen:
            if r in fixed:
                by_source.setdefault(fixed[r][0], []).append(r)
        for names in by_source.values():
            key = tuple(names)
            if key in out:
                continue
            mats = [fixed[r][1] for r in names]
            stack = mats[0] if len(mats) == 1 else jnp.concatenate(mats)
            out[key] = jax.lax.optimization_barrier((stack, stack.T))
    return out
