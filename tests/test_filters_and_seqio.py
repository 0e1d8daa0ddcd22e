"""Filters keep the expected ids; SeqIO examples carry the stored ids; both layouts agree."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from swirl_jax.data import decomposition, features, filters, seqio_tasks, trajectory_io
from swirl_jax.models import init_model, model_config
from swirl_jax.training.logprobs import reward_weighted_nll
from swirl_jax.testing.judged import EXPECTED, known_trajectories


def test_each_filter_keeps_exactly_the_expected_ids():
  trajectories = known_trajectories()
  for strategy, expected in EXPECTED.items():
    assert {t.id for t in filters.filter_trajectories(trajectories, strategy)} == expected, strategy
  assert filters.survival(trajectories) == {**{k: len(v) for k, v in EXPECTED.items()}, "total": 6}
  with pytest.raises(ValueError, match="unknown filter"):
    filters.keep(trajectories[0], "best")


@pytest.fixture()
def judged_dir(tmp_path):
  trajectories = known_trajectories()
  trajectory_io.write_shard(trajectory_io.shard_path(str(tmp_path), 0), trajectories[:3])
  trajectory_io.write_shard(trajectory_io.shard_path(str(tmp_path), 1), trajectories[3:])
  return str(tmp_path), trajectories


def _one_pass(name):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split="train", shuffle=False, trim_output_features=False)
  return list(ds.as_numpy_iterator())


def test_seqio_examples_equal_stored_token_ids(judged_dir):
  directory, trajectories = judged_dir
  registered = seqio_tasks.register_all("synthetic", directory)
  assert registered[1].states == "swirl:synthetic:process"
  assert registered[1].trajectories == "swirl:synthetic:process:trajectories"
  for strategy, data in zip(filters.STRATEGIES, registered):
    kept = [t for t in trajectories if t.id in EXPECTED[strategy]]
    states = [seqio_tasks.example_state(ex) for ex in _one_pass(data.states)]
    expected = [e for t in kept for e in decomposition.expand(t)]
    assert len(states) == len(expected), strategy
    for got, want in zip(states, expected):  # ids and text exactly; scores and log-probs in float32
      np.testing.assert_allclose(got.behaviour_logprobs, want.behaviour_logprobs, rtol=1e-6)
      assert got.reward == pytest.approx(want.reward, rel=1e-6)
      assert (got.context, got.action, got.trajectory_id, got.step_index, got.question_id, got.question,
              got.transcript) == (want.context, want.action, want.trajectory_id, want.step_index, want.question_id,
                                  want.question, want.transcript), strategy
    rows = _one_pass(data.trajectories)
    assert [ex["tokens"].tolist() for ex in rows] == [decomposition.prefix_shared(t).tokens.tolist() for t in kept]
  with pytest.raises(ValueError, match="online mode needs one action"):
    seqio_tasks.example_state(_one_pass(registered[0].trajectories)[0])


def _converted(name, length, batch_size, **converter):
  converter = seqio_tasks.StepwiseFeatureConverter(**converter)
  ds = seqio.get_dataset(name, task_feature_lengths=seqio_tasks.row_lengths(length), dataset_split="train",
                         shuffle=False, feature_converter=converter, trim_output_features=False)
  return [jax.tree.map(jnp.asarray, b) for b in ds.batch(batch_size).as_numpy_iterator()]


def test_packed_weights_only_on_action_tokens(judged_dir):
  directory, trajectories = judged_dir
  data = seqio_tasks.register_judged("synthetic", "none", directory)
  [batch] = _converted(data.states, 112, 64, pack=True)
  examples = [e for t in trajectories for e in decomposition.expand(t)]
  # Every weighted target, in order, is exactly the action tokens of the examples.
  weighted = np.asarray(batch[features.TARGET_TOKENS])[np.asarray(batch[features.LOSS_WEIGHTS]) > 0]
  assert weighted.tolist() == [tok for e in examples for tok in e.action]
  assert np.asarray(batch[features.SEGMENT_IDS]).max() > 1  # several examples share a row
  logprobs = np.asarray(batch[features.BEHAVIOUR_LOGPROBS])[np.asarray(batch[features.LOSS_WEIGHTS]) > 0]
  np.testing.assert_allclose(logprobs, [lp for e in examples for lp in e.behaviour_logprobs], rtol=1e-6)
  rewards = np.asarray(batch[features.REWARDS])[np.asarray(batch[features.LOSS_WEIGHTS]) > 0]
  np.testing.assert_allclose(rewards, [e.reward for e in examples for _ in e.action], rtol=1e-6)


def test_the_converter_makes_the_numpy_builder_rows_and_refuses_long_examples(judged_dir):
  """Rows of a :trajectories task from the SeqIO converter equal the numpy prefix-shared rows,
  for offline and for SFT with and without loss on the context; an example longer than the row is
  an error, not a silently cut row."""
  directory, trajectories = judged_dir
  data = seqio_tasks.register_judged("synthetic", "none", directory)
  for reward_one, context_weight in ((False, 0.0), (True, 0.0), (True, 0.5)):
    [converted] = _converted(data.trajectories, 96, 64, reward_one=reward_one, context_weight=context_weight)
    expected = seqio_tasks.prefix_shared_batch(trajectories, 96, reward_one=reward_one, context_weight=context_weight)
    for name in features.NAMES:
      np.testing.assert_array_equal(np.asarray(converted[name]), expected[name], err_msg=name)
  with pytest.raises(tf.errors.InvalidArgumentError):
    _converted(data.trajectories, 40, 64)


@pytest.mark.slow
def test_prefix_shared_and_expanded_layouts_give_the_same_loss_and_gradients(judged_dir):
  directory, trajectories = judged_dir
  data = seqio_tasks.register_judged("synthetic", "none", directory)
  [expanded] = _converted(data.states, 112, 64, pack=True)
  [shared] = _converted(data.trajectories, 96, 64)
  assert int(shared[features.LOSS_WEIGHTS].sum()) == int(expanded[features.LOSS_WEIGHTS].sum())
  shared_tokens = int((shared[features.SEGMENT_IDS] > 0).sum())
  expanded_tokens = int((expanded[features.SEGMENT_IDS] > 0).sum())
  assert shared_tokens == sum(len(decomposition.prefix_shared(t).tokens) for t in trajectories)
  assert shared_tokens < expanded_tokens * 0.75  # prefixes are not repeated

  model = init_model(model_config("tiny"), seed=0)
  graphdef, params = nnx.split(model)

  def loss(params, batch, n):
    return reward_weighted_nll(nnx.merge(graphdef, params), batch, n)

  n = int(expanded[features.LOSS_WEIGHTS].sum())
  loss_a, grad_a = jax.value_and_grad(loss)(params, expanded, n)
  loss_b, grad_b = jax.value_and_grad(loss)(params, shared, n)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Gathering only the loss positions gives the loss of the full [B, L, V] computation.
  np.testing.assert_allclose(loss(params, shared, None), loss_b, rtol=1e-6)


def test_packed_prefix_shared_rows_give_the_loss_of_one_row_per_trajectory(judged_dir):
  """Several whole trajectories in one row (segment ids, restarting positions) train exactly as
  one row each, with and without loss on the context tokens."""
  _, trajectories = judged_dir
  model = init_model(model_config("tiny"), seed=0)
  graphdef, params = nnx.split(model)
  loss = lambda batch: reward_weighted_nll(nnx.merge(graphdef, params), batch)
  for context_weight in (0.0, 1.0):
    one_each = seqio_tasks.prefix_shared_batch(trajectories, 96, reward_one=True, context_weight=context_weight)
    packed = seqio_tasks.prefix_shared_batch([trajectories[:2], trajectories[2:]], 192, reward_one=True,
                                             context_weight=context_weight)
    assert packed[features.SEGMENT_IDS].max() >= 2
    assert packed[features.LOSS_WEIGHTS].sum() == one_each[features.LOSS_WEIGHTS].sum()
    np.testing.assert_allclose(loss(jax.tree.map(jnp.asarray, packed)), loss(jax.tree.map(jnp.asarray, one_each)),
                               rtol=1e-5)
  with pytest.raises(ValueError, match="the row holds 40"):
    seqio_tasks.prefix_shared_batch([trajectories], 40)


def test_the_feature_contract_is_spelled_in_one_module():
  """Feature names live in swirl_jax/data/features.py; every other module uses its constants."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spelled = []
  for folder in ("swirl_jax", "benchmarks", "experiments", "tests"):
    for directory, _, files in os.walk(os.path.join(root, folder)):
      for name in files:
        path = os.path.join(directory, name)
        if name.endswith(".py") and path != os.path.join(root, "swirl_jax", "data", "features.py"):
          text = open(path, encoding="utf-8").read()
          spelled += [f"{os.path.relpath(path, root)}: {n}" for n in features.NAMES if f'"{n}"' in text]
  assert not spelled, spelled


