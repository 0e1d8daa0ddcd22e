"""SeqIO tasks over judged trajectory files, and the step-wise feature converter.

A task `swirl:{source}:{filter}` yields one example per state s_i of the kept
trajectories: `context` (every token before action i), `action` (its tokens),
`reward` (the process judge's score), `behaviour_logprobs`. Token ids come from
the files as they are: nothing is re-tokenized.

`StepwiseFeatureConverter` turns examples into decoder-only model features:
the sequence context + action as input, next-token targets, loss weights on
action tokens only, and token-aligned rewards and behaviour log-probs, so that
packing several examples into one row keeps everything aligned.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from swirl_jax.data import decomposition, features, filters, trajectory_io

TASK_PREFIX = "swirl"


def _examples(judged_dir: str, strategy: str):
  for trajectory in filters.filter_trajectories(trajectory_io.read_all(judged_dir), strategy):
    for example in decomposition.expand(trajectory):
      yield {"context": np.asarray(example.context, np.int32),
             "action": np.asarray(example.action, np.int32),
             "reward": np.float32(example.reward),
             "behaviour_logprobs": np.asarray(example.behaviour_logprobs, np.float32)}


_SIGNATURE = {"context": tf.TensorSpec([None], tf.int32), "action": tf.TensorSpec([None], tf.int32),
              "reward": tf.TensorSpec([], tf.float32),
              "behaviour_logprobs": tf.TensorSpec([None], tf.float32)}


def register_task(source: str, strategy: str, judged_dir: str, vocabulary: seqio.Vocabulary,
                  name: str | None = None) -> str:
  """Registers (or replaces) the task for one (source, filter) pair; returns its name."""
  if strategy not in filters.STRATEGIES:
    raise ValueError(f"unknown filter {strategy!r}; use one of {filters.STRATEGIES}")
  name = name or f"{TASK_PREFIX}:{source}:{strategy}"

  def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
    del split, shuffle_files, seed  # one split: the judged files
    return tf.data.Dataset.from_generator(lambda: _examples(judged_dir, strategy),
                                          output_signature=_SIGNATURE)

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train",)),
      preprocessors=[],
      output_features={
          "context": seqio.Feature(vocabulary, add_eos=False),
          "action": seqio.Feature(vocabulary, add_eos=False),
          "reward": seqio.ContinuousFeature(dtype=tf.float32, rank=0),
          "behaviour_logprobs": seqio.ContinuousFeature(dtype=tf.float32, rank=1),
      })
  return name


def register_all(source: str, judged_dir: str, vocabulary: seqio.Vocabulary) -> list[str]:
  return [register_task(source, s, judged_dir, vocabulary) for s in filters.STRATEGIES]


def _no_zero_bits(x):
  """float32 -> int32 bits with +0.0 sent to -0.0: seqio's packer treats 0 as padding."""
  x = tf.where(tf.equal(x, 0.0), tf.constant(-0.0, tf.float32), x)
  return tf.bitcast(x, tf.int32)


def _from_bits(bits):
  return tf.bitcast(bits, tf.float32) + 0.0  # -0.0 and padding become +0.0


class StepwiseFeatureConverter(seqio.FeatureConverter):
  """Decoder-only features with loss on action tokens only; packs when asked.

  Model features: the contract of `swirl_jax.data.features` (loss weight 1
  where the target is an action token of the same example). Attention stays
  causal within each segment.
  """

  # Lengths are given for the two token features; `reward` and
  # `behaviour_logprobs` ride along and are aligned to the action tokens here.
  TASK_FEATURES = {
      "context": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "action": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {name: seqio.FeatureConverter.FeatureSpec(dtype=tf.as_dtype(dtype))
                    for name, dtype in features.DTYPES.items()}
  PACKING_FEATURE_DTYPES = {}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    def token_aligned(ex):
      n_ctx, n_act = tf.shape(ex["context"])[0], tf.shape(ex["action"])[0]
      zeros = tf.zeros([n_ctx], tf.float32)
      # Every feature is nonzero on real tokens (weights as 1 / 2), so the packer keeps them aligned.
      return {
          "tokens": tf.concat([ex["context"], ex["action"]], 0),
          "kind": tf.concat([tf.ones([n_ctx], tf.int32), tf.fill([n_act], 2)], 0),
          "rewards": _no_zero_bits(tf.concat([zeros, tf.fill([n_act], ex["reward"])], 0)),
          "logprobs": _no_zero_bits(tf.concat([zeros, ex["behaviour_logprobs"]], 0)),
      }

    length = task_feature_lengths["context"] + task_feature_lengths["action"]
    ds = ds.map(token_aligned, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {k: length for k in ("tokens", "kind", "rewards", "logprobs")})

    def model_features(ex):
      tokens = ex["tokens"]
      if self.pack:
        segments, positions = ex["tokens_segment_ids"], ex["tokens_positions"]
      else:
        segments = tf.cast(ex["kind"] > 0, tf.int32)
        positions = tf.range(tf.shape(tokens)[0], dtype=tf.int32) * segments
      is_action = tf.cast(ex["kind"] == 2, tf.float32)
      return features.tf_row(tokens, is_action, _from_bits(ex["rewards"]), _from_bits(ex["logprobs"]), segments,
                             positions)

    return ds.map(model_features, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["context"] + task_feature_lengths["action"]
    return {k: length for k in self.MODEL_FEATURES}


def shared_row_features(rows: decomposition.SharedRow | Sequence[decomposition.SharedRow],
                        length: int) -> features.Features:
  """The prefix-shared layout as the model's features: one trajectory per row, or several packed
  into one row (segment ids 1, 2, ...; positions restart; no target crosses a boundary)."""
  rows = [rows] if isinstance(rows, decomposition.SharedRow) else list(rows)
  n = sum(len(r.tokens) for r in rows)
  if n > length:
    raise ValueError(f"trajectories {[r.trajectory_id for r in rows]} have {n} tokens; the row holds {length}")
  joined = lambda name: np.concatenate([np.asarray(getattr(r, name)) for r in rows])
  return features.numpy_row(joined("tokens"), joined("loss_weights"), joined("rewards"), joined("behaviour_logprobs"),
                            np.concatenate([np.full(len(r.tokens), k + 1) for k, r in enumerate(rows)]),
                            np.concatenate([np.arange(len(r.tokens)) for r in rows]), length)


def _shared_row(trajectory, reward_one: bool, context_weight: float) -> decomposition.SharedRow:
  row = decomposition.prefix_shared(trajectory)
  if reward_one:
    if context_weight:
      row.loss_weights = np.where(row.loss_weights > 0, 1.0, context_weight).astype(np.float32)
    row.rewards = (row.loss_weights > 0).astype(np.float32)
  return row


def prefix_shared_batch(trajectories, length: int, reward_one: bool = False,
                        context_weight: float = 0.0) -> dict[str, np.ndarray]:
  """A batch of prefix-shared rows in the model's feature format: one row per trajectory, or
  per list of trajectories to pack into one row.

  `reward_one` puts reward 1 on every action token (the SFT baseline);
  `context_weight` > 0 (with reward_one) also trains on the context tokens
  (prompt, tool results), as when a model is taught the protocol from scratch.
  """
  rows = []
  for t in trajectories:
    group = t if isinstance(t, (list, tuple)) else [t]
    rows.append(shared_row_features([_shared_row(x, reward_one, context_weight) for x in group], length))
  return features.stack(rows)
