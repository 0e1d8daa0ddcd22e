"""Step-wise RL losses, each a pure function of (model, features) a researcher can import.

Features follow the contract of `swirl_jax.data.features` (rewards hold the
reward, or the advantage, of each target). Only target positions with loss
weight > 0 (the action tokens) get logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from swirl_jax.data.features import BEHAVIOUR_LOGPROBS, LOSS_WEIGHTS, REWARDS
from swirl_jax.models.transformer import Transformer
from swirl_jax.training.logprobs import loss_slots, reward_weighted_nll, target_logprobs

__all__ = ["advantages", "loss_slots", "policy_gradient_loss", "policy_gradient_token_loss", "reward_weighted_nll",
           "sft_loss"]


def advantages(rewards_SxG: np.ndarray, baseline: str = "rloo") -> np.ndarray:
  """Per-sample advantages for G samples of each of S states.

  none: the reward itself (REINFORCE); rloo: the reward minus the mean reward
  of the *other* samples of the same state (leave-one-out). A NaN reward (the
  judge gave no verdict) gets advantage 0 and is left out of its state's
  baseline; under rloo a state with fewer than 2 scored samples has no baseline,
  and all its advantages are 0.
  """
  rewards_SxG = np.asarray(rewards_SxG, np.float32)
  scored_SxG = ~np.isnan(rewards_SxG)
  filled_SxG = np.where(scored_SxG, rewards_SxG, 0.0)
  if baseline == "none":
    return filled_SxG
  if baseline == "rloo":
    g = rewards_SxG.shape[1]
    if g < 2:
      raise ValueError("the rloo baseline needs at least 2 samples per state")
    count_Sx1 = scored_SxG.sum(axis=1, keepdims=True)
    others = (filled_SxG.sum(axis=1, keepdims=True) - filled_SxG) / np.maximum(count_Sx1 - 1, 1)
    return np.where(scored_SxG & (count_Sx1 >= 2), filled_SxG - others, 0.0).astype(np.float32)
  raise ValueError(f"unknown baseline {baseline!r}; use 'none' or 'rloo'")


def policy_gradient_token_loss(logp_N: jax.Array, behaviour_N: jax.Array, advantage_N: jax.Array, *,
                               clip_epsilon: float | None = None, importance_cap: float | None = None):
  """Each loss token's policy-gradient term, and where clipping or truncation acted.

  r = pi / pi_behaviour (the sampler's recorded log-probs). Without `clip_epsilon`: -A log pi
  (REINFORCE / RLOO), weighted by min(r, cap) (held constant) when `importance_cap` is set: the
  truncated importance weight that corrects for samples drawn by another policy (an older step's,
  or the sampler's bf16 copy) without the variance of an unbounded ratio. With `clip_epsilon`: PPO's
  -min(r A, clip(r, 1 -/+ eps) A), and with `importance_cap` the dual clip: where A < 0 the term is
  at most -cap A, so a stale sample the policy now finds far likelier cannot dominate the step.

  Returns (token_loss_N, clipped_N, truncated_N) (the last two boolean)."""
  ratio_N = jnp.exp(logp_N - behaviour_N)
  no_N = jnp.zeros(logp_N.shape, bool)
  if clip_epsilon is None:
    if importance_cap is None:
      return -advantage_N * logp_N, no_N, no_N
    weight_N = jax.lax.stop_gradient(jnp.minimum(ratio_N, importance_cap))
    return -weight_N * advantage_N * logp_N, no_N, ratio_N > importance_cap
  unclipped_N = ratio_N * advantage_N
  clipped_N = jnp.clip(ratio_N, 1 - clip_epsilon, 1 + clip_epsilon) * advantage_N
  token_loss_N = -jnp.minimum(unclipped_N, clipped_N)
  truncated_N = no_N
  if importance_cap is not None:
    bound_N = -importance_cap * advantage_N
    truncated_N = (advantage_N < 0) & (token_loss_N > bound_N)
    token_loss_N = jnp.where(truncated_N, bound_N, token_loss_N)
  return token_loss_N, unclipped_N != clipped_N, truncated_N


def policy_gradient_loss(model: Transformer, features: dict, *, num_sequences: int, reference_logprobs_N: jax.Array=None,
                         kl_coef: float = 0.0, clip_epsilon: float | None = None,
                         importance_cap: float | None = None, max_loss_tokens: int | None = None):
  """The online step-wise objective on sampled actions, averaged over sampled sequences.

  REWARDS holds each action token's advantage A; the token terms are `policy_gradient_token_loss`'s
  (REINFORCE / RLOO, PPO's clipped ratio with `clip_epsilon`, truncated importance weights with
  `importance_cap`). With a reference (the frozen initial policy), kl_coef * KL is added, estimated
  per token as exp(q - p) - (q - p) - 1 (zero where the policy equals the reference).

  Returns (loss, metrics).
  """
  logp_N, index_N, valid_N = target_logprobs(model, features, max_loss_tokens)
  weights_N = features[LOSS_WEIGHTS].reshape(-1)[index_N] * valid_N
  advantage_N = features[REWARDS].reshape(-1)[index_N]
  behaviour_N = features[BEHAVIOUR_LOGPROBS].reshape(-1)[index_N]
  token_loss_N, clipped_N, truncated_N = policy_gradient_token_loss(
      logp_N, behaviour_N, advantage_N, clip_epsilon=clip_epsilon, importance_cap=importance_cap)
  kl = jnp.zeros(())
  if reference_logprobs_N is not None:
    delta_N = reference_logprobs_N - logp_N
    kl_N = jnp.exp(delta_N) - delta_N - 1
    kl = jnp.sum(weights_N * kl_N) / num_sequences
  loss = jnp.sum(weights_N * token_loss_N) / num_sequences + kl_coef * kl
  tokens = jnp.maximum(jnp.sum(weights_N), 1)
  ratio_N = jax.lax.stop_gradient(jnp.exp(logp_N - behaviour_N))
  metrics = {"kl": kl, "clipped_fraction": jnp.sum(weights_N * clipped_N) / tokens,
             "truncated_fraction": jnp.sum(weights_N * truncated_N) / tokens,
             "importance_ratio_mean": jnp.sum(weights_N * ratio_N) / tokens,
             "entropy_proxy": -jnp.sum(weights_N * logp_N) / tokens}
  return loss, metrics


def sft_loss(model: Transformer, features: dict, max_loss_tokens: int | None = None):
  """Mean negative log-likelihood of the action tokens (the paper's SFT baseline)."""
  logp_N, index_N, valid_N = target_logprobs(model, features, max_loss_tokens)
  weights_N = features[LOSS_WEIGHTS].reshape(-1)[index_N] * valid_N
  return -jnp.sum(weights_N * logp_N) / jnp.maximum(jnp.sum(weights_N), 1.0)


def reference_logprobs(reference_model: Transformer | None, features: dict, max_loss_tokens: int | None = None):
  """Log-probs of the frozen initial policy at the same loss positions (no gradient)."""
  logp_N, _, _ = target_logprobs(reference_model, features, max_loss_tokens)
  return jax.lax.stop_gradient(logp_N)
