"""Losses against hand-computed gradients; SFT equivalence; KL at the initial params; learning."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swirl_jax.data import features
from swirl_jax.data.decomposition import StateExample
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.interfaces import TurnOutput
from swirl_jax.sampling.sampler import Sampler, SamplingConfig
from swirl_jax.training import losses, online
from swirl_jax.training.logprobs import reward_weighted_nll, target_logprobs

CONTEXTS = [[2, 17, 33, 41, 5], [2, 99, 7]]
ACTIONS = [[11, 12, 13], [14], [15, 16], [21, 22], [23, 24, 25, 26], [27]]  # 3 samples per state
REWARDS = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def _actions():
  rng = np.random.default_rng(0)
  return [TurnOutput(a, (-rng.random(len(a))).tolist(), "", "stop_id") for a in ACTIONS]


_PADDED = max(len(CONTEXTS[i // 3]) + len(a) for i, a in enumerate(ACTIONS))


def _padded_logprob_and_grad(graphdef):
  """(params, tokens_L, action_mask_L) -> (log pi(action | context), its gradient), by hand: one
  plain forward pass over context + action + filler. Attention is causal, so the filler after the
  action changes no logit before it, and every sequence shares one compiled program."""

  def logprob(params, tokens_L, action_mask_L):
    logp_LxV = jax.nn.log_softmax(nnx.merge(graphdef, params)(tokens_L[None])[0], axis=-1)
    next_logp_L = jnp.take_along_axis(logp_LxV[:-1], tokens_L[1:, None], axis=-1)[:, 0]
    return jnp.sum(next_logp_L * action_mask_L[1:])

  return jax.jit(jax.value_and_grad(logprob))


def _by_hand(graphdef, params, advantages):
  """-sum_i advantage_i * log pi(action_i | context_i) / 6, and its gradient, one sequence at a time."""
  one = _padded_logprob_and_grad(graphdef)
  total, grads = 0.0, jax.tree.map(jnp.zeros_like, params)
  for i, action in enumerate(ACTIONS):
    sequence = CONTEXTS[i // 3] + action
    tokens = np.zeros(_PADDED, np.int32)
    tokens[:len(sequence)] = sequence
    mask = np.zeros(_PADDED, np.float32)
    mask[len(CONTEXTS[i // 3]):len(sequence)] = 1.0
    value, grad = one(params, jnp.asarray(tokens), jnp.asarray(mask))
    total += advantages[i] * value
    grads = jax.tree.map(lambda g, d: g + advantages[i] * d, grads, grad)
  return -total / 6, jax.tree.map(lambda g: -g / 6, grads)


@pytest.mark.parametrize("baseline", ["none", "rloo"])
def test_online_gradient_equals_hand_computed_reinforce(baseline):
  model = init_model(model_config("tiny"), seed=3)
  graphdef, params = nnx.split(model)
  if baseline == "rloo":  # by hand: r minus the mean of the other two samples
    adv = np.array([[1 - 0.5, 0 - 1.0, 1 - 0.5], [0 - 0.5, 0 - 0.5, 1 - 0.0]])
  else:
    adv = REWARDS
  np.testing.assert_allclose(losses.advantages(REWARDS, baseline), adv)
  feats = jax.tree.map(jnp.asarray, online.online_features(CONTEXTS, _actions(), adv.reshape(-1), 16))

  def ours(params):
    return losses.policy_gradient_loss(nnx.merge(graphdef, params), feats, num_sequences=6,
                                       max_loss_tokens=16)[0]

  loss_hand, grads_hand = _by_hand(graphdef, params, adv.reshape(-1))
  loss_ours, grads_ours = jax.jit(jax.value_and_grad(ours))(params)
  np.testing.assert_allclose(loss_ours, loss_hand, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_hand)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_offline_loss_with_reward_one_is_sft_and_kl_is_zero_at_init():
  model = init_model(model_config("tiny"), seed=3)
  feats = jax.tree.map(jnp.asarray, online.online_features(CONTEXTS, _actions(), np.ones(6), 16))
  np.testing.assert_allclose(reward_weighted_nll(model, feats), losses.sft_loss(model, feats), rtol=1e-6)
  reference = init_model(model_config("tiny"), seed=3)  # the frozen copy of the initial policy
  ref_logp = losses.reference_logprobs(reference, feats, 16)
  _, metrics = losses.policy_gradient_loss(model, feats, num_sequences=6, reference_logprobs_N=ref_logp,
                                           kl_coef=0.1, max_loss_tokens=16)
  assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-7)
  other = init_model(model_config("tiny"), seed=4)
  _, metrics = losses.policy_gradient_loss(other, feats, num_sequences=6, reference_logprobs_N=ref_logp,
                                           kl_coef=0.1, max_loss_tokens=16)
  assert float(metrics["kl"]) > 0.01


def _sampled_features(noise: float):
  """A tiny model's (graphdef, params) and online features whose behaviour log-probs are the
  model's own, plus normal noise of scale `noise` (0: sampled by this very policy)."""
  model = init_model(model_config("tiny"), seed=3)
  graphdef, params = nnx.split(model)
  feats = online.online_features(CONTEXTS, _actions(), losses.advantages(REWARDS).reshape(-1), 16)
  feats = jax.tree.map(jnp.asarray, feats)
  logp, index, valid = target_logprobs(model, feats, 16)
  valid = np.asarray(valid)
  behaviour = np.zeros(feats[features.LOSS_WEIGHTS].size, np.float32)
  shift = np.random.default_rng(1).normal(0, noise, int(valid.sum())).astype(np.float32)
  behaviour[np.asarray(index)[valid]] = np.asarray(logp)[valid] + shift
  feats[features.BEHAVIOUR_LOGPROBS] = jnp.asarray(behaviour.reshape(feats[features.LOSS_WEIGHTS].shape))
  return graphdef, params, feats


