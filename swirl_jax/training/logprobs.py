"""Log-probs of target tokens, with logits computed only where the loss needs them.

Gemma's vocabulary has 262k entries: a [batch, length, vocab] tensor would
dominate memory. We gather the hidden states at loss positions first, then
project only those (DESIGN decision 6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from swirl_jax import partitioning
from swirl_jax.data.features import BRANCH_IDS, INPUT_TOKENS, LOSS_WEIGHTS, POSITIONS, REWARDS, SEGMENT_IDS, TARGET_TOKENS
from swirl_jax.models.transformer import Transformer


def loss_slots(features: dict) -> int:
  """The `max_loss_tokens` a batch (host arrays) needs: its positions with weight > 0, rounded up
  to a power of two (so that a few shapes compile), at least 1."""
  count = int(np.count_nonzero(np.asarray(features[LOSS_WEIGHTS]) > 0))
  return 1 << max(count - 1, 0).bit_length()


def loss_slots_for(count: int, positions: int, levels: int) -> int:
  """Slots for `count` loss positions among `positions` (a micro-batch's rows x row length): the
  smallest of positions / 2**j, j < `levels` (at least 128, at most `positions`), that holds them.
  A step's shape then takes one of `levels` slot counts per row length, whatever its data; gathering
  up to 2**(levels - 1) times the slots needed costs little beside the forward of every position."""
  sizes = sorted({min(positions, max(128, -(-positions // 2**j))) for j in range(levels)})
  fitting = [s for s in sizes if s >= count]
  if not fitting:
    raise ValueError(f"{count} loss positions among {positions}")
  return fitting[0]


def _refuse_dropped(count, slots) -> None:
  if int(count) > int(slots):
    raise ValueError(f"the batch has {int(count)} loss positions (weight > 0) but max_loss_tokens={int(slots)}: "
                     "the rest would be left out of the loss. Size it from the batch (losses.loss_slots(batch)) "
                     "or leave it None")


def target_logprobs(model: Transformer, features: dict, max_loss_tokens: int | None = None):
  """log p(target) at every position with weight > 0, in `max_loss_tokens` slots.

  Returns (logprobs_N, index_N, valid_N): flat indices into [batch * length] and
  a mask for the slots past the last loss position. With max_loss_tokens None,
  every position is a slot (simple, but builds [B*L, V] logits). A batch with
  more loss positions than slots is refused when the computation runs (a
  ValueError inside XLA's runtime error), never cut.
  """
  tokens = features[INPUT_TOKENS]
  b, l = tokens.shape
  hidden_BxLxD = model.hidden_states(tokens, features[POSITIONS], features[SEGMENT_IDS], features.get(BRANCH_IDS))
  weights = features[LOSS_WEIGHTS].reshape(-1)
  n = b * l if max_loss_tokens is None else max_loss_tokens
  if max_loss_tokens is not None:
    jax.debug.callback(_refuse_dropped, jnp.sum(weights > 0), n)
  index_N = jnp.nonzero(weights > 0, size=n, fill_value=0)[0]
  valid_N = jnp.arange(n) < jnp.sum(weights > 0)
  # The slots split over the batch axes like rows do: each device projects its share of them onto
  # its share of the vocabulary, rather than every device all N slots.
  hidden_NxD = partitioning.constrain(hidden_BxLxD.reshape(b * l, -1)[index_N], ("activation_batch", None))
  logits_NxV = partitioning.constrain(model.logits_at(hidden_NxD), ("activation_batch", "activation_vocab"))
  targets_N = features[TARGET_TOKENS].reshape(-1)[index_N]
  logp_N = jnp.take_along_axis(jax.nn.log_softmax(logits_NxV, axis=-1), targets_N[:, None], axis=-1)[:, 0]
  return jnp.where(valid_N, logp_N, 0.0), index_N, valid_N


def reward_weighted_nll(model: Transformer, features: dict, max_loss_tokens: int | None = None,
                        total_weight=None):
  """-sum(weight * reward * log p) / sum(weight): the offline step-wise loss (SFT at reward 1).

  `total_weight`: divide by this instead (the weight of the whole batch when
  `features` is one micro-batch of it, so the micro-batch losses add up to the
  loss of the whole batch).
  """
  logp_N, index_N, valid_N = target_logprobs(model, features, max_loss_tokens)
  weights_N = features[LOSS_WEIGHTS].reshape(-1)[index_N] * valid_N
  rewards_N = features[REWARDS].reshape(-1)[index_N]
  if total_weight is None:
    total_weight = jnp.maximum(jnp.sum(weights_N), 1.0)
  return -jnp.sum(weights_N * rewards_N * logp_N) / total_weight
