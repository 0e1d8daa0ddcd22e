"""The decoder (Gemma 2, Gemma 3, Qwen3, Llama 3; `GemmaConfig`'s switches) in Flax NNX.

`hidden_states` and `logits_at` are separate so that training can gather the
loss positions first and never build a [B, L, V] tensor (V is 262k for Gemma).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from swirl_jax import partitioning
from swirl_jax.models.attention import Attention, CacheAccess, attention_mask
from swirl_jax.models.config import GemmaConfig
from swirl_jax.models.layers import Embedder, FeedForward, RMSNorm, param

_ACT = ("activation_batch", "activation_length", "activation_embed")


class Block(nnx.Module):
  """Pre-norm attention and MLP, both residual, each with a post-norm in Gemma (`post_norms`)."""

  def __init__(self, config: GemmaConfig, layer_type: str, *, rngs: nnx.Rngs):
    dtypes = dict(param_dtype=jnp.dtype(config.param_dtype), dtype=jnp.dtype(config.dtype))
    norm = lambda dim: RMSNorm(dim, eps=config.rms_norm_eps, param_dtype=dtypes["param_dtype"],
                               offset=config.norm_offset)
    is_global = layer_type == "global"
    self.is_global = is_global
    self.pre_attn_norm = norm(config.embed_dim)
    self.attn = Attention(
        embed_dim=config.embed_dim, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
        query_pre_attn_scalar=config.query_pre_attn_scalar,
        use_qk_norm=config.use_qk_norm, softcap=config.attn_logit_softcap,
        rope_base=config.global_rope_base if is_global else config.local_rope_base,
        rope_scale=config.global_rope_scale if is_global else 1.0,
        eps=config.rms_norm_eps, rngs=rngs, query_block=config.attention_query_block,
        llama3_rope=config.llama3_rope if is_global else None, norm_offset=config.norm_offset, **dtypes)
    self.post_attn_norm = norm(config.embed_dim) if config.post_norms else None
    self.pre_ffw_norm = norm(config.embed_dim)
    self.mlp = FeedForward(config.embed_dim, config.mlp_dim, rngs=rngs, activation=config.mlp_activation,
                           **dtypes)
    self.post_ffw_norm = norm(config.embed_dim) if config.post_norms else None

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS=None, cache=None, access: CacheAccess | None = None,
               layer=None):
    h, cache = self.attn(self.pre_attn_norm(x_BxLxD), positions_BxL, mask_BxLxS, cache, access, layer)
    x_BxLxD = x_BxLxD + (self.post_attn_norm(h) if self.post_attn_norm is not None else h)
    h = self.mlp(self.pre_ffw_norm(x_BxLxD))
    h = self.post_ffw_norm(h) if self.post_ffw_norm is not None else h
    return partitioning.constrain(x_BxLxD + h, _ACT), cache


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class ScannedBlocks(nnx.Module):
  """`repeats` copies of one period of the layer pattern, each parameter stacked on a leading
  "layers" axis, so that `scan` runs them as one lax.scan: the program holds one period however
  deep the model is.

  Layer r * len(period) + j is entry r of `period[j]`; the blocks are built in layer order, so a
  seed gives the same weights as the unscanned model.
  """

  def __init__(self, config: GemmaConfig, period: tuple[str, ...], repeats: int, *, rngs: nnx.Rngs):
    copies = [nnx.List([Block(config, t, rngs=rngs) for t in period]) for _ in range(repeats)]
    graphdef, _ = nnx.split(copies[0])

    def stack(*variables):
      axes = ("layers",) + tuple(variables[0].get_metadata()["logical_axes"])
      return variables[0].replace(jnp.stack([v[...] for v in variables]), logical_axes=axes)
    stacked = jax.tree.map(stack, *(nnx.state(c) for c in copies),
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
    self.period = nnx.merge(graphdef, stacked)
    self.repeats = repeats

  def scan(self, x, run_period, stacked_carry=()):
    """x after every repeat: x, carry = run_period(x, period_blocks, r, carry) for r = 0..repeats-1.

    `run_period` sees one repeat's blocks (unstacked) and the loop index r (traced); what it
    carries besides x (the stacked KV caches) passes from repeat to repeat.
    """
    graphdef, state = nnx.split(self.period)

    def body(carry, xs):
      x, extra = carry
      state_r, r = xs
      return run_period(x, nnx.merge(graphdef, state_r), r, extra), None
    (x, stacked_carry), _ = jax.lax.scan(
        body, (x, stacked_carry), (state, jnp.arange(self.repeats, dtype=jnp.int32)))
    return x, stacked_carry


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, one context per row.

  layers[i] = (k_BxSxKxH, v_BxSxKxH) for the unscanned layers (all of them
  without `scan_layers`); stacked[j] = (k_RxBxSxKxH, v_RxBxSxKxH) for the R
  repeats of position j of the scanned period. A global layer has `capacity`
  slots, slot index = position; slots at or past length_B[b] are empty. A
  sliding-window layer keeps only what its window can see: a ring buffer of
  at least the window's size, position p in slot p % slots, so a row stays
  exact however far it runs past the window while the cache's memory and the
  keys a query reads stay at the window's size.
  """

  layers: tuple
  length_B: jax.Array
  stacked: tuple = ()
  capacity: int = flax.struct.field(pytree_node=False, default=0)  # tokens a row can hold

  @classmethod
  def zeros(cls, config: GemmaConfig, batch: int, capacity: int, dtype=None,
            window_slots: int | None = None) -> "KVCache":
    """An empty cache. Sliding-window layers get `window_slots` slots (at most the capacity): by
    default the window; a row that may roll back n tokens (a stop-string cut) needs window + n, or the
    tokens it drops will have overwritten keys its window still sees."""
    dtype = jnp.dtype(dtype or config.dtype)
    window_slots = min(config.sliding_window if window_slots is None else window_slots, capacity)
    shape = lambda kind: (batch, capacity if kind == "global" else window_slots,
                          config.num_kv_heads, config.head_dim)
    period, repeats = config.scan_layout()
    pair = lambda s: (jnp.zeros(s, dtype), jnp.zeros(s, dtype))
    return cls(layers=tuple(pair(shape(t)) for t in config.layer_types[repeats * len(period):]),
               length_B=jnp.zeros((batch,), jnp.int32),
               stacked=tuple(pair((repeats,) + shape(t)) for t in period), capacity=capacity)

  def shardings(self, mesh: Mesh, rules: partitioning.LogicalRules) -> "KVCache":
    """The placement of every leaf of a cache (or of its `jax.eval_shape`): keys and values as
    `partitioning.cache_sharding` says, the lengths as a batch."""
    kv = lambda x: partitioning.cache_sharding(mesh, rules, x.shape)
    return self.replace(layers=jax.tree.map(kv, self.layers), stacked=jax.tree.map(kv, self.stacked),
                        length_B=partitioning.batch_sharding(mesh, rules, self.length_B.shape))