def test_clipped_ratio_equals_plain_gradient_on_policy():
  """At the sampling policy the PPO-clipped loss has the REINFORCE gradient."""
  graphdef, params, feats = _sampled_features(noise=0.0)

  def loss(params, clip):
    return losses.policy_gradient_loss(nnx.merge(graphdef, params), feats, num_sequences=6, clip_epsilon=clip,
                                       max_loss_tokens=16)[0]

  for a, b in zip(jax.tree.leaves(jax.grad(loss)(params, 0.2)), jax.tree.leaves(jax.grad(loss)(params, None))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_truncated_importance_weights_and_the_dual_clip_match_a_hand_computation():
  """Without clipping each token's term is -min(r, cap) A log pi with the weight held constant, so
  its gradient in log pi is -min(r, cap) A; with PPO's clip, a negative advantage's term is at most
  -cap A (and then has no gradient)."""
  rng = np.random.default_rng(0)
  logp = jnp.asarray(-rng.random(64) * 3, jnp.float32)
  behaviour = logp - jnp.asarray(rng.normal(0, 1.2, 64), jnp.float32)  # ratios from about 0.03 to 30
  advantage = jnp.asarray(rng.normal(0, 1, 64), jnp.float32)
  ratio = np.exp(np.asarray(logp - behaviour))
  cap = 2.0

  def total(lp, **kw):
    return jnp.sum(losses.policy_gradient_token_loss(lp, behaviour, advantage, **kw)[0])

  terms, _, truncated = losses.policy_gradient_token_loss(logp, behaviour, advantage, importance_cap=cap)
  np.testing.assert_allclose(terms, -np.minimum(ratio, cap) * advantage * logp, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda lp: total(lp, importance_cap=cap))(logp),
                             -np.minimum(ratio, cap) * advantage, rtol=1e-5)
  assert np.array_equal(truncated, ratio > cap) and 0 < truncated.sum() < 64

  eps = 0.2
  terms, clipped, truncated = losses.policy_gradient_token_loss(logp, behaviour, advantage, clip_epsilon=eps,
                                                                importance_cap=cap)
  a = np.asarray(advantage)
  ppo = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
  dual = np.where(a < 0, np.minimum(ppo, -cap * a), ppo)
  np.testing.assert_allclose(terms, dual, rtol=1e-5)
  assert np.array_equal(truncated, (a < 0) & (ppo > -cap * a)) and truncated.sum() > 0
  grad = jax.grad(lambda lp: total(lp, clip_epsilon=eps, importance_cap=cap))(logp)
  assert np.all(np.asarray(grad)[np.asarray(truncated)] == 0)
  free = ~np.asarray(truncated) & ~np.asarray(clipped)
  np.testing.assert_allclose(np.asarray(grad)[free], (-ratio * a)[free], rtol=1e-5)


