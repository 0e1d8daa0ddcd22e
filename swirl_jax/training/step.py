"""The train step: gradients of an objective over micro-batches, then one optimizer update.

A pure function of (params, optimizer state, batch, reference params, loss slots); the objective
(`swirl_jax.training.objectives`) is all it knows of the algorithm. `loss_slots` (static) is how
many loss positions a micro-batch gathers logits for (see `losses.target_logprobs`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from swirl_jax.data.features import LOSS_WEIGHTS
from swirl_jax.training.objectives import Objective


def micro_batch_gradient(graphdef, objective: Objective) -> Callable:
  """(params, micro-batch, reference params, loss slots, total weight) -> ((loss, metrics), grads)."""

  def loss(params, batch, reference, loss_slots, total_weight):
    # The reference comes from outside the scan over micro-batches: stop_gradient makes its values
    # at this trace level (a model merged from outer values fails under nnx.remat), and says that
    # no gradient flows into it.
    reference_model = None if reference is None else nnx.merge(graphdef,
                                                               jax.tree.map(jax.lax.stop_gradient, reference))
    return objective.loss(nnx.merge(graphdef, params), batch, reference_model, loss_slots, total_weight)

  return jax.value_and_grad(loss, has_aux=True)


def train_step_fn(graphdef, objective: Objective, tx: optax.GradientTransformation, grad_accum_steps: int):
  """The step, unjitted: (params, opt_state, batch, reference, loss_slots) -> (params, opt_state, metrics)."""
  gradient = micro_batch_gradient(graphdef, objective)
  k = grad_accum_steps

  def step(params, opt_state, batch, reference, loss_slots):
    micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)
    total_weight = (jnp.maximum(jnp.sum(batch[LOSS_WEIGHTS]), 1.0) if objective.shares_of_batch_weight else None)

    def accumulate(grads, micro_batch):
      (loss, metrics), g = gradient(params, micro_batch, reference, loss_slots, total_weight)
      return jax.tree.map(jnp.add, grads, g), (loss, metrics)

    grads, (loss_k, metrics_k) = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), micro)
    if not objective.shares_of_batch_weight:
      grads = jax.tree.map(lambda g: g / k, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    loss = jnp.sum(loss_k) if objective.shares_of_batch_weight else jnp.mean(loss_k)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **{n: jnp.mean(v) for n, v in metrics_k.items()}}
    return params, opt_state, metrics

  return step


def jit_train_step(step_fn: Callable, out_shardings=None):
  """The step jitted with params and optimizer state donated and the loss slots static."""
  return jax.jit(step_fn, donate_argnums=(0, 1), out_shardings=out_shardings, static_argnums=4)
