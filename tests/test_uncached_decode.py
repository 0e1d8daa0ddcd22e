"""The uncached greedy decoder equals a plain argmax loop; errors are named."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.uncached import greedy_decode_uncached


@nnx.jit
def _forward(model, tokens):
  return model(tokens)


def _argmax_loop(model, prompt, steps, stop_ids, width=32):
  """One row at a time; right padding (later positions) cannot change causal logits."""
  ids = list(prompt)
  for _ in range(steps):
    row = np.zeros((1, width), np.int32)
    row[0, :len(ids)] = ids
    ids.append(int(jnp.argmax(_forward(model, jnp.asarray(row))[0, len(ids) - 1])))
    if ids[-1] in stop_ids:
      break
  return ids[len(prompt):]


def test_batched_prompts_of_different_lengths_match_single_row_argmax():
  model = init_model(model_config("tiny"), seed=5)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, 512, n).tolist() for n in (3, 11, 6)]
  steps = 12  # the longest row ends past the window of 8... and past 2 windows
  got = greedy_decode_uncached(model, prompts, steps, stop_ids=(1,))
  for prompt, new in zip(prompts, got):
    assert new == _argmax_loop(model, prompt, steps, (1,))


def test_stops_at_a_stop_id():
  model = init_model(model_config("tiny"), seed=5)
  prompt = [2, 7, 9]
  free = greedy_decode_uncached(model, [prompt], 6, stop_ids=(1,))[0]
  stop = free[2]
  stopped = greedy_decode_uncached(model, [prompt], 6, stop_ids=(stop,))[0]
  assert stopped == free[:free.index(stop) + 1]


def test_empty_prompt_is_refused():
  model = init_model(model_config("tiny"))
  with pytest.raises(ValueError, match="at least one token"):
    greedy_decode_uncached(model, [[]], 3)