def test_the_numpy_and_tf_builders_make_the_same_row():
  """Two packed segments and padding: both builders give the same features."""
  tokens = np.array([2, 5, 6, 7, 2, 8, 9, 0, 0], np.int32)
  weights = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0], np.float32)
  rewards = np.array([0, 0, .5, .5, 0, 0, -1, 0, 0], np.float32)
  logprobs = np.array([0, 0, -.1, -.2, 0, 0, -.3, 0, 0], np.float32)
  segments = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0], np.int32)
  positions = np.array([0, 1, 2, 3, 0, 1, 2, 0, 0], np.int32)
  from_numpy = features.numpy_row(tokens[:7], weights[:7], rewards[:7], logprobs[:7], segments[:7], positions[:7], 9)
  from_tf = features.tf_row(*(tf.constant(x) for x in (tokens, weights, rewards, logprobs, segments, positions)))
  assert set(from_numpy) == set(from_tf) == set(features.NAMES)
  for name in features.NAMES:
    np.testing.assert_array_equal(from_numpy[name], from_tf[name].numpy(), err_msg=name)
    assert from_numpy[name].dtype == np.dtype(features.DTYPES[name]), name
  # Position 3 ends segment 1: its target is 0, not segment 2's first token.
  assert from_numpy[features.TARGET_TOKENS].tolist() == [5, 6, 7, 0, 8, 9, 0, 0, 0]
  assert from_numpy[features.LOSS_WEIGHTS].tolist() == [0, 1, 1, 0, 0, 1, 0, 0, 0]


