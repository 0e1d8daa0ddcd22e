"""Batched KV-cache sampling in the training mesh, on the trainer's own params.

A `Sampler` owns a fixed number of rows, each holding one growing context in a
KV cache. `append` prefills new tokens into chosen rows (a prompt, or a tool
result after a turn); `generate` samples each chosen row's next turn until a
stop id, a stop string, `max_new_tokens` or the cache's end. Contexts persist
across calls, so a multi-turn episode never re-encodes what it already has.

Shapes are fixed per sampler (rows, capacity, decode chunk) and prefill chunks
are padded to a small set of buckets, so an episode compiles nothing after its
first turn. The model is re-split at every call: the sampler always uses the
params the trainer currently holds, without copying them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from swirl_jax import partitioning
from swirl_jax.models.transformer import KVCache, Transformer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens. temperature 0 is greedy; top_k 0 and top_p 1 disable those."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 128
  stop_strings: tuple[str, ...] = ()
  stop_ids: tuple[int, ...] = ()


@dataclasses.dataclass
class TurnOutput:
  """One row's sampled turn. logprobs are under the model (temperature 1)."""

  tokens: list[int]
  logprobs: list[float]
  text: str
  finish_reason: str  # "stop_id" | "stop_string" | "max_new_tokens" | "capacity"


def choose_tokens(logits_BxV, rng, temperature: float, top_k: int, top_p: float):
  """Picks a token per row; returns it and its log-prob under the untempered model."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if temperature == 0.0:
    token_B = jnp.argmax(logits_BxV, axis=-1)
  else:
    scaled_BxV = logits_BxV.astype(jnp.float32) / temperature
    if top_k:
      kth_Bx1 = jax.lax.top_k(scaled_BxV, top_k)[0][:, -1:]
      scaled_BxV = jnp.where(scaled_BxV < kth_Bx1, -jnp.inf, scaled_BxV)
    if top_p < 1.0:
      sorted_BxV = jnp.sort(scaled_BxV, axis=-1)[:, ::-1]
      probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
      mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
      # Keep the smallest prefix whose mass reaches top_p (always the first token).
      kept_BxV = mass_before_BxV < top_p
      threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
      scaled_BxV = jnp.where(scaled_BxV < threshold_Bx1, -jnp.inf, scaled_BxV)
    token_B = jax.random.categorical(rng, scaled_BxV, axis=-1)
  token_B = token_B.astype(jnp.int32)
  # logit - logsumexp: one fused pass over the vocabulary, no [B, V] log-softmax.
  chosen_B = jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B, chosen_B - jax.nn.logsumexp(logits_BxV, axis=-1)


def _last_hidden(hidden_BxCxD, num_new_B, previous_BxD):
  """Hidden state of each row's last new token (the previous one for rows with none)."""
  index_B = jnp.maximum(num_new_B - 1, 0)
  last_BxD = jnp.take_along_axis(hidden_BxCxD, index_B[:, None, None], axis=1)[:, 0]
  return jnp.where((num_new_B > 0)[:, None], last_BxD, previous_BxD)


def _append(graphdef, params, cache, last_hidden_BxD, tokens_BxC, num_new_B):
  model = nnx.merge(graphdef, params)
  hidden_BxCxD, cache = model.extend(tokens_BxC, cache, num_new_B)
  return cache, _last_hidden(hidden_BxCxD, num_new_B, last_hidden_BxD)


def _decode_chunk(graphdef, params, cache, last_hidden_BxD, active_B, count_B, rng,
                  stop_ids_S, limit_B, *, steps: int, temperature: float, top_k: int, top_p: float):
  """`steps` decode steps for the active rows; tokens land in [B, steps] buffers."""
  model = nnx.merge(graphdef, params)
  b = active_B.shape[0]
  capacity = cache.capacity

  def step(i, carry):
    cache, last_hidden_BxD, active_B, count_B, tokens_BxT, logprobs_BxT, reasons_B, rng = carry
    rng, key = jax.random.split(rng)
    token_B, logprob_B = choose_tokens(model.logits_at(last_hidden_BxD), key, temperature, top_k, top_p)
    tokens_BxT = tokens_BxT.at[:, i].set(jnp.where(active_B, token_B, -1))
    logprobs_BxT = logprobs_BxT.at[:, i].set(logprob_B)
    num_new_B = active_B.astype(jnp.int32)
    hidden_Bx1xD, cache = model.extend(token_B[:, None], cache, num_new_B)
    last_hidden_BxD = _last_hidden(hidden_Bx1xD, num_new_B, last_hidden_BxD)
    count_B = count_B + num_new_B
    # Finish reasons: 1 stop id, 3 capacity, 2 max_new_tokens (0: still running).
    reason_B = jnp.where(jnp.isin(token_B, stop_ids_S), 1,
                         jnp.where(cache.length_B >= capacity, 3,
                                   jnp.where(count_B >= limit_B, 2, 0)))
    reasons_B = jnp.where(active_B & (reason_B > 0), reason_B, reasons_B)
    active_B = active_B & (reason_B == 0)
    return cache, last_hidden_BxD, active_B, count_B, tokens_BxT, logprobs_BxT, reasons_B, rng

  carry = (cache, last_hidden_BxD, active_B, count_B, jnp.full((b, steps), -1, jnp.int32),
           jnp.zeros((b, steps), jnp.float32), jnp.zeros((b,), jnp.int32), rng)
  return jax.lax.fori_loop(0, steps, step, carry)


