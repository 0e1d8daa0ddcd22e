"""KV-cache sampler: exact against full recomputation, across turns, on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swirl_jax import partitioning
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.sampler import Sampler, SamplingConfig, argmax_last, choose_tokens, row_key
from swirl_jax.sampling.uncached import greedy_decode_uncached

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12, stop_ids=(1,))


class IdVocab:
  """Decodes id i as '<i>' so stop strings are easy to plant."""

  def decode(self, ids):
    return "".join(f"<{i}>" for i in ids)


@pytest.fixture(scope="module")
def model():
  return init_model(model_config("tiny"), seed=11)


@nnx.jit
def _log_softmax_last(model, tokens, lengths):
  logits = model(tokens)
  return jax.nn.log_softmax(logits[jnp.arange(tokens.shape[0]), lengths - 1], axis=-1)


def _full_logprobs(model, context, new):
  """Log-probs of `new` after `context`, recomputing the whole prefix each step."""
  out = []
  for i, token in enumerate(new):
    ids = list(context) + list(new[:i])
    row = np.zeros((1, 64 * (1 + len(ids) // 64)), np.int32)
    row[0, :len(ids)] = ids
    out.append(float(_log_softmax_last(model, jnp.asarray(row), jnp.asarray([len(ids)]))[0, token]))
  return out


def _prompts():
  rng = np.random.default_rng(3)
  return [rng.integers(2, 512, n).tolist() for n in (5, 13, 2)]


def test_greedy_equals_full_recomputation_across_turns(model):
  """Exact across turns, past the sliding window: the window layers' ring buffers (8 + 16 slots)
  wrap twice, and attention reads a span of 32, then 64 slots."""
  prompts = _prompts()
  compiled_before = Sampler(model, rows=3, capacity=64)._decode._cache_size()
  sampler = Sampler(model, rows=3, capacity=64, buckets=(8, 16), spans=(16, 32))
  assert sampler.cache.layers[0][0].shape[1] == model.config.sliding_window + sampler.decode_steps
  sampler.append(dict(enumerate(prompts)))
  turn1 = sampler.generate([0, 1, 2], GREEDY)
  expected1 = greedy_decode_uncached(model, prompts, 12, stop_ids=(1,))
  contexts = []
  for row in range(3):
    assert turn1[row].tokens == expected1[row]
    np.testing.assert_allclose(turn1[row].logprobs, _full_logprobs(model, prompts[row], expected1[row]),
                               atol=1e-5)
    contexts.append(prompts[row] + turn1[row].tokens)
  # A "tool result" of different lengths per row, then the next turn from the cache.
  tool = {0: [7, 8, 9], 1: [10] * 11, 2: [12]}
  sampler.append(tool)
  turn2 = sampler.generate([0, 1, 2], GREEDY)
  contexts = [contexts[r] + tool[r] for r in range(3)]
  expected2 = greedy_decode_uncached(model, contexts, 12, stop_ids=(1,))
  for row in range(3):
    assert len(contexts[row]) + len(expected2[row]) > model.config.sliding_window * 3
    assert turn2[row].tokens == expected2[row]
    assert sampler.lengths()[row] == len(contexts[row]) + len(expected2[row])
  # One decode program per span met (the jit cache is shared by every sampler in the process, so
  # count what this one added).
  decodes = {name for name in sampler.compile_seconds if name.startswith("decode")}
  assert decodes == {"decode[span 32]", "decode[span 64]"}
  assert sampler._decode._cache_size() - compiled_before <= len(decodes)

  # The same turn from a fresh sampler that prefills the whole context at once, and from one whose
  # window layers keep every slot and whose attention reads the whole capacity (the layout before
  # ring buffers and spans).
  for fresh in (Sampler(model, rows=3, capacity=64, buckets=(8, 16)),
                Sampler(model, rows=3, capacity=64, buckets=(8, 16), spans=(), ring_buffers=False)):
    fresh.append(dict(enumerate(contexts)))
    again = fresh.generate([0, 1, 2], GREEDY)
    for row in range(3):
      assert again[row].tokens == turn2[row].tokens
      np.testing.assert_allclose(again[row].logprobs, turn2[row].logprobs, atol=1e-5)
  assert fresh.cache.layers[0][0].shape[1] == 64 and set(fresh.compile_seconds) <= {
      "decode[span 64]", "prefill[8, span 64]", "prefill[16, span 64]"}


def test_ring_buffer_exact_after_a_stop_string_cut_past_the_window(model):
  """A stop-string cut rolls a row back over tokens whose ring slots held keys the window still
  needs, unless the ring has room for a chunk more than the window: the next turn stays exact."""
  prompt = np.random.default_rng(5).integers(2, 512, 30).tolist()
  probe = Sampler(model, rows=1, capacity=96, vocab=IdVocab(), decode_steps=4)
  probe.append({0: prompt})
  tokens = probe.generate([0], GREEDY)[0].tokens
  stop_at = next(i for i in range(5, 12) if f"<{tokens[i]}>" not in "".join(f"<{t}>" for t in tokens[:i])) + 1
  sampler = Sampler(model, rows=1, capacity=96, vocab=IdVocab(), decode_steps=4, spans=(32, 64))
  assert sampler.cache.layers[0][0].shape[1] == 12  # window 8 + 4: positions 30 on wrap around it
  sampler.append({0: prompt})
  out = sampler.generate([0], SamplingConfig(max_new_tokens=12, stop_strings=(f"<{tokens[stop_at - 1]}>",)))[0]
  assert out.finish_reason == "stop_string" and out.tokens == tokens[:stop_at]
  assert stop_at % 4  # the cut falls inside a chunk: tokens after it were written, then dropped
  sampler.append({0: [5, 6]})
  context = prompt + tokens[:stop_at] + [5, 6]
  nxt = sampler.generate([0], GREEDY)[0]
  assert nxt.tokens == greedy_decode_uncached(model, [context], 12, stop_ids=(1,))[0]
  np.testing.assert_allclose(nxt.logprobs, _full_logprobs(model, context, nxt.tokens), atol=1e-5)


def test_stop_strings_cut_and_continue_exactly(model):
  prompts = _prompts()
  free = Sampler(model, rows=3, capacity=64, vocab=IdVocab())
  free.append({0: prompts[0]})
  tokens = free.generate([0], GREEDY)[0].tokens
  stop = f"<{tokens[4]}>"  # plant a stop string at the fifth token
  stop_at = next(i for i, t in enumerate(tokens) if f"<{t}>" == stop) + 1

  sampler = Sampler(model, rows=3, capacity=64, vocab=IdVocab(), decode_steps=16)
  sampler.append({0: prompts[0]})
  out = sampler.generate([0], SamplingConfig(max_new_tokens=12, stop_strings=(stop,)))[0]
  assert out.finish_reason == "stop_string"
  assert out.tokens == tokens[:stop_at] and out.text.endswith(stop)
  assert sampler.lengths()[0] == len(prompts[0]) + stop_at
  # The cache was rolled back: the next turn equals recomputation from the cut.
  sampler.append({0: [5, 6]})
  context = prompts[0] + tokens[:stop_at] + [5, 6]
  nxt = sampler.generate([0], GREEDY)[0]
  assert nxt.tokens == greedy_decode_uncached(model, [context], 12, stop_ids=(1,))[0]


def test_finish_reasons(model):
  sampler = Sampler(model, rows=2, capacity=24, buckets=(16,))
  sampler.append({0: [2, 3, 4], 1: list(range(2, 22))})
  first = sampler.generate([0], SamplingConfig(max_new_tokens=1))[0].tokens[0]
  sampler.reset([0])
  sampler.append({0: [2, 3, 4]})
  out = sampler.generate([0, 1], SamplingConfig(max_new_tokens=6, stop_ids=(first,)))
  assert out[0].finish_reason == "stop_id" and out[0].tokens == [first]
  assert out[1].finish_reason == "capacity" and len(out[1].tokens) == 24 - 20
  sampler.reset([0])
  sampler.append({0: [2, 3, 4]})
  assert sampler.generate([0], SamplingConfig(max_new_tokens=5))[0].finish_reason == "max_new_tokens"
  with pytest.raises(ValueError, match="row 1 would hold 26 tokens; capacity is 24"):
    sampler.append({1: [5, 6]})
  sampler.reset([1])
  with pytest.raises(ValueError, match="row 1 is empty"):
    sampler.generate([1], GREEDY)


def test_choose_tokens_options():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)) * 3, jnp.float32)
  row_keys = lambda seed: jax.random.split(jax.random.key(seed), 4)
  greedy, logp = choose_tokens(logits, row_keys(0), 0.0, 0, 1.0)
  np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))
  np.testing.assert_allclose(logp, jax.nn.log_softmax(logits)[jnp.arange(4), greedy], atol=1e-6)
  for top_k, top_p in ((1, 1.0), (0, 1e-6)):
    token, _ = choose_tokens(logits, row_keys(1), 1.0, top_k, top_p)
    np.testing.assert_array_equal(token, greedy)
  # top_k=3 only ever picks among the 3 best; sampling follows the softmax.
  keys = jax.random.split(jax.random.key(2), 2000)
  picks = jax.vmap(lambda k: choose_tokens(logits[:1], k[None], 1.0, 3, 1.0)[0][0])(keys)
  allowed = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
  assert set(np.asarray(picks).tolist()) <= allowed
  probs = np.asarray(jax.nn.softmax(logits[0]))
  best = int(np.argmax(probs))
  expected = probs[best] / probs[list(allowed)].sum()
  assert abs(np.mean(np.asarray(picks) == best) - expected) < 0.05


def test_two_level_argmax_and_sampling_equal_jax():
  """argmax_last is jnp.argmax (first index of the maximum, NaN the maximum) for vocabularies that
  split into blocks (Gemma 2's 256,000 = 500 x 512) and those that do not; sampling draws what
  jax.random.categorical draws for the same keys."""
  rng = np.random.default_rng(4)
  for v in (262_144, 256_000, 1_000, 97, 7):
    ties = jnp.asarray(rng.integers(0, 4, size=(3, v)), jnp.float32)  # many equal maxima
    ties = ties.at[2, v // 2].set(jnp.nan)
    np.testing.assert_array_equal(argmax_last(ties), jnp.argmax(ties, axis=-1))
  logits = jnp.asarray(rng.normal(size=(8, 4096)) * 3, jnp.float32)
  keys = jax.random.split(jax.random.key(9), 8)
  np.testing.assert_array_equal(choose_tokens(logits, keys, 1.0, 0, 1.0)[0],
                                jax.vmap(jax.random.categorical)(keys, logits))


def test_greedy_tokens_on_a_2x2x2_mesh_equal_single_device(model):
  prompts = [p * 3 for p in _prompts()] + [[2, 9, 4]]  # 4 rows; 2 per data x fsdp shard
  single = Sampler(model, rows=4, capacity=64)
  single.append(dict(enumerate(prompts)))
  expected = single.generate(range(4), GREEDY)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  sharded_model = partitioning.shard_model(init_model(model_config("tiny"), seed=11), mesh,
                                           partitioning.DEFAULT_RULES)
  sampler = Sampler(sharded_model, rows=4, capacity=64, mesh=mesh)
  sampler.append(dict(enumerate(prompts)))
  got = sampler.generate(range(4), GREEDY)
  assert sampler.cache.layers[0][0].sharding.spec[0] in (("data", "fsdp"), "data")
  for row in range(4):
    assert got[row].tokens == expected[row].tokens
    np.testing.assert_allclose(got[row].logprobs, expected[row].logprobs, atol=1e-4)


@pytest.mark.parametrize("scan_layers,on_mesh", [(False, False), (True, False), (False, True)])
def test_a_forked_row_samples_what_a_prefilled_row_samples(scan_layers, on_mesh):
  """fork copies a row's cache on device: sampling from it equals sampling after prefilling the same
  context (tokens and log-probs, at temperature 1 with fixed row keys), past the window too. A
  prefill for at most half the rows computes only those rows, with the same result."""
  from swirl_jax.sampling.sampler import row_key
  model, mesh = init_model(model_config("tiny", scan_layers=scan_layers), seed=11), None
  if on_mesh:
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    model = partitioning.shard_model(model, mesh, partitioning.DEFAULT_RULES)
  contexts = {0: _prompts()[1] * 2, 2: _prompts()[0]}  # 26 and 5 tokens; rows 1 and 3 are forks
  sources = {1: 0, 3: 2}
  sampled = SamplingConfig(temperature=1.0, max_new_tokens=12)
  keys = {row: row_key("fork", row) for row in range(4)}
  prefilled = Sampler(model, rows=4, capacity=64, buckets=(8, 32), mesh=mesh)
  prefilled.append({row: contexts[sources.get(row, row)] for row in range(4)})
  expected = prefilled.generate(range(4), sampled, row_keys=keys)
  forked = Sampler(model, rows=4, capacity=64, buckets=(8, 32), mesh=mesh)
  forked.append({1: [5, 6, 7]})  # what a forked row held before is dropped
  forked.append(contexts)
  forked.fork(sources)
  assert forked.lengths().tolist() == [26, 26, 5, 5]
  assert forked.prefill_tokens == 3 + 26 + 5 and prefilled.prefill_tokens == 2 * (26 + 5)
  got = forked.generate(range(4), sampled, row_keys=keys)
  # The forked sampler prefilled 1, then 2 of its 4 rows: only those rows were computed, except on
  # a mesh that splits the rows over devices, where that would gather the whole cache everywhere.
  assert forked.rows_split == on_mesh
  subsets = {"prefill[8, 1 rows, span 64]", "prefill[32, 2 rows, span 64]"}
  assert subsets <= set(forked.compile_seconds) if not on_mesh else not subsets & set(forked.compile_seconds)
  for row in range(4):
    assert got[row].tokens == expected[row].tokens
    np.testing.assert_allclose(got[row].logprobs, expected[row].logprobs, atol=1e-5)
  assert expected[0].tokens != expected[1].tokens  # the rows' own keys drew different samples
  with pytest.raises(ValueError, match="source rows"):
    forked.fork({1: 7})


@pytest.mark.slow  # compiles several programs on purpose: the full tier
def test_the_sampler_compiles_no_more_programs_than_it_says():
  """Appends of many sizes to many subsets of rows, and turns at two sampling settings: the programs
  met (`programs_compiled`, as jit's own cache counts them) stay within `max_programs()`."""
  model = init_model(model_config("tiny"), seed=0)
  sampler = Sampler(model, rows=8, capacity=199, buckets=(16, 32, 64), decode_steps=4)
  # 3 chunk buckets x 2 spans (128, 199) x (every row, or 1, 2 or 4 of them) + 2 spans x 2 settings + the fork.
  assert sampler.max_programs(sampling_settings=2) == 3 * 2 * 4 + 2 * 2 + 1
  functions = (sampler._append, sampler._append_rows, sampler._decode, sampler._fork)
  before = sum(f._cache_size() for f in functions)
  rng = np.random.default_rng(0)
  for turn in range(12):
    sampler.reset()
    chosen = rng.choice(8, size=int(rng.integers(1, 9)), replace=False)
    sampler.append({int(r): rng.integers(3, 500, int(rng.integers(1, 70))).tolist() for r in chosen})
    if turn % 3 == 0:
      sampler.append({int(chosen[0]): rng.integers(3, 500, 90).tolist()})  # into the longer span
    config = SamplingConfig(temperature=float(turn % 2), max_new_tokens=6)
    sampler.generate([int(r) for r in chosen], config, row_keys={int(r): row_key(turn, int(r)) for r in chosen})
  sampler.fork({1: 0})
  compiled = sum(f._cache_size() for f in functions) - before
  assert 8 <= sampler.programs_compiled == compiled <= sampler.max_programs(sampling_settings=2)
