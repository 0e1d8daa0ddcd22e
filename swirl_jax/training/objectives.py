"""The algorithms Stage 2 can train with, as objectives the train step takes.

An objective is a loss over one micro-batch of features; the step (`swirl_jax.training.step`) knows
nothing else of it. Two ways micro-batch losses combine into the batch's loss:
- `shares_of_batch_weight` (offline, SFT): each micro-batch's loss is its share of the whole batch's
  weighted token mean (`total_weight` is the batch's summed loss weight), so the shares add up;
- otherwise (online): each micro-batch holds the same number of sequences and its loss is a mean
  over them, so the micro-batch losses (and gradients) average.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import gin

from swirl_jax import validation
from swirl_jax.data.features import INPUT_TOKENS
from swirl_jax.models.transformer import Transformer
from swirl_jax.training import losses
from swirl_jax.training.logprobs import reward_weighted_nll


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SftConfig:
  """SFT mode (reward 1 on every logged action): `context_weight` > 0 also trains on the context
  tokens (prompt, tool results), as when a model is taught the protocol from scratch."""

  context_weight: float = 0.0

  def __post_init__(self):
    validation.not_negative(self, ("context_weight",))


class Objective(Protocol):
  shares_of_batch_weight: bool

  def loss(self, model: Transformer, batch: dict, reference_model: Transformer | None, max_loss_tokens: int, total_weight) -> tuple:
    """(scalar loss, dict of scalar metrics) of one micro-batch."""
    ...


@dataclasses.dataclass(frozen=True)
class RewardWeightedLikelihood:
  """Offline step-wise RL (and SFT, where every reward is 1): -sum(w r log p) / sum(w)."""

  shares_of_batch_weight: bool = True

  def loss(self, model: Transformer, batch, reference_model: Transformer | None, max_loss_tokens, total_weight):
    del reference_model
    return reward_weighted_nll(model, batch, max_loss_tokens, total_weight=total_weight), {}


@dataclasses.dataclass(frozen=True)
class PolicyGradient:
  """Online step-wise RL: REINFORCE / RLOO on fresh samples (rewards hold advantages), PPO's clipped
  ratio with `clip_epsilon`, truncated importance weights with `importance_cap`, and a KL penalty
  to the reference policy with `kl_coef`."""

  kl_coef: float = 0.0
  clip_epsilon: float | None = None
  importance_cap: float | None = None
  sequences_per_row: int = 1  # G for tree-packed rows (a state's G samples in one row)
  shares_of_batch_weight: bool = False

  def loss(self, model: Transformer, batch, reference_model: Transformer | None, max_loss_tokens, total_weight):
    del total_weight
    reference_N = None
    if reference_model is not None:
      reference_N = losses.reference_logprobs(reference_model, batch, max_loss_tokens)
    num_sequences = batch[INPUT_TOKENS].shape[0] * self.sequences_per_row
    return losses.policy_gradient_loss(model, batch, num_sequences=num_sequences,
                                       reference_logprobs_N=reference_N, kl_coef=self.kl_coef,
                                       clip_epsilon=self.clip_epsilon, importance_cap=self.importance_cap,
                                       max_loss_tokens=max_loss_tokens)