_REASONS = {1: "stop_id", 2: "max_new_tokens", 3: "capacity"}


@gin.configurable
class Sampler:
  """Rows of persistent KV-cache contexts over one model, optionally on a mesh."""

  def __init__(self, model: Transformer, *, rows: int, capacity: int,
               buckets: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024, 2048),
               decode_steps: int = 16, mesh: Mesh | None = None,
               rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES, vocab=None,
               seed: int = 0):
    self.model = model
    self.rows = rows
    self.capacity = capacity
    self.buckets = tuple(sorted(b for b in buckets if b <= capacity)) or (capacity,)
    self.decode_steps = decode_steps
    self.mesh = mesh
    self.rules = rules
    self.vocab = vocab
    self.compile_seconds: dict[str, float] = {}
    self._rng = jax.random.key(seed)
    self._graphdef = nnx.graphdef(model)
    self._append = jax.jit(_append, static_argnums=0, donate_argnums=(2, 3))
    self._decode = jax.jit(_decode_chunk, static_argnums=0, donate_argnums=(2, 3),
                           static_argnames=("steps", "temperature", "top_k", "top_p"))
    self.reset()

  # -- state ---------------------------------------------------------------

  def reset(self, rows: Sequence[int] | None = None) -> None:
    """Empties the given rows (all rows by default) for new contexts."""
    if rows is None:
      cache = KVCache.zeros(self.model.config, self.rows, self.capacity)
      self._cache = self._place(cache)
      self._last_hidden = self._place(jnp.zeros((self.rows, self.model.config.embed_dim), jnp.float32))
      self._lengths = np.zeros(self.rows, np.int64)
      return
    self._lengths[list(rows)] = 0
    self._sync_lengths()

  def _sync_lengths(self) -> None:
    """Writes the host's row lengths into the cache, placed like the array they replace: an
    argument committed differently from the last call makes a jitted step compile again."""
    lengths = jnp.asarray(np.asarray(self._lengths, np.int32))
    if self.mesh is not None:  # on a mesh every argument is committed to its sharding
      lengths = jax.device_put(lengths, self._cache.length_B.sharding)
    self._cache = self._cache.replace(length_B=lengths)

  def set_rng(self, key: jax.Array) -> None:
    """Seeds the sampling of later `generate` calls (made without an explicit rng)."""
    self._rng = key

  def lengths(self) -> np.ndarray:
    """Tokens held by each row."""
    return self._lengths.copy()

  def _place(self, tree):
    if self.mesh is None:
      return tree
    def put(x):
      if x.ndim == 4:  # a layer's keys or values: [B, S, K, H]
        names = ("activation_batch", None, "activation_kv_heads", None)
        sharding = NamedSharding(self.mesh, partitioning.logical_to_spec(names, self.rules, x.shape, self.mesh))
      else:
        sharding = partitioning.batch_sharding(self.mesh, self.rules, x.shape)
      return jax.device_put(x, sharding)
    return jax.tree.map(put, tree)

  def _call(self, name, fn, *args, **kwargs):
    """Runs a jitted step under the mesh, timing the first call of each shape."""
    with (jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()), \
        partitioning.use_rules(self.rules):
      if name in self.compile_seconds:
        return fn(*args, **kwargs)
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      self.compile_seconds[name] = time.perf_counter() - start
      return out

  # -- the two operations --------------------------------------------------

  def append(self, new_tokens: dict[int, Sequence[int]]) -> None:
    """Prefills `new_tokens[row]` after what each row holds (other rows unchanged)."""
    if not new_tokens:
      return
    longest = max(len(t) for t in new_tokens.values())
    for row, tokens in new_tokens.items():
      if self._lengths[row] + len(tokens) > self.capacity:
        raise ValueError(f"Sampler.append: row {row} would hold {self._lengths[row] + len(tokens)} "
                         f"tokens; capacity is {self.capacity}")
    # Chunks are padded to a bucket (padding is never stored); a long append
    # runs as several chunks.
    offset = 0
    while offset < longest:
      bucket = next((b for b in self.buckets if b >= longest - offset), self.buckets[-1])
      tokens_BxC = np.zeros((self.rows, bucket), np.int32)
      num_new_B = np.zeros(self.rows, np.int32)
      for row, tokens in new_tokens.items():
        piece = list(tokens[offset:offset + bucket])
        tokens_BxC[row, :len(piece)] = piece
        num_new_B[row] = len(piece)
      self._cache, self._last_hidden = self._call(
          f"prefill[{bucket}]", self._append, self._graphdef, nnx.state(self.model), self._cache,
          self._last_hidden, jnp.asarray(tokens_BxC), jnp.asarray(num_new_B))
      self._lengths += num_new_B
      offset += bucket

  def generate(self, rows: Sequence[int], config: SamplingConfig,
               rng: jax.Array | None = None) -> dict[int, TurnOutput]:
    """Samples the next turn of each row in `rows` from its current context."""
    if rng is None:
      self._rng, rng = jax.random.split(self._rng)
    rows = list(rows)
    stop_ids = jnp.asarray(np.array(list(config.stop_ids) or [-2], np.int32))
    active = np.zeros(self.rows, bool)
    active[rows] = True
    for row in rows:
      if self._lengths[row] == 0:
        raise ValueError(f"Sampler.generate: row {row} is empty; append a prompt first")
    count = np.zeros(self.rows, np.int32)
    room = self.capacity - self._lengths
    limit = np.minimum(config.max_new_tokens, np.maximum(room, 0)).astype(np.int32)
    tokens = {r: [] for r in rows}
    logprobs = {r: [] for r in rows}
    reasons: dict[int, str] = {}
    active &= limit > 0
    for row in rows:
      if not active[row]:
        reasons[row] = "capacity"
    while active.any():
      rng, key = jax.random.split(rng)
      out = self._call(
          "decode", self._decode, self._graphdef, nnx.state(self.model), self._cache, self._last_hidden,
          jnp.asarray(active), jnp.asarray(count), key, stop_ids, jnp.asarray(limit),
          steps=self.decode_steps, temperature=config.temperature, top_k=config.top_k,
          top_p=config.top_p)
      self._cache, self._last_hidden, active_after, count_after, chunk_tokens, chunk_logprobs, \
          chunk_reasons, _ = out
      chunk_tokens, chunk_logprobs = np.asarray(chunk_tokens), np.asarray(chunk_logprobs)
      active_after, chunk_reasons = np.array(active_after), np.asarray(chunk_reasons)
      self._lengths = np.asarray(self._cache.length_B).astype(np.int64)
      recompute = {}
      for row in rows:
        if not active[row]:
          continue
        made = chunk_tokens[row] >= 0
        tokens[row].extend(chunk_tokens[row][made].tolist())
        logprobs[row].extend(chunk_logprobs[row][made].tolist())
        if not active_after[row]:
          reasons[row] = _REASONS[int(chunk_reasons[row])]
        cut = self._stop_string_cut(tokens[row], config.stop_strings)
        if cut is not None and (reasons.get(row) is None or cut < len(tokens[row])):
          # Drop what followed the stop string, and re-append the last kept
          # token so the row's last hidden state is that token's again.
          self._lengths[row] -= len(tokens[row]) - cut + 1
          recompute[row] = [tokens[row][cut - 1]]
          del tokens[row][cut:], logprobs[row][cut:]
          reasons[row] = "stop_string"
          active_after[row] = False
      active = active_after & np.isin(np.arange(self.rows), rows)
      count = np.asarray(count_after).astype(np.int32)
      if recompute:  # the device lengths are the host's unless a cut rolled some back
        self._sync_lengths()
        self.append(recompute)
    return {r: TurnOutput(tokens[r], logprobs[r], self._decode_text(tokens[r]), reasons[r])
            for r in rows}

  def _decode_text(self, tokens):
    return self.vocab.decode(tokens) if self.vocab is not None else ""

  def _stop_string_cut(self, tokens: list[int], stop_strings: Sequence[str]) -> int | None:
    """Number of tokens to keep: through the first token that completes a stop string."""
    if not stop_strings or self.vocab is None or not tokens:
      return None
    text = self.vocab.decode(tokens)
    if not any(s in text for s in stop_strings):
      return None
    for n in range(1, len(tokens) + 1):  # first prefix that contains a stop string
      prefix = self.vocab.decode(tokens[:n])
      if any(s in prefix for s in stop_strings):
        return n
    return None
