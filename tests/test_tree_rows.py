"""Tree-packed online rows: a state's context once, its G actions as branches. The loss and its
gradients equal the one-row-per-sample layout's (with and without PPO clipping and the KL term)."""

import jax
import numpy as np
import pytest
from flax import nnx

from swirl_jax.data import features
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.interfaces import TurnOutput
from swirl_jax.training.objectives import PolicyGradient
from swirl_jax.training.online import online_features, tree_features, tree_length

G = 3


def _batch():
  """3 states (contexts of 9, 20 and 14 tokens: past the tiny model's window of 8), G actions each
  of 1 to 6 tokens, with behaviour log-probs and advantages."""
  rng = np.random.default_rng(0)
  contexts = [rng.integers(2, 512, n).tolist() for n in (9, 20, 14)]
  actions = [TurnOutput(rng.integers(2, 512, n).tolist(), (-rng.random(n) * 3).tolist(), "", "stop_id")
             for n in (3, 1, 6, 5, 2, 4, 6, 6, 1)]
  advantages = rng.normal(size=len(actions)).astype(np.float32)
  return contexts, actions, advantages


def test_tree_rows_hold_each_context_once():
  contexts, actions, advantages = _batch()
  rows = online_features(contexts, actions, advantages, 128)
  tree = tree_features(contexts, actions, advantages, 128)
  assert rows[features.INPUT_TOKENS].shape[0] == 9 and tree[features.INPUT_TOKENS].shape[0] == 3
  assert (tree[features.SEGMENT_IDS] > 0).sum() == sum(
      tree_length(c, actions[s * G:(s + 1) * G]) for s, c in enumerate(contexts))
  # The same loss positions with the same targets, advantages and behaviour log-probs, in order.
  for name in (features.TARGET_TOKENS, features.REWARDS, features.BEHAVIOUR_LOGPROBS):
    np.testing.assert_array_equal(rows[name][rows[features.LOSS_WEIGHTS] > 0],
                                  tree[name][tree[features.LOSS_WEIGHTS] > 0])
  # Branch g of state 1 starts at the trunk's end: a copy of the context's last token at position 19.
  branch_ids, positions = tree[features.BRANCH_IDS][1], tree[features.POSITIONS][1]
  assert positions[branch_ids == 2][0] == 19 and tree[features.INPUT_TOKENS][1][branch_ids == 2][0] == contexts[1][-1]


@pytest.mark.parametrize("clip_epsilon,kl_coef", [pytest.param(None, 0.0, marks=pytest.mark.slow), (0.2, 0.5)])
def test_tree_rows_give_the_loss_and_gradients_of_one_row_per_sample(clip_epsilon, kl_coef):
  contexts, actions, advantages = _batch()
  model = init_model(model_config("tiny"), seed=5)
  reference = init_model(model_config("tiny"), seed=6) if kl_coef else None
  layouts = {"rows": (online_features(contexts, actions, advantages, 128), 1),
             "tree": (tree_features(contexts, actions, advantages, 128), G)}
  out = {}
  for name, (feats, per_row) in layouts.items():
    objective = PolicyGradient(kl_coef=kl_coef, clip_epsilon=clip_epsilon, sequences_per_row=per_row)
    batch = jax.tree.map(jax.numpy.asarray, dict(feats))

    def loss(m):
      return objective.loss(m, batch, reference, 64, None)
    (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    out[name] = value, metrics, grads
  (rows_loss, rows_metrics, rows_grads), (tree_loss, tree_metrics, tree_grads) = out["rows"], out["tree"]
  assert abs(float(rows_loss)) > 1e-3
  np.testing.assert_allclose(tree_loss, rows_loss, rtol=1e-5, atol=1e-6)
  for key in rows_metrics:
    np.testing.assert_allclose(tree_metrics[key], rows_metrics[key], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), tree_grads, rows_grads)
  if clip_epsilon:
    assert float(rows_metrics["clipped_fraction"]) > 0  # the clipped branch of the loss is exercised


def test_an_unweighted_sample_leaves_the_same_loss_positions_in_both_layouts():
  """An action weighted 0 (a sample the judge left unscored) has no loss position in either layout."""
  contexts, actions, advantages = _batch()
  weights = np.ones(len(actions), np.float32)
  weights[[1, 5]] = 0.0
  rows = online_features(contexts, actions, advantages, 128, action_weights=weights)
  tree = tree_features(contexts, actions, advantages, 128, action_weights=weights)
  expected = sum(len(a.tokens) for a, w in zip(actions, weights) if w)
  assert (rows[features.LOSS_WEIGHTS] > 0).sum() == (tree[features.LOSS_WEIGHTS] > 0).sum() == expected
  for name in (features.TARGET_TOKENS, features.REWARDS):
    np.testing.assert_array_equal(rows[name][rows[features.LOSS_WEIGHTS] > 0],
                                  tree[name][tree[features.LOSS_WEIGHTS] > 0])
