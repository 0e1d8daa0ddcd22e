"""The model-feature contract: names, dtypes and layout of a training batch, and its two builders.

Every batch the losses read is a dict of [rows, length] arrays:

  decoder_input_tokens        int32    the sequence (several segments when packed)
  decoder_target_tokens       int32    the next token in the same segment (0 at a segment's end)
  decoder_loss_weights        float32  weight of predicting that target (action tokens only)
  decoder_rewards             float32  the target's reward (offline) or advantage (online)
  decoder_behaviour_logprobs  float32  log p(target) under the sampling model
  decoder_segment_ids         int32    1, 2, ... per packed segment; 0 is padding
  decoder_positions           int32    position within the segment

Tree-packed rows (online RL: a state's context once, its G sampled actions as branches) add

  decoder_branch_ids          int32    0 on the shared context; 1, 2, ... per branch of a segment

A token sees the keys of its segment that are on the context or on its own branch, at positions up
to its own (every branch's positions continue from the context's end). Batches without branches
leave the feature out.

Position p holds what is needed to predict token p + 1, so the per-target values
(weights, rewards, log-probs) are the per-token values shifted left by one and
zeroed where the next token starts another segment. The numpy builder (Stage 2's
prefix-shared rows and online rows) and the tf builder (the SeqIO feature
converter) both make exactly this layout from token-aligned inputs.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

INPUT_TOKENS = "decoder_input_tokens"
TARGET_TOKENS = "decoder_target_tokens"
LOSS_WEIGHTS = "decoder_loss_weights"
REWARDS = "decoder_rewards"
BEHAVIOUR_LOGPROBS = "decoder_behaviour_logprobs"
SEGMENT_IDS = "decoder_segment_ids"
POSITIONS = "decoder_positions"
BRANCH_IDS = "decoder_branch_ids"  # optional: tree-packed rows only

DTYPES: dict[str, str] = {
    INPUT_TOKENS: "int32", TARGET_TOKENS: "int32", LOSS_WEIGHTS: "float32", REWARDS: "float32",
    BEHAVIOUR_LOGPROBS: "float32", SEGMENT_IDS: "int32", POSITIONS: "int32",
}
NAMES = tuple(DTYPES)


class Features(TypedDict):
  """A batch as the losses read it (arrays of [rows, length]; one row when built per row)."""

  decoder_input_tokens: np.ndarray
  decoder_target_tokens: np.ndarray
  decoder_loss_weights: np.ndarray
  decoder_rewards: np.ndarray
  decoder_behaviour_logprobs: np.ndarray
  decoder_segment_ids: np.ndarray
  decoder_positions: np.ndarray


def numpy_row(tokens, token_weights, token_rewards, token_logprobs, segment_ids, positions,
              length: int, branch_ids=None) -> Features:
  """One row of features from token-aligned arrays (the weight, reward and log-prob of each token
  as a target), padded to `length`. With `branch_ids` (a tree-packed row) the row carries them, and
  a token's target is the next token only on the same branch."""
  tokens = np.asarray(tokens, np.int32)
  n = len(tokens)
  if n > length:
    raise ValueError(f"{n} tokens do not fit a row of {length}")
  segment_ids = np.asarray(segment_ids, np.int32)
  same_segment = np.zeros(n, np.float32)
  same_segment[:-1] = (segment_ids[1:] == segment_ids[:-1]) & (segment_ids[1:] > 0)
  if branch_ids is not None:
    branch_ids = np.asarray(branch_ids, np.int32)
    same_segment[:-1] *= branch_ids[1:] == branch_ids[:-1]

  def shifted(values, dtype):
    out = np.zeros(n, dtype)
    out[:-1] = np.asarray(values, dtype)[1:]
    return out * same_segment.astype(dtype)

  pad = lambda x, dtype: np.pad(np.asarray(x, dtype), (0, length - n))
  branches = {} if branch_ids is None else {BRANCH_IDS: pad(branch_ids, np.int32)}
  return Features(**branches, **{
      INPUT_TOKENS: pad(tokens, np.int32),
      TARGET_TOKENS: pad(shifted(tokens, np.int32), np.int32),
      LOSS_WEIGHTS: pad(shifted(token_weights, np.float32), np.float32),
      REWARDS: pad(shifted(token_rewards, np.float32), np.float32),
      BEHAVIOUR_LOGPROBS: pad(shifted(token_logprobs, np.float32), np.float32),
      SEGMENT_IDS: pad(segment_ids, np.int32),
      POSITIONS: pad(positions, np.int32),
  })


def stack(rows: list[Features]) -> Features:
  """Rows of equal length into one batch."""
  names = NAMES + ((BRANCH_IDS,) if BRANCH_IDS in rows[0] else ())
  return Features(**{name: np.stack([row[name] for row in rows]) for name in names})


def tf_row(tokens, token_weights, token_rewards, token_logprobs, segment_ids, positions) -> dict:
  """The same layout in TensorFlow, for one row of a tf.data pipeline (already padded or packed)."""
  import tensorflow as tf
  same_segment = tf.concat([tf.cast((segment_ids[1:] == segment_ids[:-1]) & (segment_ids[1:] > 0), tf.float32),
                            [0.0]], 0)

  def shifted(values):
    out = tf.concat([values[1:], tf.zeros([1], values.dtype)], 0)
    return out * tf.cast(same_segment, values.dtype)

  return {
      INPUT_TOKENS: tokens,
      TARGET_TOKENS: shifted(tokens),
      LOSS_WEIGHTS: shifted(token_weights),
      REWARDS: shifted(token_rewards),
      BEHAVIOUR_LOGPROBS: shifted(token_logprobs),
      SEGMENT_IDS: segment_ids,
      POSITIONS: positions,
  }
