"""FLOPs of one update from XLA's own count of the compiled step, for MFU."""

from __future__ import annotations

import jax
from absl import logging


def compiled_flops(lowered) -> float | None:
  """XLA's FLOP count of a lowered computation (None where the backend gives none)."""
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = cost.get("flops") if isinstance(cost, dict) else None
  return float(flops) if flops and flops > 0 else None


class UpdateFlops:
  """FLOPs per device of one update, once per batch shape. XLA counts a scan's body once, so the
  micro-batch gradient, which the step runs `grad_accum_steps` times, is compiled on its own and
  counted for the other runs."""

  def __init__(self, train_step, gradient, grad_accum_steps: int, shares_of_batch_weight: bool):
    self.train_step, self.gradient, self.k = train_step, jax.jit(gradient, static_argnums=3), grad_accum_steps
    self.shares_of_batch_weight = shares_of_batch_weight
    self._counts: dict = {}

  def __call__(self, params, opt_state, batch, reference, loss_slots: int) -> float | None:
    key = (loss_slots, tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch)))
    if key not in self._counts:
      flops = compiled_flops(self.train_step.lower(params, opt_state, batch, reference, loss_slots))
      if flops is not None and self.k > 1:
        micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] // self.k, *x.shape[1:]), x.dtype,
                                                            sharding=getattr(x, "sharding", None)), batch)
        weight = jax.ShapeDtypeStruct((), jax.numpy.float32) if self.shares_of_batch_weight else None
        body = compiled_flops(self.gradient.lower(params, micro, reference, loss_slots, weight))
        flops = None if body is None else flops + (self.k - 1) * body
      if flops is None:
        logging.warning("XLA gives no FLOP count for the train step on this backend: no MFU is logged")
      self._counts[key] = flops
    return self._counts[key]
