"""Batched KV-cache sampling in the training mesh, on the trainer's own params.

A `Sampler` owns a fixed number of rows, each holding one growing context in a
KV cache. `append` prefills new tokens into chosen rows (a prompt, or a tool
result after a turn); `generate` samples each chosen row's next turn until a
stop id, a stop string, `max_new_tokens` or the cache's end. Contexts persist
across calls, so a multi-turn episode never re-encodes what it already has.

Shapes are fixed per sampler (rows, capacity, decode chunk); prefill chunks
are padded to a small set of buckets, and a prefill for at most half the rows
(per shard of rows, where rows are split over devices) runs on those rows only,
their count padded to a power of two: one program per (chunk bucket, row-count
bucket, span) met. Decoding compiles one program per span and sampling setting.
That is not a handful: `max_programs()` says how many at most (16 rows x 2,048
slots with the default buckets and spans: 200 prefill programs, 5 decode programs
a setting, and the fork); `programs_compiled` counts those met, each compiled once
per process.

Params: by default the sampler decodes on the model's params where they are (the
trainer's, in the training layout), re-read at every call. With a
`partitioning.SamplingLayout` that copies params it runs on its own mesh over
the same devices, on a copy of the params cast to the layout's dtype (`refresh`
makes it, `release` frees it): decoding then reads each chip's weights where
they lie instead of gathering them every token.

Multi-host: every process runs `append` and `generate` together (they are
collective), but each owns only its rows: it passes tokens for, and gets turns
of, its own rows, and host work (stop strings, finish reasons) runs only there.
A process owns the rows of its addressable shard of the batch; where a shard of
rows spans processes (a sampling layout whose tensor axis spans hosts, as
Gemma 3 27B needs on v5e-256), rows are owned as the training mesh lays them
out, and their inputs and outputs move between the two layouts on device (a
small program a call: tokens, not weights). Each row samples with its own
key, made from global ids by the caller (`row_key(seed, question, sample,
turn)`), so a row samples the same tokens whichever process or row slot runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from swirl_jax import multihost, partitioning, validation
from swirl_jax.models.transformer import KVCache, Transformer
from swirl_jax.sampling.interfaces import Finish, TurnOutput, Vocabulary


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

  def __post_init__(self):
    validation.sampling_settings(self)
    validation.at_least_one(self, ("max_new_tokens",))


def row_key(*ids) -> np.ndarray:
  """A row's sampling key (threefry key data, uint32[2]) from global ids such as (seed, question id,
  sample index, turn): the same in every process and row slot, so N processes sample what 1 does."""
  plain = [i.item() if isinstance(i, np.generic) else i for i in ids]  # np.int64(3) is 3
  digest = hashlib.blake2b(json.dumps(plain, default=str).encode(), digest_size=8).digest()
  return np.frombuffer(digest, np.uint32).copy()


def argmax_last(x_BxV: jax.Array):
  """jnp.argmax over the last axis (the first index of the maximum; a NaN counts as the maximum, as an
  infinity does, so a row with both may differ from jnp.argmax), in
  two levels: the maximum of each of about sqrt(V) blocks, then the argmax within the winning block.
  XLA:CPU's single long argmax reduction over a 262,144-entry vocabulary takes 19 ms at batch 32 on
  a 2-core machine; the two levels take 3.5 ms (benchmarks/decode_profile.py)."""
  b, v = x_BxV.shape
  blocks = max((d for d in range(1, math.isqrt(v) + 1) if v % d == 0), default=1)
  if blocks < 16:
    return jnp.argmax(x_BxV, axis=-1)
  x_BxRxC = x_BxV.reshape(b, blocks, v // blocks)
  # A block holding a NaN ranks first (XLA:CPU's max reduction does not carry a NaN through).
  block_max_BxR = jnp.where(jnp.isnan(x_BxRxC).any(axis=-1), jnp.inf, jnp.max(x_BxRxC, axis=-1))
  block_B = jnp.argmax(block_max_BxR, axis=-1)
  within_BxC = jnp.take_along_axis(x_BxRxC, block_B[:, None, None], axis=1)[:, 0]
  return block_B * (v // blocks) + jnp.argmax(within_BxC, axis=-1)


def choose_tokens(logits_BxV: jax.Array, keys_B: jax.Array, temperature: float, top_k: int, top_p: float):
  """Picks a token per row (row b with its own key keys_B[b]); returns it and its log-prob under the
  untempered model."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if temperature == 0.0:
    token_B = argmax_last(logits_BxV)
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
    # What jax.random.categorical draws (the argmax of logits plus Gumbel noise), with the faster argmax.
    noise_BxV = jax.vmap(lambda key, row: jax.random.gumbel(key, row.shape, row.dtype))(keys_B, scaled_BxV)
    token_B = argmax_last(scaled_BxV + noise_BxV)
  token_B = token_B.astype(jnp.int32)
  # logit - logsumexp: one fused pass over the vocabulary, no [B, V] log-softmax.
  chosen_B = jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B, chosen_B - jax.nn.logsumexp(logits_BxV, axis=-1)