def test_an_importance_cap_weights_tokens_by_their_truncated_ratio_through_a_model():
  """Through a model, where the sampler's log-probs differ from the policy's: with PPO's clip a cap
  above every ratio changes nothing; without it, such a cap weights each token by its whole ratio
  (the unclipped ratio's gradient, not plain REINFORCE's), and a cap of 1 truncates."""
  graphdef, params, feats = _sampled_features(noise=0.3)

  def grads(clip, cap):
    def loss(params):
      return losses.policy_gradient_loss(nnx.merge(graphdef, params), feats, num_sequences=6, clip_epsilon=clip,
                                         importance_cap=cap, max_loss_tokens=16)[0]
    return jax.tree.leaves(jax.grad(loss)(params))

  def same(x, y):
    return all(np.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(x, y))

  assert same(grads(0.2, 1e6), grads(0.2, None))  # the dual clip never acts
  full = grads(None, 1e6)  # every token weighted by its whole ratio: the unclipped ratio's gradient
  assert same(full, grads(1e6, None))
  assert not same(full, grads(None, None))  # the samples are off-policy
  assert not same(grads(None, 1.0), full)


def test_the_trainer_s_objective_takes_the_online_importance_cap():
  from swirl_jax.training.trainer import _objective
  assert _objective("online", online.OnlineConfig(importance_cap=2.0)).importance_cap == 2.0
  assert _objective("online", online.OnlineConfig()).importance_cap is None


class FirstTokenScorer:
  """Reward 1 when the action starts with one of `good` tokens (a random policy gets ~1/8)."""

  def __init__(self, good):
    self.good = set(good)

  def score(self, states, actions):
    return np.array([float(bool(a.tokens) and a.tokens[0] in self.good) for a in actions], np.float32)


@pytest.mark.slow
def test_fifty_online_steps_raise_the_mean_reward():
  import optax
  model = init_model(model_config("tiny"), seed=0)
  rng = np.random.default_rng(0)
  states = [StateExample(f"t{i}", 0, [2] + rng.integers(3, 512, 6).tolist(), [], 0.0, []) for i in range(4)]
  scorer = FirstTokenScorer(range(100, 164))
  sampler = Sampler(model, rows=16, capacity=16, buckets=(8,), decode_steps=2, seed=0)
  config = SamplingConfig(temperature=1.0, max_new_tokens=2)
  tx = optax.adam(3e-3)
  graphdef, params = nnx.split(model)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, feats):
    loss_fn = lambda p: losses.policy_gradient_loss(nnx.merge(graphdef, p), feats, num_sequences=16,
                                                    max_loss_tokens=64)[0]
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  means = []
  for _ in range(50):
    batch = online.online_batch(sampler, scorer, states, 4, config, 16)
    feats, rewards = batch.features, batch.rewards
    means.append(float(rewards.mean()))
    params, opt_state = step(params, opt_state, jax.tree.map(jnp.asarray, feats))
    nnx.update(model, params)  # the sampler samples with the updated params
  start, end = np.mean(means[:5]), np.mean(means[-5:])
  assert start < 0.3 and end > start + 0.3, (start, end)


