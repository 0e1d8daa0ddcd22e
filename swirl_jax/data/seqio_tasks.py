"""SeqIO tasks of judged trajectories, and the step-wise feature converter: Stage 2 reads its data here.

One example is one training row's worth of token-aligned values:

  tokens              int32 [T]    token ids, as the trajectory files hold them (never re-tokenized)
  loss_weights        float32 [T]  > 0 on the action tokens to train on
  rewards             float32 [T]  the process judge's score of that token's action
  behaviour_logprobs  float32 [T]  log p(token) under the model that sampled it
  trajectory_id, question_id, question, transcript (strings), step_index (int32): what a judge
      needs to score a fresh action at a state (online mode)

Each (source, filter) pair registers two tasks over the same trajectories:
- `swirl:{source}:{filter}`: one example per state s_i (the paper's sub-trajectories): the context
  (every token before action i) and action i, weighted on action i. Online mode samples fresh
  actions at these states; offline and SFT can train on them too.
- `swirl:{source}:{filter}:trajectories`: one example per trajectory, weighted on every action
  (the prefix-shared layout: the same loss and gradients at about 1/K of the tokens). Offline and
  SFT read these.

A user registers a task of their own with `output_features()` and examples from `state_example` or
`trajectory_example` (or their own source yielding the same features).

Order: the library's sources shuffle inside the source (an endless stream of seeded epoch
permutations, dealt out to processes by example), so N processes together read exactly the stream
one process reads; each process computes its own examples by index, and a resume starts at its
position instead of replaying up to it (`task_examples`). A task whose source does not (SeqIO's shuffle buffer, file shards) trains
correctly, but its order then depends on the number of processes.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from swirl_jax import provenance
from swirl_jax.data import decomposition, features, filters, trajectory_io
from swirl_jax.records import Trajectory

TASK_PREFIX = "swirl"
NO_TOKENS = "an example has no tokens"
TRAJECTORIES_SUFFIX = ":trajectories"

TOKENS, WEIGHTS, REWARDS, LOGPROBS = "tokens", "loss_weights", "rewards", "behaviour_logprobs"
TOKEN_ALIGNED = (TOKENS, WEIGHTS, REWARDS, LOGPROBS)
TRAJECTORY_ID, STEP_INDEX, QUESTION_ID, QUESTION, TRANSCRIPT = (
    "trajectory_id", "step_index", "question_id", "question", "transcript")

SIGNATURE = {
    TOKENS: tf.TensorSpec([None], tf.int32), WEIGHTS: tf.TensorSpec([None], tf.float32),
    REWARDS: tf.TensorSpec([None], tf.float32), LOGPROBS: tf.TensorSpec([None], tf.float32),
    TRAJECTORY_ID: tf.TensorSpec([], tf.string), STEP_INDEX: tf.TensorSpec([], tf.int32),
    QUESTION_ID: tf.TensorSpec([], tf.string), QUESTION: tf.TensorSpec([], tf.string),
    TRANSCRIPT: tf.TensorSpec([], tf.string),
}


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """The task features SeqIO checks (the judge strings ride along unchecked). Token ids are not
  re-encoded, so any vocabulary of the right size serves; it is used to show examples."""
  vocabulary = vocabulary or seqio.PassThroughVocabulary(size=2**31 - 1)
  return {
      TOKENS: seqio.Feature(vocabulary, add_eos=False),
      WEIGHTS: seqio.ContinuousFeature(dtype=tf.float32, rank=1),
      REWARDS: seqio.ContinuousFeature(dtype=tf.float32, rank=1),
      LOGPROBS: seqio.ContinuousFeature(dtype=tf.float32, rank=1),
  }


def _example(tokens, weights, rewards, logprobs, trajectory_id, step_index, question_id, question, transcript):
  return {TOKENS: np.asarray(tokens, np.int32), WEIGHTS: np.asarray(weights, np.float32),
          REWARDS: np.asarray(rewards, np.float32), LOGPROBS: np.asarray(logprobs, np.float32),
          TRAJECTORY_ID: trajectory_id, STEP_INDEX: np.int32(step_index), QUESTION_ID: question_id,
          QUESTION: question, TRANSCRIPT: transcript}


def state_example(state: decomposition.StateExample) -> dict[str, np.ndarray]:
  """One state (context then action, weighted on the action) as a task example."""
  n_ctx, n_act = len(state.context), len(state.action)
  zeros = np.zeros(n_ctx, np.float32)
  return _example(list(state.context) + list(state.action), np.r_[zeros, np.ones(n_act)],
                  np.r_[zeros, np.full(n_act, state.reward)], np.r_[zeros, state.behaviour_logprobs],
                  state.trajectory_id, state.step_index, state.question_id, state.question, state.transcript)


def trajectory_example(trajectory: Trajectory) -> dict[str, np.ndarray]:
  """A whole trajectory, weighted on every action (the prefix-shared row), as a task example."""
  row = decomposition.prefix_shared(trajectory)
  return _example(row.tokens, row.loss_weights, row.rewards, row.behaviour_logprobs, trajectory.id, -1,
                  trajectory.question_id, trajectory.question, "")


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_state(example: Mapping[str, np.ndarray]) -> decomposition.StateExample:
  """A task example back as a state: its weighted tokens must be one span at the end (the action)."""
  weights = np.asarray(example[WEIGHTS])
  weighted = np.flatnonzero(weights > 0)
  tokens = np.asarray(example[TOKENS])
  name = _text(example.get(TRAJECTORY_ID, b"?"))
  if weighted.size == 0 or weighted[-1] != len(tokens) - 1 or weighted.size != len(tokens) - weighted[0]:
    raise ValueError(f"example of trajectory {name!r} (step {int(example.get(STEP_INDEX, -1))}) is not a state: "
                     "online mode needs one action, the weighted tokens at its end (a task of states, such as "
                     "swirl:{source}:{filter}, not its :trajectories task)")
  start = int(weighted[0])
  return decomposition.StateExample(
      name, int(example[STEP_INDEX]), tokens[:start].tolist(), tokens[start:].tolist(),
      float(np.asarray(example[REWARDS])[start]), np.asarray(example[LOGPROBS])[start:].tolist(),
      _text(example[QUESTION_ID]), _text(example[QUESTION]), _text(example[TRANSCRIPT]))


class ShuffledSource(seqio.DataSource):
  """A list of examples as SeqIO's source, addressable by index. Shuffled, it is an endless stream
  of epochs, each a permutation drawn from (seed, epoch); process p of P reads the stream's
  examples p, p + P, p + 2P, ..., so every process count reads the same stream, and each process
  computes its own examples from their index (it never reads the others', nor those before a
  resumed position: `dataset_from`). Unshuffled, it is one pass in order."""

  def __init__(self, load: Callable[[], Sequence[dict]]):
    super().__init__(splits=("train",), caching_permitted=True, performs_internal_shuffling=True)
    self._load, self._examples = load, None

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # SeqIO hands each process its ShardInfo instead of sharding the whole stream

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def examples(self) -> Sequence[dict]:
    if self._examples is None:
      self._examples = self._load()
    return self._examples

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # epochs: SeqIO repeats an unshuffled pass
    if split != "train":
      raise ValueError(f"split {split!r}: judged trajectories have one split, 'train'")
    return self.dataset_from(0, shuffle=shuffle, seed=seed, shard_info=shard_info)

  def dataset_from(self, start: int, *, shuffle: bool = True, seed: int | None = None,
                   shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
    """This shard's examples from its `start`-th on. Local example k is the stream's example
    index + k * num_shards: in epoch (that // n), position (that % n) of the epoch's permutation."""
    shard, shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)

    def stream():
      examples = self.examples()
      n = len(examples)
      if not shuffle or n == 0:
        for g in range(shard + start * shards, n, shards):
          yield examples[g]
        return
      epoch, order = None, None
      for k in itertools.count(start):
        e, i = divmod(shard + k * shards, n)
        if e != epoch:
          epoch, order = e, np.random.default_rng([seed or 0, e]).permutation(n)
        yield examples[order[i]]

    return tf.data.Dataset.from_generator(stream, output_signature=SIGNATURE)


