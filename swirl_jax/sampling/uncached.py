"""Greedy decoding by recomputing the full forward pass at every step (no KV cache).

Slow by design: it is the oracle a cached sampler must reproduce token for
token, and the baseline its speed is measured against.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swirl_jax.models.transformer import Transformer


@nnx.jit(static_argnames=("max_new_tokens",))
def _decode(model: Transformer, tokens_BxT, prompt_lengths_B, stop_ids_S, max_new_tokens: int):
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  rows_B = jnp.arange(b)

  def step(i, carry):
    tokens_BxT, done_B = carry
    length_B = prompt_lengths_B + i
    segments_BxT = (positions_BxT < length_B[:, None]).astype(jnp.int32)
    hidden_BxTxD = model.hidden_states(tokens_BxT, positions_BxT, segments_BxT)
    logits_BxV = model.logits_at(hidden_BxTxD[rows_B, length_B - 1])
    next_B = jnp.argmax(logits_BxV, axis=-1).astype(tokens_BxT.dtype)
    next_B = jnp.where(done_B, 0, next_B)
    tokens_BxT = tokens_BxT.at[rows_B, length_B].set(next_B)
    done_B |= jnp.isin(next_B, stop_ids_S)
    return tokens_BxT, done_B

  done_B = jnp.zeros((b,), bool)
  tokens_BxT, _ = jax.lax.fori_loop(0, max_new_tokens, step, (tokens_BxT, done_B))
  return tokens_BxT


def greedy_decode_uncached(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                           stop_ids: Sequence[int] = (1,)) -> list[list[int]]:
  """Greedy continuations of token-id prompts (each with its BOS), up to a stop id.

  Returns the new tokens of each row, the stop id included when one was made.
  """
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError("greedy_decode_uncached: every prompt needs at least one token (its BOS)")
  tokens = np.zeros((len(prompts), int(lengths.max()) + max_new_tokens), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  out = np.asarray(_decode(model, jnp.asarray(tokens), jnp.asarray(lengths),
                           jnp.asarray(np.array(stop_ids, np.int32)), max_new_tokens))
  continuations = []
  for row, n in enumerate(lengths):
    new = out[row, n:n + max_new_tokens].tolist()
    stops = [i for i, tok in enumerate(new) if tok in stop_ids]
    continuations.append(new[:stops[0] + 1] if stops else new)
  return continuations
