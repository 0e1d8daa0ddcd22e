"""Stage 2's streams resume by seeking, not by replaying: a resumed stream equals the uninterrupted
one, and it reads none of the examples before its position nor another process's."""

import collections.abc

import numpy as np
import pytest
import seqio

from swirl_jax.data import features, seqio_tasks
from swirl_jax.training import batches


class CountingExamples(collections.abc.Sequence):
  """A list of examples that records which indices were read."""

  def __init__(self, examples):
    self.examples, self.read = examples, []

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.examples[i]


def _examples(n: int, seed: int = 0) -> list[dict]:
  """n states of 4-40 tokens (context, then an action of 1-8 tokens) named by their index."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    context, action = int(rng.integers(3, 32)), int(rng.integers(1, 9))
    tokens = rng.integers(1, 1000, context + action)
    weights = np.r_[np.zeros(context), np.ones(action)]
    out.append(seqio_tasks._example(tokens, weights, weights * 0.5, -weights, f"t{i}", 0, f"q{i}", "q", ""))
  return out


def _register(name: str, n: int) -> CountingExamples:
  examples = CountingExamples(_examples(n))
  seqio_tasks.register_examples(name, lambda: examples, {"data": name})
  examples.read.clear()
  return examples


def _shard(monkeypatch, index: int, count: int) -> None:
  monkeypatch.setattr(batches, "process_shard", lambda: seqio.ShardInfo(index=index, num_shards=count))


def _take(stream, kind: str):
  if kind == "states":
    return [(s.trajectory_id, s.context, s.action) for s in stream.next_states(4)]
  return {k: np.asarray(v) for k, v in stream.next_rows(4).items()}


def _stream(name: str, kind: str):
  if kind == "states":
    return batches.StateStream(name, seed=3)
  return batches.RowStream(name, 64, seed=3, pack=kind == "packed rows")


@pytest.mark.parametrize("kind", ["states", "padded rows", "packed rows"])
@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_a_resumed_stream_equals_the_uninterrupted_one(monkeypatch, kind, shard):
  """Resumed after every call, across epochs (n = 60 examples) and across the packer's chunks of
  64 examples, each process's stream goes on exactly as it would have."""
  _shard(monkeypatch, *shard)
  name = f"resume:{kind}:{shard[1]}".replace(" ", "_")
  _register(name, 60)
  whole = _stream(name, kind)
  taken, positions = [], []
  calls = 16 if kind == "packed rows" else 40  # a packed row holds about 2.5 examples
  for _ in range(calls):
    positions.append(whole.position)
    taken.append(_take(whole, kind))
  assert whole.position > 130  # past two chunks of 64 and two epochs of 60
  for j in (1, calls // 5, calls // 2, calls - 1):
    resumed = _stream(name, kind)
    resumed.seek(positions[j])
    for expected in taken[j:j + 2]:
      got = _take(resumed, kind)
      if kind == "states":
        assert got == expected
      else:
        for key in expected:
          np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{key} after resuming at call {j}")
  if kind == "packed rows":
    assert max(t[features.SEGMENT_IDS].max() for t in taken) > 1  # rows hold several examples


@pytest.mark.parametrize("kind", ["states", "padded rows", "packed rows"])
def test_a_resume_reads_no_example_before_its_position(kind):
  """At position 4,992 of 400 examples (the 13th epoch; for packed rows, the start of the packer's
  78th chunk of 64) a resumed stream reads what it yields and what tf.data reads ahead: not 4,992."""
  name = f"seek:{kind}".replace(" ", "_")
  examples = _register(name, 400)
  stream = _stream(name, kind)
  stream.seek(4_992)
  _take(stream, kind)
  assert 0 < len(examples.read) < 400, len(examples.read)


def test_each_process_reads_only_its_own_examples(monkeypatch):
  """Process 1 of 2 reads the stream's examples 1, 3, 5, ...: in the first epoch, the odd places of
  the epoch's permutation, and none of process 0's."""
  _shard(monkeypatch, 1, 2)
  examples = _register("own_shard", 400)
  stream = batches.StateStream("own_shard", seed=5)
  states = stream.next_states(20)
  order = np.random.default_rng([5, 0]).permutation(400)
  assert [s.trajectory_id for s in states] == [f"t{i}" for i in order[1:40:2]]
  assert examples.read and set(examples.read) <= set(order[1::2].tolist())


def test_an_example_without_tokens_is_refused():
  """A packed row counts the examples it holds by its segments, and an empty example takes none."""
  empty = seqio_tasks._example([], [], [], [], "empty", 0, "q", "q", "")
  seqio_tasks.register_examples("empty_example", lambda: [empty] * 3, {})
  with pytest.raises(ValueError, match="an example has no tokens") as refused:
    batches.RowStream("empty_example", 64, seed=0, pack=True).next_rows(1)
  assert "sequence_length" not in str(refused.value)  # not a length problem


def test_a_position_inside_a_packed_row_is_refused():
  """Packed rows restart at the packer's chunk and drop the rows already taken: a position that
  ends inside a row was not written by this stream, and is refused rather than misaligned."""
  _register("straddle", 400)
  stream = _stream("straddle", "packed rows")
  rows = _take(stream, "packed rows")
  held = rows[features.SEGMENT_IDS].max(axis=1)
  assert held[0] > 1 and stream.position == held.sum()
  stream.seek(int(held[0]) - 1)
  with pytest.raises(ValueError, match="falls inside a packed row"):
    _take(stream, "packed rows")


@pytest.mark.parametrize("kind", ["states", "packed rows"])
def test_a_task_of_a_user_s_own_source_resumes_by_replaying_its_examples(kind):
  """A task over a source of the user's (not index-addressable) replays its source to the
  position, and the resumed stream still equals the uninterrupted one."""
  import tensorflow as tf
  examples = _examples(50)
  name = f"users_source_{kind.replace(' ', '_')}"

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=seqio_tasks.SIGNATURE)

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]), preprocessors=[],
                         output_features=seqio_tasks.output_features(), shuffle_buffer_size=20)
  whole = _stream(name, kind)
  taken, positions = [], []
  for _ in range(20):
    positions.append(whole.position)
    taken.append(_take(whole, kind))
  assert whole.position > 64
  for j in (3, 9, 19):
    resumed = _stream(name, kind)
    resumed.seek(positions[j])
    got = _take(resumed, kind)
    if kind == "states":
      assert got == taken[j]
    else:
      for key in got:
        np.testing.assert_array_equal(got[key], taken[j][key], err_msg=f"{key} after resuming at call {j}")