def _last_hidden(hidden_BxCxD, num_new_B, previous_BxD):
  """Hidden state of each row's last new token (the previous one for rows with none)."""
  index_B = jnp.maximum(num_new_B - 1, 0)
  last_BxD = jnp.take_along_axis(hidden_BxCxD, index_B[:, None, None], axis=1)[:, 0]
  return jnp.where((num_new_B > 0)[:, None], last_BxD, previous_BxD)


def _append(graphdef, params, cache, last_hidden_BxD, tokens_BxC, num_new_B, *, span: int):
  model = nnx.merge(graphdef, params)
  hidden_BxCxD, cache = model.extend(tokens_BxC, cache, num_new_B, span)
  return cache, _last_hidden(hidden_BxCxD, num_new_B, last_hidden_BxD)


def _take_rows(cache: KVCache, rows_R) -> KVCache:
  """The cache of rows `rows_R` only (the batch is axis 0 of a layer's cache, 1 of a stacked one)."""
  take = lambda x, axis: jnp.take(x, rows_R, axis=axis)
  return cache.replace(layers=tuple((take(k, 0), take(v, 0)) for k, v in cache.layers),
                       length_B=take(cache.length_B, 0),
                       stacked=tuple((take(k, 1), take(v, 1)) for k, v in cache.stacked))


def _set_rows(cache: KVCache, rows_R, part: KVCache) -> KVCache:
  """`cache` with rows `rows_R` replaced by `part` (distinct rows)."""
  return cache.replace(layers=tuple((k.at[rows_R].set(pk), v.at[rows_R].set(pv))
                                    for (k, v), (pk, pv) in zip(cache.layers, part.layers)),
                       length_B=cache.length_B.at[rows_R].set(part.length_B),
                       stacked=tuple((k.at[:, rows_R].set(pk), v.at[:, rows_R].set(pv))
                                     for (k, v), (pk, pv) in zip(cache.stacked, part.stacked)))


def _append_rows(graphdef, params, cache, last_hidden_BxD, tokens_BxC, num_new_B, rows_R, *, span: int):
  """`_append` computed for rows `rows_R` only (distinct; the others keep what they hold): a prefill
  for a few rows costs what those rows need, not the whole batch."""
  model = nnx.merge(graphdef, params)
  num_new_R = num_new_B[rows_R]
  hidden_RxCxD, part = model.extend(tokens_BxC[rows_R], _take_rows(cache, rows_R), num_new_R, span)
  last_RxD = _last_hidden(hidden_RxCxD, num_new_R, last_hidden_BxD[rows_R])
  return _set_rows(cache, rows_R, part), last_hidden_BxD.at[rows_R].set(last_RxD)


def _fork(cache: KVCache, last_hidden_BxD, source_B):
  """Row b takes row source_B[b]'s keys and values, length and last hidden state (source_B[b] = b:
  unchanged). On device: a context prefilled once serves several rows."""
  return _take_rows(cache, source_B), jnp.take(last_hidden_BxD, source_B, axis=0)


def _decode_chunk(graphdef, params, cache, last_hidden_BxD, active_B, count_B, key_data_Bx2,
                  stop_ids_S, limit_B, *, steps: int, span: int, temperature: float, top_k: int,
                  top_p: float):
  """`steps` decode steps for the active rows; tokens land in [B, steps] buffers. Every active row
  holds at most span - steps tokens (attention reads `span` slots).

  Row b's token number n of this turn is drawn with fold_in(key_b, n): what a
  row samples does not depend on the other rows or on chunk boundaries.
  """
  model = nnx.merge(graphdef, params)
  b = active_B.shape[0]
  capacity = cache.capacity
  keys_B = jax.random.wrap_key_data(key_data_Bx2, impl="threefry2x32")  # whatever the default PRNG

  def step(i, carry):
    cache, last_hidden_BxD, active_B, count_B, tokens_BxT, logprobs_BxT, reasons_B = carry
    step_keys_B = jax.vmap(jax.random.fold_in)(keys_B, count_B)
    token_B, logprob_B = choose_tokens(model.logits_at(last_hidden_BxD), step_keys_B, temperature, top_k, top_p)
    tokens_BxT = tokens_BxT.at[:, i].set(jnp.where(active_B, token_B, -1))
    logprobs_BxT = logprobs_BxT.at[:, i].set(logprob_B)
    num_new_B = active_B.astype(jnp.int32)
    hidden_Bx1xD, cache = model.extend(token_B[:, None], cache, num_new_B, span)
    last_hidden_BxD = _last_hidden(hidden_Bx1xD, num_new_B, last_hidden_BxD)
    count_B = count_B + num_new_B
    reason_B = jnp.where(jnp.isin(token_B, stop_ids_S), Finish.STOP_ID,
                         jnp.where(cache.length_B >= capacity, Finish.CAPACITY,
                                   jnp.where(count_B >= limit_B, Finish.MAX_NEW_TOKENS, Finish.RUNNING)))
    reasons_B = jnp.where(active_B & (reason_B != Finish.RUNNING), reason_B, reasons_B)
    active_B = active_B & (reason_B == Finish.RUNNING)
    return cache, last_hidden_BxD, active_B, count_B, tokens_BxT, logprobs_BxT, reasons_B

  carry = (cache, last_hidden_BxD, active_B, count_B, jnp.full((b, steps), -1, jnp.int32),
           jnp.zeros((b, steps), jnp.float32), jnp.full((b,), Finish.RUNNING, jnp.int32))
  return jax.lax.fori_loop(0, steps, step, carry)


