"""The optimizer: AdamW with linear warmup and cosine decay, after global-norm clipping."""

from __future__ import annotations

import dataclasses

import gin
import optax

from swirl_jax import validation


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-5
  warmup_steps: int = 10  # in trainer steps
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0

  def __post_init__(self):
    validation.not_negative(self, ("learning_rate", "warmup_steps", "weight_decay", "grad_clip_norm"))


def learning_rate_schedule(config: OptimizerConfig, steps: int, updates_per_step: int = 1) -> optax.Schedule:
  """Linear warmup then cosine decay over `steps` trainer steps, counted in optimizer updates
  (a step makes `updates_per_step` of them when it reuses its batch)."""
  updates = steps * updates_per_step
  warmup = max(config.warmup_steps * updates_per_step, 1)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(updates, warmup + 1))


def make_optimizer(config: OptimizerConfig, steps: int, updates_per_step: int = 1) -> optax.GradientTransformation:
  """AdamW on `learning_rate_schedule`, after global-norm clipping."""
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                     optax.adamw(learning_rate_schedule(config, steps, updates_per_step),
                                 weight_decay=config.weight_decay))
