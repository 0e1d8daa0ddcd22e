"""Where Stage 2's examples come from: this process's shard of a SeqIO task, as a resumable stream.

Every process reads its shard of the task (`seqio_tasks.task_examples` with its own
`seqio.ShardInfo`: process index of process count), shuffled by the run's seed and repeated without
end, through the library's feature converter for rows, and takes from it exactly
what its part of each step's batch needs. `position` (the task examples this process has
consumed) is saved with the checkpoint; a resumed stream starts there and goes on as an
uninterrupted one. The library's tasks are addressable by index, so a resume computes where it is
instead of replaying what came before (`seqio_tasks.task_examples`); packed rows restart at the
packer's chunk (it packs each run of `length` examples alone) and drop the rows of that chunk
already taken, so a resume replays at most one chunk whatever its position.

- `RowStream` (offline, SFT): rows of model features from the library's feature converter,
  padded to the row length, or packed when asked.
- `StateStream` (online): states (context and logged action, with what a judge needs); the trainer
  samples and judges fresh actions at them.
"""

from __future__ import annotations

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from swirl_jax import multihost, provenance
from swirl_jax.data import decomposition, features, seqio_tasks


def process_shard() -> seqio.ShardInfo:
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


class _Stream:
  def __init__(self, task: str, seed: int, use_cached: bool = False):
    self.task, self.seed, self.use_cached = task, seed, use_cached
    self.position = 0  # task examples consumed by this process
    self._iterator, self._per_call = None, None
    seqio.get_mixture_or_task(task)  # an unknown name fails here, before any model work

  def seek(self, position: int) -> None:
    """Continue from `position` (what this process had consumed when the checkpoint was saved)."""
    self.position, self._iterator = int(position), None

  def _ensure(self, per_call: int) -> None:
    if per_call != self._per_call:  # batched in tf.data by what a call takes
      self._iterator, self._per_call = None, per_call

  def _examples(self, start: int, lengths) -> tf.data.Dataset:
    ds, sought = seqio_tasks.task_examples(self.task, seed=self.seed, shard_info=process_shard(), start=start,
                                           sequence_length=lengths, use_cached=self.use_cached)
    if not sought:
      logging.warning("SeqIO task %r: its source is not addressable by index; resuming replays %d examples",
                      self.task, start)
    return ds

  def _next(self, make_iterator):
    if self._iterator is None:
      self._iterator = make_iterator()
    try:
      return next(self._iterator)
    except StopIteration:
      raise ValueError(f"SeqIO task {self.task!r}: no examples in process {jax.process_index()}'s shard "
                       f"(of {jax.process_count()})") from None
    except tf.errors.InvalidArgumentError as error:  # a length check, a malformed example
      message = " ".join(error.message.split())[:400]
      hint = "" if STRADDLES in message or seqio_tasks.NO_TOKENS in message else (
          " (raise TrainConfig.sequence_length if an example is longer than a row)")
      raise ValueError(f"SeqIO task {self.task!r}: {message}{hint}") from None


STRADDLES = ("the data position falls inside a packed row (a position this task, row length and seed did not "
             "give)")


def _rows_after(rows: tf.data.Dataset, examples: int) -> tf.data.Dataset:
  """Packed rows without those holding the first `examples` examples (a row holds as many as its
  largest segment id)."""
  def count(before, row):
    after = before + tf.reduce_max(row[features.SEGMENT_IDS])
    aligned = tf.debugging.Assert(tf.logical_or(before >= examples, after <= examples),
                                  [STRADDLES, before, after, examples])
    with tf.control_dependencies([aligned]):
      return after, (before, row)

  @tf.autograph.experimental.do_not_convert
  def after_position(before, row):
    del row
    return tf.greater_equal(before, examples)

  @tf.autograph.experimental.do_not_convert
  def row_alone(before, row):
    del before
    return row

  return rows.scan(tf.constant(0, tf.int32), count).filter(after_position).map(row_alone)


class RowStream(_Stream):
  """Rows of model features (`swirl_jax.data.features`), `length` tokens each."""

  def __init__(self, task: str, length: int, *, seed: int, pack: bool = False, reward_one: bool = False,
               context_weight: float = 0.0, use_cached: bool = False):
    super().__init__(task, seed, use_cached)
    self.length = length
    self.converter = seqio_tasks.StepwiseFeatureConverter(pack=pack, reward_one=reward_one,
                                                          context_weight=context_weight)

  @property
  def pack(self) -> bool:
    return self.converter.pack

  def next_rows(self, count: int) -> features.Features:
    """The next `count` rows, stacked ([count, length] each)."""
    def start():
      lengths = seqio_tasks.row_lengths(self.length)
      # SeqIO packs each run of `length` examples alone: restart at the run holding the position.
      first = self.position - self.position % self.length if self.pack else self.position
      rows = self.converter(self._examples(first, lengths), lengths)
      if self.position > first:
        rows = _rows_after(rows, self.position - first)
      return rows.batch(count, drop_remainder=True).prefetch(2).as_numpy_iterator()

    self._ensure(count)
    rows = features.Features(**self._next(start))
    self.position += int(rows[features.SEGMENT_IDS].max(axis=1).sum()) if self.pack else count
    return rows


class StateStream(_Stream):
  """States of a task of states (one weighted action at the end of each example)."""

  def next_states(self, count: int) -> list[decomposition.StateExample]:
    def start():
      return self._examples(self.position, {k: None for k in seqio_tasks.TOKEN_ALIGNED}).as_numpy_iterator()

    states = [seqio_tasks.example_state(self._next(start)) for _ in range(count)]
    self.position += count
    return states


def task_facts(task: str, use_cached: bool = False) -> seqio_tasks.TaskInfo:
  """A task's identity, size and longest example: as registered by this library, or read from
  one pass over the task (each process reads its shard; the facts are agreed over processes)."""
  known = seqio_tasks.info(task)
  if known is not None:
    return known
  ds = seqio.get_dataset(task, task_feature_lengths={k: None for k in seqio_tasks.TOKEN_ALIGNED},
                         feature_converter=seqio.PassThroughFeatureConverter(), dataset_split="train",
                         use_cached=use_cached, shuffle=False, num_epochs=1, shard_info=process_shard(),
                         verbose=False, trim_output_features=False)
  digests, count, longest = [], 0, 0
  for example in ds.as_numpy_iterator():
    digests.append(provenance.digest([np.asarray(example[k]).tolist() for k in seqio_tasks.TOKEN_ALIGNED]))
    count += 1
    longest = max(longest, len(example[seqio_tasks.TOKENS]))
  shards = multihost.allgather_json([provenance.digest(digests), count, longest])
  return seqio_tasks.TaskInfo({"task": task, "data": provenance.digest([s[0] for s in shards])},
                              sum(s[1] for s in shards), max(s[2] for s in shards))