def task_examples(task: str, *, seed: int, shard_info: seqio.ShardInfo | None, start: int = 0,
                  sequence_length: Mapping[str, int | None] | None = None,
                  use_cached: bool = False) -> tuple[tf.data.Dataset, bool]:
  """A task's examples in this shard from its `start`-th on, shuffled by `seed`, repeated without
  end; and whether the start was sought rather than replayed. A task of the library's
  (`register_examples`: an index-addressable source, no preprocessors) starts at its example
  `start` without reading any before it; any other task runs its source and preprocessors over
  the first `start` examples and drops them."""
  provider = seqio.get_mixture_or_task(task)
  source = getattr(provider, "source", None)
  if (isinstance(source, ShuffledSource) and not getattr(provider, "preprocessors", True)
      and not (use_cached and provider.supports_caching)):  # SeqIO reads a task it cannot cache on the fly
    return source.dataset_from(start, shuffle=True, seed=seed, shard_info=shard_info), True
  ds = provider.get_dataset(sequence_length=sequence_length, split="train", use_cached=use_cached, shuffle=True,
                            seed=seed, shard_info=shard_info, num_epochs=None, trim_output_features=False)
  return ds.skip(start), start == 0


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the trainer needs to know of a task before it reads it: what data it is (for the
  checkpoint's fingerprint) and its longest example (the sampler's capacity)."""

  identity: dict
  examples: int
  longest: int


_INFO: dict[str, TaskInfo] = {}


def info(name: str) -> TaskInfo | None:
  """The registered facts of a task (None for a task registered elsewhere)."""
  return _INFO.get(name)


def register_examples(name: str, load: Callable[[], list[dict]], identity: dict,
                      vocabulary: seqio.Vocabulary | None = None) -> str:
  """Registers (or replaces) task `name` over the examples `load` returns."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  source = ShuffledSource(load)
  seqio.TaskRegistry.add(name, source=source, preprocessors=[], output_features=output_features(vocabulary),
                         shuffle_buffer_size=None)
  examples = source.examples()
  _INFO[name] = TaskInfo({"task": name, **identity}, len(examples),
                         max((len(e[TOKENS]) for e in examples), default=0))
  return name