class Transformer(nnx.Module):
  """The decoder. Tokens in, final hidden states or logits out."""

  def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embedder = Embedder(
        config.vocab_size, config.embed_dim, param_dtype=jnp.dtype(config.param_dtype),
        dtype=jnp.dtype(config.dtype), rngs=rngs, scale_inputs=config.scale_embeddings)
    period, repeats = config.scan_layout()
    self.scanned = ScannedBlocks(config, period, repeats, rngs=rngs) if repeats else None
    # The layers not scanned: all of them, or those past the last whole period.
    self.blocks = nnx.List([Block(config, t, rngs=rngs)
                            for t in config.layer_types[repeats * len(period):]])
    self.final_norm = RMSNorm(config.embed_dim, eps=config.rms_norm_eps,
                              param_dtype=jnp.dtype(config.param_dtype), offset=config.norm_offset)
    # Untied embeddings (Qwen3 8B and up, Llama 3.1): the output projection's own [D, V] weights.
    self.lm_head = (None if config.tie_embeddings else
                    param(rngs, (config.embed_dim, config.vocab_size), ("embed", "vocab"),
                          jnp.dtype(config.param_dtype)))

  def hidden_states(self, tokens_BxL: jax.Array, positions_BxL: jax.Array=None, segment_ids_BxL: jax.Array=None, branch_ids_BxL: jax.Array=None):
    """Final-normed hidden states [B, L, D].

    positions default to 0..L-1; segment_ids default to one segment per row.
    Tokens attend only within their segment; segment 0 marks padding. With
    branch_ids (tree-packed rows), a token on branch g > 0 sees its segment's
    trunk (branch 0) and its own branch only.
    """
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, l), jnp.int32)
    branches = dict(q_branches_BxL=branch_ids_BxL, k_branches_BxS=branch_ids_BxL)
    global_mask = attention_mask(positions_BxL, segment_ids_BxL, positions_BxL, segment_ids_BxL, **branches)
    local_mask = attention_mask(positions_BxL, segment_ids_BxL, positions_BxL, segment_ids_BxL,
                                window=self.config.sliding_window, **branches)
    x_BxLxD = partitioning.constrain(self.embedder.encode(tokens_BxL), _ACT)

    def run_block(block, x, pos, mask):
      return block(x, pos, mask)[0]

    if self.config.remat != "none":
      run_block = nnx.remat(run_block, policy=_REMAT_POLICIES[self.config.remat])
    if self.scanned is not None:
      def run_period(x, period, r, carry):
        for block in period:
          x = run_block(block, x, positions_BxL, global_mask if block.is_global else local_mask)
        return x, carry
      x_BxLxD, _ = self.scanned.scan(x_BxLxD, run_period)
    for block in self.blocks:
      x_BxLxD = run_block(block, x_BxLxD, positions_BxL,
                          global_mask if block.is_global else local_mask)
    return self.final_norm(x_BxLxD)

  def extend(self, tokens_BxC: jax.Array, cache: "KVCache", num_new_B: jax.Array, span: int | None = None):
    """Appends row b's first num_new_B[b] tokens to its cached context.

    Returns the hidden states [B, C, D] of the chunk (positions past
    num_new_B are padding and are not stored) and the cache with lengths
    advanced by num_new_B. The caller keeps length + num_new within capacity.
    `span` (static; default the capacity) bounds what queries read: every
    row's length + num_new must be at most span, and attention then costs
    span keys, not capacity (global layers), or min(span, ring) (local).
    """
    b, c = tokens_BxC.shape
    span = cache.capacity if span is None else span
    start_B = cache.length_B
    chunk_C = jnp.arange(c, dtype=jnp.int32)
    positions_BxC = start_B[:, None] + chunk_C[None, :]
    end_B = start_B + num_new_B
    is_new_BxC = chunk_C[None, :] < num_new_B[:, None]
    ones_BxC = jnp.ones((b, c), jnp.int32)
    window = self.config.sliding_window

    def make_access(is_global: bool, slots: int) -> CacheAccess:
      """How the chunk meets a layer's cache of `slots` slots."""
      if is_global:  # slot = position: store, then read the first `span` slots
        slots_S = jnp.arange(span, dtype=jnp.int32)
        filled_BxS = (slots_S[None, :] < end_B[:, None]).astype(jnp.int32)
        access = CacheAccess(
            slots_BxL=jnp.where(is_new_BxC, positions_BxC, cache.capacity), read=span,
            mask_BxLxS=attention_mask(positions_BxC, ones_BxC, jnp.broadcast_to(slots_S, (b, span)), filled_BxS))
      else:  # a ring of `slots`: position p in slot p % slots
        read = min(span, slots)  # no row has reached slot `span` yet when span <= slots
        ring_S = jnp.arange(read, dtype=jnp.int32)
        last_Bx1 = start_B[:, None] - 1
        held_BxS = last_Bx1 - jnp.mod(last_Bx1 - ring_S[None, :], slots)  # position in each slot (<0: none)
        # Of the new tokens, only the last `slots` are stored (earlier ones would be overwritten).
        stored_BxC = is_new_BxC & (chunk_C[None, :] >= num_new_B[:, None] - slots)
        new_BxC = is_new_BxC.astype(jnp.int32)
        access = CacheAccess(
            slots_BxL=jnp.where(stored_BxC, jnp.mod(positions_BxC, slots), slots), read=read,
            mask_BxLxS=attention_mask(positions_BxC, ones_BxC, held_BxS, (held_BxS >= 0).astype(jnp.int32),
                                      window=window),
            new_mask_BxLxL=attention_mask(positions_BxC, new_BxC, positions_BxC, new_BxC, window=window))
      return access

    # One access per (layer kind, cache size), built before the scan so its body and the tail share it.
    period_blocks = list(self.scanned.period) if self.scanned is not None else []
    pairs = list(zip(period_blocks, cache.stacked)) + list(zip(self.blocks, cache.layers))
    key = lambda block, layer: (block.is_global, layer[0].shape[-3])
    accesses = {k: make_access(*k) for k in dict.fromkeys(key(*pair) for pair in pairs)}
    x_BxCxD = partitioning.constrain(self.embedder.encode(tokens_BxC), _ACT)
    stacked = cache.stacked
    if self.scanned is not None:
      def run_period(x, period, r, stacked):
        updated = []
        for block, layer in zip(period, stacked):
          x, layer = block(x, positions_BxC, None, layer, accesses[key(block, layer)], layer=r)
          updated.append(layer)
        return x, tuple(updated)
      x_BxCxD, stacked = self.scanned.scan(x_BxCxD, run_period, stacked)
    new_layers = []
    for block, layer in zip(self.blocks, cache.layers):
      x_BxCxD, layer = block(x_BxCxD, positions_BxC, None, layer, accesses[key(block, layer)])
      new_layers.append(layer)
    return self.final_norm(x_BxCxD), cache.replace(layers=tuple(new_layers), length_B=end_B, stacked=stacked)

  def logits_at(self, hidden_NxD: jax.Array):
    """Logits [..., V] of hidden states of any leading shape, soft-capped, fp32."""
    if self.lm_head is None:
      logits = self.embedder.decode(hidden_NxD).astype(jnp.float32)
    else:
      dtype = self.embedder.dtype
      logits = jnp.einsum("...d,dv->...v", hidden_NxD.astype(dtype), self.lm_head[...].astype(dtype))
      logits = logits.astype(jnp.float32)
    if self.config.final_logit_softcap is not None:
      cap = self.config.final_logit_softcap
      logits = jnp.tanh(logits / cap) * cap
    return logits

  def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None, branch_ids_BxL=None):
    """Logits [B, L, V]. For inference and tests; training uses `logits_at`."""
    hidden_BxLxD = self.hidden_states(tokens_BxL, positions_BxL, segment_ids_BxL, branch_ids_BxL)
    logits_BxLxV = self.logits_at(hidden_BxLxD)
    return partitioning.constrain(
        logits_BxLxV, ("activation_batch", "activation_length", "activation_vocab"))


def init_model(config: GemmaConfig, seed: int = 0) -> Transformer:
  """A randomly initialized model on the default device."""
  return Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: GemmaConfig) -> Transformer:
  """The model's structure with ShapeDtypeStructs in place of arrays (no memory)."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0)))
