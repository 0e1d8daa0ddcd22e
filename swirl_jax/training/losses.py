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

__all__ = ["advantages", "loss_slots", "policy_gradient_loss", "reward_weighted_nll", "sft_loss"]


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


def policy_gradient_loss(model: Transformer, features: dict, *, num_sequences: int, reference_logprobs_N: jax.Array=None,
                         kl_coef: float = 0.0, clip_epsilon: float | None = None,
                         max_loss_tokens: int | None = None):
  """The online step-wise objective on sampled actions, averaged over sampled sequences.

  REWARDS holds each action token's advantage A. Without clipping the
  loss is -sum_t A * log pi(a_t) / num_sequences (REINFORCE / RLOO). With
  `clip_epsilon`, the token term is PPO's -min(r A, clip(r, 1 -/+ eps) A) with
  r = pi / pi_behaviour, for several updates on one batch of samples. With a
  reference (the frozen initial policy), kl_coef * KL is added, estimated per
  token as exp(q - p) - (q - p) - 1 (zero where the policy equals the reference).

  Returns (loss, metrics).
  """
  logp_N, index_N, valid_N = target_logprobs(model, features, max_loss_tokens)
  weights_N = features[LOSS_WEIGHTS].reshape(-1)[index_N] * valid_N
  advantage_N = features[REWARDS].reshape(-1)[index_N]
  if clip_epsilon is None:
    token_loss_N = -advantage_N * logp_N
    clipped_fraction = jnp.zeros(())
  else:
    behaviour_N = features[BEHAVIOUR_LOGPROBS].reshape(-1)[index_N]
    ratio_N = jnp.exp(logp_N - behaviour_N)
    unclipped = ratio_N * advantage_N
    clipped = jnp.clip(ratio_N, 1 - clip_epsilon, 1 + clip_epsilon) * advantage_N
    token_loss_N = -jnp.minimum(unclipped, clipped)
    clipped_fraction = jnp.sum(weights_N * (unclipped != clipped)) / jnp.maximum(jnp.sum(weights_N), 1)
  kl = jnp.zeros(())
  if reference_logprobs_N is not None:
    delta_N = reference_logprobs_N - logp_N
    kl_N = jnp.exp(delta_N) - delta_N - 1
    kl = jnp.sum(weights_N * kl_N) / num_sequences
  loss = jnp.sum(weights_N * token_loss_N) / num_sequences + kl_coef * kl
  tokens = jnp.maximum(jnp.sum(weights_N), 1)
  metrics = {"kl": kl, "clipped_fraction": clipped_fraction,
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