@dataclasses.dataclass(frozen=True)
class RegisteredData:
  """The two tasks over one set of trajectories: its states and its whole trajectories."""

  states: str
  trajectories: str

  def for_mode(self, mode: str, share_prefixes: bool = True) -> str:
    return self.trajectories if mode != "online" and share_prefixes else self.states


def register_trajectories(name: str | None, trajectories: Sequence[Trajectory],
                          vocabulary: seqio.Vocabulary | None = None) -> RegisteredData:
  """Registers `name` (states) and `name:trajectories` over trajectories held in memory; with no
  name, `swirl:memory:{digest}` (the same trajectories, the same task)."""
  trajectories = list(trajectories)
  if not trajectories:
    raise ValueError(f"task {name!r}: no trajectories (did the filter keep none?)")
  identity = {"data": provenance.digest([t.to_json() for t in trajectories])}
  name = name or f"{TASK_PREFIX}:memory:{identity['data']}"
  states = register_examples(name, lambda: [state_example(e) for t in trajectories
                                            for e in decomposition.expand(t)], identity, vocabulary)
  whole = register_examples(name + TRAJECTORIES_SUFFIX, lambda: [trajectory_example(t) for t in trajectories],
                            identity, vocabulary)
  return RegisteredData(states, whole)


def register_judged(source: str, strategy: str, judged_dir: str,
                    vocabulary: seqio.Vocabulary | None = None) -> RegisteredData:
  """Registers `swirl:{source}:{strategy}` (and its :trajectories task) over the trajectories of
  `judged_dir` that the filter keeps."""
  if strategy not in filters.STRATEGIES:
    raise ValueError(f"unknown filter {strategy!r}; use one of {filters.STRATEGIES}")
  kept = filters.filter_trajectories(trajectory_io.read_all(judged_dir), strategy)
  if not kept:
    raise ValueError(f"{judged_dir}: the {strategy!r} filter keeps no trajectory")
  return register_trajectories(f"{TASK_PREFIX}:{source}:{strategy}", kept, vocabulary)


def register_all(source: str, judged_dir: str, vocabulary: seqio.Vocabulary | None = None) -> list[RegisteredData]:
  """Every filter's tasks over one judged directory (filters that keep nothing are skipped)."""
  judged = list(trajectory_io.read_all(judged_dir))
  return [register_trajectories(f"{TASK_PREFIX}:{source}:{s}", filters.filter_trajectories(judged, s), vocabulary)
          for s in filters.STRATEGIES if filters.filter_trajectories(judged, s)]


def _no_zero_bits(x):
  """float32 -> int32 bits with +0.0 sent to -0.0: seqio's packer treats 0 as padding."""
  x = tf.where(tf.equal(x, 0.0), tf.constant(-0.0, tf.float32), x)
  return tf.bitcast(x, tf.int32)


def _from_bits(bits):
  return tf.bitcast(bits, tf.float32) + 0.0  # -0.0 and padding become +0.0