def _manual_spec(sharding: NamedSharding, axes: Sequence[str]) -> PartitionSpec:
  """`sharding`'s spec with only the mesh axes in `axes` kept: what a shard_map manual over those
  axes sees of it (the other axes stay automatic)."""
  return PartitionSpec(*(partitioning.entry_of(n for n in partitioning.axes_of(e) if n in axes)
                         for e in sharding.spec))


def row_axes(mesh: Mesh | None, rules: partitioning.LogicalRules, rows: int, param_shardings) -> tuple[str, ...]:
  """The mesh axes that split `rows` rows, where a fork or a few rows' prefill can run per shard of
  rows: no param may be split over them (a shard would see a piece of a weight). () otherwise."""
  if mesh is None:
    return ()
  axes = partitioning.axes_of(partitioning.batch_sharding(mesh, rules, (rows,)).spec[0])
  if not any(mesh.shape[a] > 1 for a in axes):
    return ()
  for sharding in jax.tree.leaves(param_shardings):
    if any(n in axes and mesh.shape[n] > 1 for entry in sharding.spec for n in partitioning.axes_of(entry)):
      return ()
  return axes


def fork_per_shard(mesh: Mesh, axes: tuple[str, ...], cache_shardings):
  """`_fork` on each shard of rows by itself (`shard_map`, manual over the row axes `axes`,
  automatic over the rest), sources given as global rows of the target's own shard: the G rows of a
  state live on one shard, so nothing crosses shards."""
  cache_specs = jax.tree.map(lambda s: _manual_spec(s, axes), cache_shardings)

  def fork_local(cache, last_hidden_BxD, source_B):
    shard = jax.lax.axis_index(axes)
    return _fork(cache, last_hidden_BxD, source_B - shard * last_hidden_BxD.shape[0])
  return jax.shard_map(fork_local, mesh=mesh, in_specs=(cache_specs, PartitionSpec(axes, None), PartitionSpec(axes)),
                       out_specs=(cache_specs, PartitionSpec(axes, None)), axis_names=set(axes))


def append_rows_per_shard(mesh: Mesh, rules: partitioning.LogicalRules, axes: tuple[str, ...], cache_shardings):
  """`_append_rows` on each shard of rows by itself, `rows_R` holding each shard's rows as indices
  local to it (the same count on every shard): no shard sees another's cache."""
  cache_specs = jax.tree.map(lambda s: _manual_spec(s, axes), cache_shardings)
  rows_spec, rows2d_spec = PartitionSpec(axes), PartitionSpec(axes, None)
  # Inside, the rows are the shard's alone: the activations' batch is not split over the row axes.
  inner_rules = tuple((name, partitioning.entry_of(a for a in partitioning.axes_of(target) if a not in axes))
                      for name, target in rules)

  def append_rows(graphdef, params, cache, last_hidden_BxD, tokens_BxC, num_new_B, rows_R, *, span):
    def local(params, cache, last_hidden_BxD, tokens_BxC, num_new_B, rows_R):
      with partitioning.use_rules(inner_rules):
        return _append_rows(graphdef, params, cache, last_hidden_BxD, tokens_BxC, num_new_B, rows_R, span=span)
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(PartitionSpec(), cache_specs, rows2d_spec, rows2d_spec, rows_spec, rows_spec),
                         out_specs=(cache_specs, rows2d_spec), axis_names=set(axes))(
                             params, cache, last_hidden_BxD, tokens_BxC, num_new_B, rows_R)
  return append_rows


@dataclasses.dataclass
class _RowTurn:
  """One row's turn as it is sampled, chunk by chunk, on the host that owns the row."""

  tokens: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  finish: Finish = Finish.RUNNING
  # The first `clean` tokens are known to complete no stop string: a chunk is searched past them.
  clean: int = 0

  def output(self, text: str) -> TurnOutput:
    return TurnOutput(self.tokens, self.logprobs, text, self.finish.reason)