def test_unscored_samples_are_left_out_of_the_advantage_and_the_loss():
  nan = float("nan")
  rewards = np.array([[1.0, 0.0, nan, 1.0], [nan, nan, 1.0, 0.0], [nan, 1.0, nan, nan]], np.float32)
  rloo = losses.advantages(rewards, "rloo")
  np.testing.assert_allclose(rloo[0], [1 - 0.5, 0 - 1.0, 0.0, 1 - 0.5])  # baselines over the 3 scored
  np.testing.assert_allclose(rloo[1], [0.0, 0.0, 1.0, -1.0])
  np.testing.assert_allclose(rloo[2], [0.0, 0.0, 0.0, 0.0])  # one scored sample: no baseline
  np.testing.assert_allclose(losses.advantages(rewards, "none")[2], [0.0, 1.0, 0.0, 0.0])


class FailingScorer:
  """Scores 1 when the first token is even, and gives no verdict when it is odd."""

  def score(self, states, actions):
    time.sleep(0.25)  # a judge takes time: the step reports how long the mesh waited for it
    return np.array([1.0 if a.tokens[0] % 2 == 0 else np.nan for a in actions], np.float32)


def test_judge_failures_are_counted_and_excluded_or_zeroed(tmp_path):
  from swirl_jax.training.trainer import OnlineConfig, TrainConfig, Trainer
  from swirl_jax.testing.judged import known_trajectories
  for mode in ("exclude", "zero"):
    config = TrainConfig(mode="online", steps=1, batch_size=16, sequence_length=64, checkpoint_every=100,
                         checkpoint_dir=str(tmp_path / mode), log_every=1)
    trainer = Trainer(init_model(model_config("tiny"), seed=0), known_trajectories(), config, scorer=FailingScorer(),
                      online_config=OnlineConfig(samples_per_state=4, max_action_tokens=2, judge_failures=mode,
                                                 temperature=1.0))
    batch = online.online_batch(trainer.sampler, trainer.scorer, trainer.stream.next_states(4), 4,
                                trainer.sampling, 64, "rloo", key_ids=(0,), judge_failures=mode)
    failed = np.isnan(batch.rewards).reshape(-1)
    assert 0 < failed.sum() < failed.size
    weights = batch.features[features.LOSS_WEIGHTS].sum(axis=1)
    assert (weights[failed] == 0).all() if mode == "exclude" else (weights > 0).all()
    metrics = trainer.run_step()
    assert metrics["judge_failures"] > 0
    assert metrics["mean_reward"] == 1.0  # the mean over scored samples only
    assert 0.25 <= metrics["judge_seconds"] < metrics["step_seconds"] and 0 < metrics["sampling_seconds"]


def test_a_loss_never_drops_action_tokens():
  """80 action tokens with max_loss_tokens=64 are refused, not cut; slots sized from the batch give
  the loss of every token."""
  model = init_model(model_config("tiny"), seed=3)
  rng = np.random.default_rng(1)
  tokens = rng.integers(2, 500, 100).tolist()
  on_action = np.r_[np.zeros(20), np.ones(80)].astype(np.float32)
  row = features.numpy_row(tokens, on_action, on_action.copy(), np.zeros(100, np.float32), np.ones(100, np.int32),
                           np.arange(100), 128)
  batch = {k: jnp.asarray(v) for k, v in features.stack([row]).items()}
  unbounded = float(reward_weighted_nll(model, batch))
  assert losses.loss_slots(batch) == 128
  np.testing.assert_allclose(float(reward_weighted_nll(model, batch, losses.loss_slots(batch))), unbounded, rtol=1e-5)
  with pytest.raises(Exception, match=r"80 loss positions .* max_loss_tokens=64"):
    jax.block_until_ready(reward_weighted_nll(model, batch, 64))
  with pytest.raises(Exception, match=r"80 loss positions"):  # inside a jitted gradient too
    jax.block_until_ready(nnx.jit(nnx.grad(lambda m: reward_weighted_nll(m, batch, 64)))(model))