class StepwiseFeatureConverter(seqio.FeatureConverter):
  """Task examples to the model's features (`swirl_jax.data.features`), padded or packed.

  The targets of weighted tokens carry the loss; attention stays causal within each packed
  segment. `reward_one` (SFT) puts reward 1 on every weighted token; `context_weight` > 0 (with it)
  also trains on the unweighted tokens (prompt, tool results), as when a model is taught the
  protocol from scratch. Give every task feature the row length in `task_feature_lengths`.
  """

  TASK_FEATURES = {TOKENS: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                   **{k: seqio.FeatureConverter.FeatureSpec(dtype=tf.float32) for k in (WEIGHTS, REWARDS, LOGPROBS)}}
  MODEL_FEATURES = {name: seqio.FeatureConverter.FeatureSpec(dtype=tf.as_dtype(dtype))
                    for name, dtype in features.DTYPES.items()}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, reward_one: bool = False, context_weight: float = 0.0, **kwargs):
    super().__init__(pack=pack, **kwargs)
    self.reward_one, self.context_weight = reward_one, float(context_weight)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    def token_aligned(ex):
      weights, rewards = ex[WEIGHTS], ex[REWARDS]
      if self.reward_one:
        if self.context_weight:
          weights = tf.where(weights > 0, 1.0, self.context_weight)
        rewards = tf.cast(weights > 0, tf.float32)
      n = tf.size(ex[TOKENS])
      checks = [tf.debugging.assert_equal(tf.size(ex[k]), n, message=f"{k} and tokens differ in length")
                for k in (WEIGHTS, REWARDS, LOGPROBS)]
      # An empty example would take no segment of a packed row, and rows count examples by segment.
      checks.append(tf.debugging.assert_positive(n, message=NO_TOKENS))
      with tf.control_dependencies(checks):
        tokens = ex[TOKENS] + 1
      # Every feature is nonzero on real tokens (ids + 1, kind 1 / 2, float bits without +0), so the
      # packer, which takes 0 for padding, keeps them aligned.
      return {"tokens": tokens, "kind": tf.where(ex[WEIGHTS] > 0, 2, 1),
              "weights": _no_zero_bits(weights), "rewards": _no_zero_bits(rewards),
              "logprobs": _no_zero_bits(ex[LOGPROBS])}

    length = task_feature_lengths[TOKENS]
    ds = ds.map(token_aligned, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {k: length for k in ("tokens", "kind", "weights", "rewards", "logprobs")})

    def model_features(ex):
      if self.pack:
        segments, positions = ex["tokens_segment_ids"], ex["tokens_positions"]
      else:
        segments = tf.cast(ex["kind"] > 0, tf.int32)
        positions = tf.range(tf.shape(ex["tokens"])[0], dtype=tf.int32) * segments
      tokens = tf.where(segments > 0, ex["tokens"] - 1, 0)
      return features.tf_row(tokens, _from_bits(ex["weights"]), _from_bits(ex["rewards"]), _from_bits(ex["logprobs"]),
                             segments, positions)

    return ds.map(model_features, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    return {k: task_feature_lengths[TOKENS] for k in self.MODEL_FEATURES}


def row_lengths(length: int) -> dict[str, int]:
  """`task_feature_lengths` for rows of `length` tokens."""
  return {k: length for k in TOKEN_ALIGNED}


def shared_row_features(rows: decomposition.SharedRow | Sequence[decomposition.SharedRow],
                        length: int) -> features.Features:
  """The prefix-shared layout as the model's features, in numpy: one trajectory per row, or
  several packed into one row (segment ids 1, 2, ...; positions restart; no target crosses a
  boundary). The converter's padded rows of a :trajectories task equal these (its packed rows
  group trajectories as SeqIO's packer does)."""
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


def prefix_shared_batch(trajectories: Sequence[Trajectory], length: int, reward_one: bool = False,
                        context_weight: float = 0.0) -> dict[str, np.ndarray]:
  """A batch of prefix-shared rows built in numpy (one row per trajectory, or per list of
  trajectories to pack into one row): the reference the SeqIO path is checked and benchmarked
  against, and a way to lay out a batch by hand."""
  rows = []
  for t in trajectories:
    group = t if isinstance(t, (list, tuple)) else [t]
    rows.append(shared_row_features([_shared_row(x, reward_one, context_weight) for x in group], length))
  return features.stack(rows)
