"""The options for large models compute what the defaults compute.

`attention_query_block`: attention taken a block of queries at a time equals whole attention.
`scan_layers`: one lax.scan over stacked layers computes what the unrolled layers compute.

Checked against transformers through the importer (Gemma 3's 5:1 pattern with a tail of 2 layers,
Gemma 2's alternation), against the unrolled model for a whole train step (loss, gradients, update;
with remat and a KL reference), and in the KV-cache sampler (greedy tokens and log-probs past the
window, on one device and on a 2x2x2 mesh).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from swirl_jax import partitioning
from swirl_jax.checkpoints.params import stack_scanned_layers
from swirl_jax.checkpoints.safetensors_import import load_hf_checkpoint
from swirl_jax.data import features
from swirl_jax.models import init_model, model_config
from swirl_jax.models.attention import attention_mask, blocked_attention, dot_product_attention
from swirl_jax.models.config import gemma3_layer_types
from swirl_jax.sampling.sampler import Sampler, SamplingConfig
from swirl_jax.training import objectives
from swirl_jax.training.step import train_step_fn
from tests import hf_reference

# Gemma 3's pattern (5 local, 1 global) twice, then 2 local layers that run unscanned.
GEMMA3_PATTERN = model_config("tiny", layer_types=gemma3_layer_types(14))
CONFIGS = {"gemma3_pattern": GEMMA3_PATTERN, "tiny_gemma2": model_config("tiny_gemma2"),
           "tiny_llama3": model_config("tiny_llama3")}  # every layer global, untied, Llama's RoPE scaling


def test_blocked_attention_equals_whole_attention():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 37, 4, 8)), jnp.float32)  # 37: the last block is padded
  k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 8)), jnp.float32) for _ in range(2))
  positions = jnp.broadcast_to(jnp.arange(37), (2, 37))
  segments = jnp.asarray(np.repeat([[1] * 20 + [2] * 17], 2, axis=0))  # two packed sequences a row
  mask = attention_mask(positions, segments, positions, segments, window=5)
  whole = lambda q, k, v: dot_product_attention(q, k, v, mask, 50.0)
  blocked = lambda q, k, v: blocked_attention(q, k, v, mask, 50.0, block=8)
  np.testing.assert_allclose(blocked(q, k, v), whole(q, k, v), atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(f(*a) ** 2)
  for g_blocked, g_whole in zip(jax.grad(loss(blocked), (0, 1, 2))(q, k, v), jax.grad(loss(whole), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g_blocked, g_whole, atol=1e-4, rtol=1e-5)


def test_a_model_with_blocked_attention_matches_transformers(tmp_path):
  cfg = CONFIGS["gemma3_pattern"]
  reference = hf_reference.random_hf_model(cfg, seed=6)
  reference.save_pretrained(tmp_path)
  model = load_hf_checkpoint(str(tmp_path), attention_query_block=8, scan_layers=True)
  tokens = np.random.default_rng(3).integers(1, cfg.vocab_size, (2, 29))
  ones = np.ones_like(tokens)
  expected = hf_reference.hf_logits(reference, tokens, ones, np.cumsum(ones, 1) - 1)
  np.testing.assert_allclose(np.asarray(model(tokens.astype(np.int32))), expected, atol=1e-4, rtol=1e-4)


def test_layout_of_the_real_configs():
  assert model_config("gemma3_27b", scan_layers=True).scan_layout()[1] == 10  # 62 = 10 x 6 + 2
  assert model_config("gemma3_270m", scan_layers=True).scan_layout() == (gemma3_layer_types(6), 3)
  assert model_config("gemma2_27b", scan_layers=True).scan_layout() == (("local", "global"), 23)
  assert model_config("gemma3_27b").scan_layout() == ((), 0)
  model = init_model(GEMMA3_PATTERN.replace(scan_layers=True))
  assert model.scanned.period[0].attn.q[...].shape[0] == 2 and len(model.blocks) == 2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scanned_logits_match_transformers(tmp_path, name):
  cfg = CONFIGS[name]
  reference = hf_reference.random_hf_model(cfg, seed=5)
  reference.save_pretrained(tmp_path)
  model = load_hf_checkpoint(str(tmp_path), scan_layers=True)
  assert model.scanned is not None and model.config.layer_types == cfg.layer_types
  rng = np.random.default_rng(2)
  tokens = rng.integers(1, cfg.vocab_size, (2, 27))  # > 3 x the window of 8
  ones = np.ones_like(tokens)
  expected = hf_reference.hf_logits(reference, tokens, ones, np.cumsum(ones, 1) - 1)
  np.testing.assert_allclose(np.asarray(model(tokens.astype(np.int32))), expected, atol=1e-4, rtol=1e-4)


def _batch(cfg, rows=4, length=24):
  rng = np.random.default_rng(7)
  tokens = rng.integers(1, cfg.vocab_size, (rows, length + 1))
  weights = (rng.random((rows, length)) < 0.5).astype(np.float32)
  weights[:, -1] = 1.0
  return {
      features.INPUT_TOKENS: jnp.asarray(tokens[:, :-1], jnp.int32),
      features.TARGET_TOKENS: jnp.asarray(tokens[:, 1:], jnp.int32),
      features.LOSS_WEIGHTS: jnp.asarray(weights),
      features.REWARDS: jnp.asarray(rng.normal(size=(rows, length)), jnp.float32),
      features.BEHAVIOUR_LOGPROBS: jnp.asarray(-rng.random((rows, length)) * 3, jnp.float32),
      features.SEGMENT_IDS: jnp.ones((rows, length), jnp.int32),
      features.POSITIONS: jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
  }


def _at_scanned_paths(state: nnx.State, cfg) -> dict:
  """Flat {path: array} of a model's state at the scanned model's paths."""
  flat = {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}
  return flat if cfg.scan_layers else stack_scanned_layers(flat, cfg.replace(scan_layers=True))


@pytest.mark.parametrize("name,remat,objective", [
    pytest.param("gemma3_pattern", "full", objectives.PolicyGradient(kl_coef=0.05, clip_epsilon=0.2),
                 marks=pytest.mark.slow),
    ("tiny_gemma2", "none", objectives.RewardWeightedLikelihood()),
    ("tiny_llama3", "dots", objectives.PolicyGradient(clip_epsilon=0.2)),
])
def test_a_train_step_with_scanned_layers_and_blocked_attention_equals_the_default_step(name, remat, objective):
  results = []
  for scan in (False, True):
    # The scanned model also takes attention 8 queries at a time (rows of 24).
    cfg = CONFIGS[name].replace(remat=remat, scan_layers=scan, attention_query_block=8 if scan else 0)
    model = init_model(cfg, seed=9)
    graphdef, params = nnx.split(model)
    # Plain SGD: updated params then differ exactly as gradients do (Adam's m / sqrt(v) would turn a
    # rounding difference in a near-zero gradient into a full-size step).
    tx = optax.sgd(0.5)
    reference = jax.tree.map(lambda x: x * 0.9, params) if isinstance(objective, objectives.PolicyGradient) else None
    step = jax.jit(train_step_fn(graphdef, objective, tx, 2), static_argnums=4)
    opt_state = tx.init(params)
    for _ in range(2):
      params, opt_state, metrics = step(params, opt_state, _batch(cfg), reference, 32)
    results.append((_at_scanned_paths(params, cfg), {k: float(v) for k, v in metrics.items()}))
  (unrolled, unrolled_metrics), (scanned, scanned_metrics) = results
  assert unrolled.keys() == scanned.keys()
  for key in unrolled_metrics:
    np.testing.assert_allclose(scanned_metrics[key], unrolled_metrics[key], rtol=1e-5, err_msg=key)
  assert unrolled_metrics["grad_norm"] > 0
  for path in unrolled:
    np.testing.assert_allclose(scanned[path], unrolled[path], atol=1e-5, err_msg=str(path))


def test_stacked_parameters_shard_per_rules_with_the_layers_axis_whole():
  cfg = GEMMA3_PATTERN.replace(scan_layers=True)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  model = partitioning.shard_model(init_model(cfg, seed=1), mesh, partitioning.DEFAULT_RULES)
  q = model.scanned.period[0].attn.q
  assert q.get_metadata()["logical_axes"] == ("layers", "embed", "q_heads", "head_dim")
  assert q[...].sharding.spec == P(None, "fsdp", "tensor", None)
  assert q[...].addressable_shards[0].data.shape == (2, 32, 2, 16)


GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=10, stop_ids=(1,))


@pytest.mark.slow
@pytest.mark.parametrize("on_mesh", [False, True])
def test_the_sampler_with_scanned_layers_gives_the_unrolled_tokens(on_mesh):
  prompts = [np.random.default_rng(s).integers(2, 512, n).tolist() for s, n in ((0, 19), (1, 6), (2, 30), (3, 2))]
  tool = {0: [7, 8, 9], 1: [10] * 11, 2: [12], 3: [4, 4]}
  got = []
  for scan in (False, True):
    cfg = GEMMA3_PATTERN.replace(scan_layers=scan)
    model, mesh = init_model(cfg, seed=4), None
    if on_mesh:
      mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
      model = partitioning.shard_model(model, mesh, partitioning.DEFAULT_RULES)
    sampler = Sampler(model, rows=4, capacity=96, buckets=(8, 32), mesh=mesh)
    sampler.append(dict(enumerate(prompts)))
    turn1 = sampler.generate(range(4), GREEDY)
    sampler.append(tool)
    turn2 = sampler.generate(range(4), GREEDY)
    if scan and on_mesh:
      k_stack = sampler.cache.stacked[0][0]
      assert k_stack.shape[0] == 2 and k_stack.sharding.spec[:2] == (None, ("data", "fsdp"))
    got.append([(r.tokens, r.logprobs) for r in list(turn1.values()) + list(turn2.values())])
  assert max(len(p) + len(tool[i]) for i, p in enumerate(prompts)) + 20 > 3 * GEMMA3_PATTERN.sliding_window
  for (tokens, logprobs), (scanned_tokens, scanned_logprobs) in zip(*got):
    assert scanned_tokens == tokens
    np.testing.assert_allclose(scanned_logprobs, logprobs, atol=1e-4)