@gin.configurable
class Sampler:
  """Rows of persistent KV-cache contexts over one model, optionally on a mesh."""

  def __init__(self, model: Transformer, *, rows: int, capacity: int,
               buckets: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024, 2048),
               decode_steps: int = 16, mesh: Mesh | None = None,
               rules: partitioning.LogicalRules | None = None, vocab: Vocabulary | None = None, seed: int = 0,
               spans: Sequence[int] | None = None, ring_buffers: bool = True,
               layout: partitioning.SamplingLayout | None = None):
    self.model = model
    # With a sampling layout that copies params, the sampler runs on its own mesh over the same
    # devices, on its own copy of the params (`refresh`, `release`).
    self.layout = layout if layout is not None and layout.copy_params else None
    self.training_mesh = mesh
    if self.layout is not None:
      mesh = self.layout.mesh_over(mesh)
    self.rows = rows
    self.capacity = capacity
    self.buckets = tuple(sorted(b for b in buckets if b <= capacity)) or (capacity,)
    self.decode_steps = decode_steps
    # Attention reads only the filled part of the cache, rounded up to one of these spans (powers of
    # two from 128, and the capacity): decode cost follows the rows' lengths, a few shapes compile.
    if spans is None:
      spans = [1 << k for k in range(7, max(capacity, 1).bit_length()) if 1 << k < capacity]
    self.spans = tuple(sorted({s for s in spans if 0 < s < capacity} | {capacity}))
    self.mesh = mesh
    self.rules = rules if rules is not None else partitioning.DEFAULT_RULES
    self.vocab = vocab
    self.seed = seed
    self.compile_seconds: dict[str, float] = {}
    self._programs: set = set()  # (name, static settings) of each program met
    self._calls = 0  # generate calls made without row keys (their default keys count them)
    self._graphdef = nnx.graphdef(model)
    self._append = jax.jit(_append, static_argnums=0, donate_argnums=(2, 3), static_argnames="span")
    self._decode = jax.jit(_decode_chunk, static_argnums=0, donate_argnums=(2, 3),
                           static_argnames=("steps", "span", "temperature", "top_k", "top_p"))
    # On a mesh that spans processes, reset(), append and generate are collective.
    self.collective = multihost.spans_processes(mesh)
    # How rows are split over devices. Gathering some rows of a split cache (a prefill of a few rows,
    # a fork) makes XLA gather the whole cache onto every device (Gemma 3 27B with 256 x 8,192 slots
    # on v5e-256 would need 122 GiB a chip), so both run per shard of rows (`shard_map` over the
    # mesh axes that split them), where no param is split over those axes; else (`rows_split`) a
    # state is prefilled into each of its rows instead.
    param_shardings = None if mesh is None else partitioning.state_shardings(nnx.state(model), mesh, self.rules)
    self.row_axes = row_axes(mesh, self.rules, rows, param_shardings)
    self.row_shards = math.prod(mesh.shape[a] for a in self.row_axes) if self.row_axes else 1
    self.rows_split = mesh is not None and partitioning.batch_sharding(
        mesh, self.rules, (rows,)).spec[0] is not None and not self.row_axes
    self.rows_per_shard = rows if self.rows_split else rows // self.row_shards
    # Which process does each row's host work: the one holding it. Where a shard of rows spans
    # processes (a sampling layout whose tensor axis spans hosts), rows are owned as the training
    # mesh lays them out (or in one block a process), and what a process passes for its rows, or
    # reads of them, travels between that layout and the sampling mesh in a small program a call.
    self._host_mesh = self._owning_mesh(mesh, rows)
    self.staged = self._host_mesh is not mesh
    self.row_owners = np.full(rows, jax.process_index(), np.int64)
    if self.collective:
      self.row_owners = multihost.row_owners(partitioning.batch_sharding(self._host_mesh, self.rules, (rows,)), rows)
    self.local_rows: tuple[int, ...] = tuple(int(r) for r in np.flatnonzero(self.row_owners == jax.process_index()))
    self._owned = self.row_owners == jax.process_index()
    config = model.config
    # Sliding-window layers keep a ring buffer of window + decode_steps slots: a stop-string cut drops
    # at most one chunk's tokens, and those must not have overwritten keys the window still needs.
    window_slots = config.sliding_window + decode_steps if ring_buffers else capacity
    make_cache = lambda: KVCache.zeros(config, rows, capacity, window_slots=window_slots)
    make_hidden = lambda: jnp.zeros((rows, config.embed_dim), jnp.float32)
    # Where the cache and last hidden states live; the fork keeps that placement (a gather could
    # leave them elsewhere, and the next step would compile again).
    placed = None if mesh is None else (jax.eval_shape(make_cache).shardings(mesh, self.rules),
                                        partitioning.batch_sharding(mesh, self.rules, (rows, config.embed_dim)))
    self._make_cache = make_cache if mesh is None else jax.jit(make_cache, out_shardings=placed[0])
    self._make_hidden = make_hidden if mesh is None else jax.jit(make_hidden, out_shardings=placed[1])
    fork = fork_per_shard(mesh, self.row_axes, placed[0]) if self.row_axes else _fork
    append_rows = append_rows_per_shard(mesh, self.rules, self.row_axes, placed[0]) if self.row_axes else _append_rows
    self._fork = jax.jit(fork, donate_argnums=(0, 1), out_shardings=placed)
    self._append_rows = jax.jit(append_rows, static_argnums=0, donate_argnums=(2, 3), out_shardings=placed,
                                static_argnames="span")
    self._params = None  # the sampler's own copy, in the sampling layout (None: not made, or released)
    self._owns_params = False
    self.reshard_seconds: list[float] = []  # each reshard into the sampling layout, for accounting
    if self.layout is not None:
      self._param_shardings = param_shardings
      source = (None if self.training_mesh is None else
                partitioning.state_shardings(nnx.state(model), self.training_mesh, self.rules))
      self._reshard = partitioning.Reshard(source, self._param_shardings, self.layout.param_dtype)
    self.prefill_tokens = 0  # tokens this process's rows have prefilled (append), for accounting
    self.reset()

  # -- state ---------------------------------------------------------------

  @property
  def cache(self) -> KVCache:
    """The KV cache as it is now (its shapes and placement; the next append or generate donates it)."""
    return self._cache

  def reset(self, rows: Sequence[int] | None = None) -> None:
    """Empties the given rows (this process's; local) or all rows (collective) for new contexts."""
    if rows is None:
      self._cache, self._last_hidden = self._make_cache(), self._make_hidden()
      self._lengths = np.zeros(self.rows, np.int64)
      return
    self._check_owned(rows, "reset")
    self._lengths[list(rows)] = 0
    if not self.staged:  # staged, writing them is collective: the next append, fork or generate does
      self._sync_lengths()

  def _sync_staged_lengths(self) -> None:
    """Staged (rows owned away from where they live), the row lengths a `reset` changed reach the
    cache at the start of the next collective call."""
    if self.staged:
      self._sync_lengths()

  # -- params ----------------------------------------------------------------

  def params(self) -> nnx.State:
    """The params the sampler decodes with: the model's own, or (with a sampling layout) its copy,
    made from the model's params at first use and kept until `refresh` or `release`."""
    if self.layout is None:
      return nnx.state(self.model)
    if self._params is None:
      self.refresh()
    return self._params

  def refresh(self) -> None:
    """Collective. Lays the model's current params out in the sampling layout: one program casts
    them to the layout's dtype and moves them (every process runs it). Params that already live
    there (a model loaded straight into the sampling layout) are used as they are, not copied.
    Without a sampling layout there is nothing to do: the sampler reads the model's params."""
    if self.layout is None:
      return
    self.release()
    state = nnx.state(self.model)
    dtype = jnp.dtype(self.layout.param_dtype)
    placed = all(getattr(x, "sharding", None) == target and (x.dtype == dtype or not jnp.issubdtype(x.dtype, jnp.floating))
                 for x, target in zip(jax.tree.leaves(state), jax.tree.leaves(self._param_shardings)))
    if placed:
      self._params, self._owns_params = state, False
      return
    start = time.perf_counter()
    self._params, self._owns_params = jax.block_until_ready(self._reshard(state)), True
    self.reshard_seconds.append(time.perf_counter() - start)

  def release(self) -> None:
    """Frees the sampler's copy of the params (online RL: after sampling, before the update, so the
    copy and the update's temporaries never share the chips' memory). The next use makes it anew."""
    if self._params is not None and self._owns_params:
      for x in jax.tree.leaves(self._params):
        x.delete()
    self._params = None

  def _owning_mesh(self, mesh: Mesh | None, rows: int) -> Mesh | None:
    """A mesh over `mesh`'s devices on which each of `rows` rows lives on one process, the owners
    the training mesh gives rows where there is one (the trainer lays out the rows a process
    sampled): `mesh` itself where it is so, else the training mesh, else one block of rows a process."""
    if not self.collective:
      return mesh
    owners = lambda m: multihost.sole_row_owners(partitioning.batch_sharding(m, self.rules, (rows,)), rows)
    devices = list(mesh.devices.flat)
    sampling_owners = owners(mesh)
    training_owners = (owners(self.training_mesh) if self.training_mesh is not None
                       and set(self.training_mesh.devices.flat) == set(devices) else None)
    if sampling_owners is not None and (training_owners is None or np.array_equal(sampling_owners, training_owners)):
      return mesh
    if training_owners is not None:
      return self.training_mesh
    blocks = multihost.process_blocks(devices)
    if rows % blocks.shape[0]:
      raise ValueError(f"Sampler: {rows} rows cannot be split into one block for each of {blocks.shape[0]} "
                       f"processes, and {partitioning.describe(mesh)} gives rows to several processes")
    return Mesh(blocks[:, None, :], partitioning.MESH_AXES, axis_types=mesh.axis_types)

  def _moved(self, arrays: Sequence[jax.Array], onto: Mesh) -> tuple[jax.Array, ...]:
    """[rows, ...] arrays laid out as `onto`'s batch (collective). `jax.device_put`, not a jitted
    identity: the two meshes may order the same devices differently (`SamplingLayout.mesh_over`),
    which one jitted program cannot take."""
    targets = tuple(partitioning.batch_sharding(onto, self.rules, x.shape) for x in arrays)
    return tuple(jax.device_put(tuple(arrays), targets))

  def _put(self, host: np.ndarray) -> jax.Array:
    """A [rows, ...] host array (valid on this process's rows) as a global device array."""
    if self.mesh is None:
      return jnp.asarray(host)
    placed = multihost.global_array(host, partitioning.batch_sharding(self._host_mesh, self.rules, host.shape))
    return self._moved([placed], self.mesh)[0] if self.staged else placed

  def _put_known(self, host: np.ndarray) -> jax.Array:
    """A host array every process holds whole, laid out as the sampling mesh's batch (no transfer)."""
    return multihost.global_array(host, partitioning.batch_sharding(self.mesh, self.rules, host.shape))

  def _get(self, *arrays: jax.Array) -> tuple[np.ndarray, ...]:
    """[rows, ...] device arrays as host arrays, valid on this process's rows (collective when
    staged: the rows are first laid out as their owners hold them)."""
    if self.staged:
      arrays = self._moved(arrays, self._host_mesh)
    return tuple(multihost.host_rows(x, self.local_rows) for x in arrays)

  def _foreign(self, rows, what: str) -> str | None:
    foreign = [r for r in rows if not 0 <= r < self.rows or not self._owned[r]]
    if not foreign:
      return None
    return (f"Sampler.{what}: rows {foreign[:8]} are not this process's; it owns "
            f"{len(self.local_rows)} rows from {self.local_rows[0] if self.local_rows else '-'}")

  def _check_owned(self, rows, what: str) -> None:
    error = self._foreign(rows, what)
    if error:
      raise ValueError(error)

  def _sync_lengths(self) -> None:
    """Writes the host's row lengths into the cache, placed like the array they replace: an
    argument committed differently from the last call makes a jitted step compile again."""
    self._cache = self._cache.replace(length_B=self._put(self._lengths.astype(np.int32)))

  def lengths(self) -> np.ndarray:
    """Tokens held by each row (meaningful for this process's rows)."""
    return self._lengths.copy()

  def any_process(self, *flags: bool):
    """Whether any process of this sampler's mesh has each flag set (local flags off a shared mesh)."""
    return multihost.any_process(*flags, across=self.collective)

  def max_programs(self, sampling_settings: int = 1) -> int:
    """The most programs this sampler can compile: a prefill per (chunk bucket, span, row-count
    bucket: every row or a power of two at most half a shard's rows), a decode chunk per span and
    sampling setting (temperature, top_k, top_p), and the fork."""
    row_buckets = 0 if self.rows_split else max(self.rows_per_shard // 2, 0).bit_length()
    return len(self.buckets) * len(self.spans) * (1 + row_buckets) + len(self.spans) * sampling_settings + 1

  @property
  def programs_compiled(self) -> int:
    """Programs this sampler has met (each compiled once per process)."""
    return len(self._programs)

  def _call(self, name, fn, *args, **kwargs):
    """Runs a jitted step under the mesh, timing the first call of each shape."""
    program = (name,) + tuple(sorted((k, v) for k, v in kwargs.items() if k != "span"))
    with partitioning.activate(self.mesh, self.rules):
      if program in self._programs:
        return fn(*args, **kwargs)
      self._programs.add(program)
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      self.compile_seconds.setdefault(name, time.perf_counter() - start)
      return out

  # -- the two operations (collective: every process calls them together) --

  def append(self, new_tokens: Mapping[int, Sequence[int]]) -> None:
    """Prefills `new_tokens[row]` after what each row holds (other rows unchanged).

    Every process calls it, with tokens for its own rows only (or none).
    """
    error = self._foreign(new_tokens, "append")
    for row, tokens in new_tokens.items():
      if error is None and self._lengths[row] + len(tokens) > self.capacity:
        error = (f"Sampler.append: row {row} would hold {self._lengths[row] + len(tokens)} tokens; "
                 f"capacity is {self.capacity}")
    multihost.raise_together(error, across=self.collective)
    self._sync_staged_lengths()
    # All processes run the same chunks: as many as the longest append anywhere needs; attention
    # reads a span that holds the longest row that receives tokens.
    longest = max((len(t) for t in new_tokens.values()), default=0)
    end = max((self._lengths[r] + len(t) for r, t in new_tokens.items() if len(t)), default=0)
    if self.rows_split:
      longest, end = multihost.maxima(longest, end, across=self.collective)
      rows_R = None
    else:
      # Only the rows that get tokens are computed when they are at most half the batch (their
      # number padded to a power of two with rows that get none), so a prefill pays for those rows.
      receiving = np.zeros(self.rows, np.int64)
      receiving[[r for r, t in new_tokens.items() if len(t)]] = 1
      if self.collective:
        gathered = multihost.allgather_ints([longest, end] + receiving.tolist())
        longest, end = (int(v) for v in gathered[:, :2].max(axis=0))
        receiving = gathered[:, 2:].sum(axis=0)
      # Per shard of rows: its receiving rows, padded with its idle ones to one count (a power of
      # two) for every shard; indices local to the shard (one shard without split rows).
      receiving_SxP = receiving.reshape(self.row_shards, self.rows_per_shard) > 0
      count = int(receiving_SxP.sum(axis=1).max())
      subset = 1 << max(count - 1, 0).bit_length()
      rows_R = None
      if subset * 2 <= self.rows_per_shard:
        rows_R = np.concatenate([np.concatenate([np.flatnonzero(r), np.flatnonzero(~r)])[:subset]
                                 for r in receiving_SxP]).astype(np.int32)
        rows_R = self._put_known(rows_R) if self.row_axes else jnp.asarray(rows_R)
    span = self._span(end)
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
      inputs = (self._graphdef, self.params(), self._cache, self._last_hidden, self._put(tokens_BxC),
                self._put(num_new_B))
      if rows_R is None:
        self._cache, self._last_hidden = self._call(f"prefill[{bucket}, span {span}]", self._append, *inputs,
                                                    span=span)
      else:
        self._cache, self._last_hidden = self._call(f"prefill[{bucket}, {rows_R.shape[0]} rows, span {span}]",
                                                    self._append_rows, *inputs, rows_R, span=span)
      self._lengths += num_new_B
      self.prefill_tokens += int(num_new_B.sum())
      offset += bucket

  def _span(self, tokens: int) -> int:
    """The smallest span that holds `tokens` tokens a row."""
    return next((s for s in self.spans if s >= tokens), self.capacity)

  def fork(self, sources: Mapping[int, int]) -> None:
    """Row `target` becomes a copy of row `sources[target]`: its context's keys and values, length
    and last hidden state, copied on device (no prefill). What the target held is dropped.

    Collective: every process calls it, with its own target rows. Where rows are split over
    devices it runs per shard of rows, so a source must be in its target's shard (`rows_per_shard`
    consecutive rows); on a mesh that splits params over the row axes too (`rows_split`) it would
    gather the whole cache onto every device: there, prefill the rows instead (as
    `online.sample_actions` does).
    Sources are read as they were before the call ({1: 0, 2: 1} gives row 2 the old row 1).
    Sampling a forked row then equals sampling a row that prefilled the same context.
    """
    error = self._foreign(sources, "fork")
    bad = [s for s in sources.values() if not 0 <= s < self.rows]
    if error is None and bad:
      error = f"Sampler.fork: source rows {bad[:8]} are not rows of this sampler ({self.rows})"
    across = [(t, s) for t, s in sources.items() if t // self.rows_per_shard != s // self.rows_per_shard]
    if error is None and across:
      error = (f"Sampler.fork: row {across[0][0]} would copy row {across[0][1]} of another shard of rows "
               f"({self.rows_per_shard} rows a shard)")
    multihost.raise_together(error, across=self.collective)
    self._sync_staged_lengths()
    source_B = np.arange(self.rows, dtype=np.int32)
    for target, source in sources.items():
      source_B[target] = source
    self._cache, self._last_hidden = self._call("fork", self._fork, self._cache, self._last_hidden,
                                                self._put(source_B))
    self._lengths = self._get(self._cache.length_B)[0].astype(np.int64)

  def generate(self, rows: Sequence[int], config: SamplingConfig,
               row_keys: Mapping[int, np.ndarray] | None = None) -> dict[int, TurnOutput]:
    """Samples the next turn of each row in `rows` (this process's) from its current context.

    `row_keys[row]` (from `row_key`) seeds a row's turn; without it a row's key
    comes from (seed, call count, row), which is reproducible on one process.
    Every process calls it, with its own rows (or none).
    """
    rows = [int(r) for r in rows]
    error = self._foreign(rows, "generate")
    empty = [row for row in rows if error is None and self._lengths[row] == 0]
    if empty:
      error = f"Sampler.generate: row {empty[0]} is empty; append a prompt first"
    multihost.raise_together(error, across=self.collective)
    self._sync_staged_lengths()
    key_data = np.zeros((self.rows, 2), np.uint32)
    for row in rows:
      key_data[row] = row_keys[row] if row_keys is not None else row_key("sampler", self.seed, self._calls, row)
    self._calls += 1
    stop_ids = jnp.asarray(np.array(list(config.stop_ids) or [-2], np.int32))
    in_call = np.zeros(self.rows, bool)
    in_call[rows] = True
    count = np.zeros(self.rows, np.int32)
    room = self.capacity - self._lengths
    limit = np.minimum(config.max_new_tokens, np.maximum(room, 0)).astype(np.int32)
    turns = {row: _RowTurn() for row in rows}
    active = in_call & (limit > 0)
    for row in rows:
      if not active[row]:
        turns[row].finish = Finish.CAPACITY
    keys, limit_B = self._put(key_data), self._put(limit)
    # One small collective per chunk: whether any process still decodes, or must re-append, and the
    # span that holds the longest active row after one more chunk.
    def progress(rolled_back: bool = False):
      longest = max((int(self._lengths[r]) for r in np.flatnonzero(active)), default=0)
      return multihost.maxima(int(active.any()), int(rolled_back), longest + self.decode_steps,
                              across=self.collective)
    running, _, need = progress()
    while running:
      span = self._span(need)
      out = self._call(
          f"decode[span {span}]", self._decode, self._graphdef, self.params(), self._cache, self._last_hidden,
          self._put(active), self._put(count), keys, stop_ids, limit_B,
          steps=self.decode_steps, span=span, temperature=config.temperature, top_k=config.top_k,
          top_p=config.top_p)
      self._cache, self._last_hidden, active_after, count_after, chunk_tokens, chunk_logprobs, chunk_reasons = out
      chunk_tokens, chunk_logprobs, active_after, chunk_reasons, count_after, lengths = self._get(
          chunk_tokens, chunk_logprobs, active_after, chunk_reasons, count_after, self._cache.length_B)
      active_after = active_after.copy()
      self._lengths = lengths.astype(np.int64)
      recompute = {}
      for row in rows:
        if not active[row]:
          continue
        turn, made = turns[row], chunk_tokens[row] >= 0
        turn.tokens.extend(chunk_tokens[row][made].tolist())
        turn.logprobs.extend(chunk_logprobs[row][made].tolist())
        if not active_after[row]:
          turn.finish = Finish(int(chunk_reasons[row]))
        cut = self._stop_string_cut(turn, config.stop_strings)
        if cut is not None and (turn.finish == Finish.RUNNING or cut < len(turn.tokens)):
          # Drop what followed the stop string, and re-append the last kept
          # token so the row's last hidden state is that token's again.
          self._lengths[row] -= len(turn.tokens) - cut + 1
          recompute[row] = [turn.tokens[cut - 1]]
          del turn.tokens[cut:], turn.logprobs[cut:]
          turn.finish = Finish.STOP_STRING
          active_after[row] = False
      active = active_after & in_call
      count = count_after.astype(np.int32)
      running, rolled_back, need = progress(bool(recompute))
      if rolled_back:  # a stop-string cut rolled some rows back: every process re-appends
        if not self.staged:  # (staged, the append writes the lengths first)
          self._sync_lengths()
        self.append(recompute)
    return {row: turn.output(self._decode_text(turn.tokens)) for row, turn in turns.items()}

  def _decode_text(self, tokens):
    return self.vocab.decode(tokens) if self.vocab is not None else ""

  def _stop_string_cut(self, turn: _RowTurn, stop_strings: Sequence[str]) -> int | None:
    """Number of tokens to keep: through the first token that completes a stop string.

    Whether a prefix holds a stop string only turns from no to yes as it grows, so the first such
    prefix is found by bisection over the tokens past `turn.clean`: a few decodes a chunk rather
    than one per prefix.
    """
    tokens = turn.tokens
    if not stop_strings or self.vocab is None or len(tokens) <= turn.clean:
      return None
    holds = lambda n: any(s in self.vocab.decode(tokens[:n]) for s in stop_strings)
    if not holds(len(tokens)):
      turn.clean = len(tokens)
      return None
    low, high = turn.clean, len(tokens)  # holds(low) is false, holds(high) true
    while high - low > 1:
      middle = (low + high) // 2
      low, high = (low, middle) if holds(middle) else (middle, high)
    return high