def test_packing_keeps_token_zero_and_refuses_features_of_unequal_length(tmp_path):
  """Token id 0 is a real token in some vocabularies; SeqIO's packer reads 0 as padding. Packed
  rows still hold every token, and the weighted targets are exactly the actions."""
  trajectories = known_trajectories()
  for t in trajectories:
    t.steps[0].context_tokens[1] = 0
    t.steps[0].action_tokens[0] = 0
  data = seqio_tasks.register_trajectories("zeros", trajectories)
  [batch] = _converted(data.trajectories, 192, 64, pack=True)
  assert np.asarray(batch[features.SEGMENT_IDS]).max() > 1
  real = np.asarray(batch[features.SEGMENT_IDS]) > 0
  packed_tokens = np.asarray(batch[features.INPUT_TOKENS])[real].tolist()
  assert packed_tokens == [tok for t in trajectories for tok in decomposition.prefix_shared(t).tokens.tolist()]
  weighted = np.asarray(batch[features.TARGET_TOKENS])[np.asarray(batch[features.LOSS_WEIGHTS]) > 0]
  assert weighted.tolist() == [tok for t in trajectories for s in t.steps for tok in s.action_tokens]

  bad = seqio_tasks.trajectory_example(trajectories[0])
  bad[seqio_tasks.REWARDS] = bad[seqio_tasks.REWARDS][:-1]
  seqio_tasks.register_examples("unequal", lambda: [bad], {})
  with pytest.raises(tf.errors.InvalidArgumentError, match="rewards and tokens differ in length"):
    _converted("unequal", 96, 4)
