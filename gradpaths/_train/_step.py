"""The jitted train step, a pure function of ``(params, opt_state, batch)``, and the
cached constructors around it (one compile per model, optimizer and regulariser)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradpaths import _inputs

Array = jax.Array


class StepStats(NamedTuple):
    """One train step: ``loss = task_loss + penalty``; ``grad_norm`` before clipping;
    ``finite`` False when the loss, the gradient or the new params are not finite
    (the update is then not applied)."""

    loss: Array
    task_loss: Array
    penalty: Array
    grad_norm: Array
    finite: Array


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@functools.lru_cache(maxsize=64)
def compiled_step(model: Any, optimizer: Any, regularizer: Any) -> Callable:
    """The jitted, pure train step ``(params, opt_state, batch) -> (params, opt_state,
    stats)``; ``model`` as given by :func:`gradpaths._inputs.hashable`.

    ``L = task loss + regularizer penalty``; the update is applied only when the loss,
    the gradient's global norm and the new parameters are all finite."""
    model = _inputs.unwrap(model)

    def objective(params, batch):
        task_loss = model.batch_loss(params, batch)
        if regularizer is None:
            return task_loss, (task_loss, jnp.zeros_like(task_loss))
        penalty, _ = regularizer.penalty(model.cell, params.cell, batch.xs)
        return task_loss + penalty, (task_loss, penalty)

    def step(params, opt_state, batch):
        (loss, (task_loss, penalty)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
        keep = lambda new, old: jnp.where(finite, new, old)
        params = jax.tree_util.tree_map(keep, new_params, params)
        opt_state = jax.tree_util.tree_map(keep, new_opt, opt_state)
        return params, opt_state, StepStats(loss, task_loss, penalty, grad_norm, finite)

    return jax.jit(step)


@functools.lru_cache(maxsize=64)
def sampler(task: Any, batch_size: int, dtype: Any) -> Callable:
    """``key -> Batch``, jitted apart from the step (random bits compile slowly on CPU,
    once per task rather than once per training configuration); ``task`` as given by
    :func:`gradpaths._inputs.hashable`."""
    task = _inputs.unwrap(task)
    return jax.jit(lambda key: task.sample(key, batch_size, dtype))


@functools.lru_cache(maxsize=16)
def adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


@functools.lru_cache(maxsize=64)
def with_clip(optimizer: Any, clip: float | None) -> Any:
    """``optimizer`` behind ``optax.clip_by_global_norm(clip)`` (unchanged for None)."""
    return optimizer if clip is None else optax.chain(optax.clip_by_global_norm(clip), optimizer)
