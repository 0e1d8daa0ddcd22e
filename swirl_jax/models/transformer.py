"""The Gemma 2 / Gemma 3 text decoder in Flax NNX.

`hidden_states` and `logits_at` are separate so that training can gather the
loss positions first and never build a [B, L, V] tensor (V is 262k for Gemma).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from swirl_jax import partitioning
from swirl_jax.models.attention import Attention, attention_mask
from swirl_jax.models.config import GemmaConfig
from swirl_jax.models.layers import Embedder, FeedForward, RMSNorm

_ACT = ("activation_batch", "activation_length", "activation_embed")


class Block(nnx.Module):
  """Pre-norm attention and MLP, each with a post-norm, both residual."""

  def __init__(self, config: GemmaConfig, layer_type: str, *, rngs: nnx.Rngs):
    dtypes = dict(param_dtype=jnp.dtype(config.param_dtype), dtype=jnp.dtype(config.dtype))
    norm = lambda dim: RMSNorm(dim, eps=config.rms_norm_eps, param_dtype=dtypes["param_dtype"])
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
        eps=config.rms_norm_eps, rngs=rngs, query_block=config.attention_query_block, **dtypes)
    self.post_attn_norm = norm(config.embed_dim)
    self.pre_ffw_norm = norm(config.embed_dim)
    self.mlp = FeedForward(config.embed_dim, config.mlp_dim, rngs=rngs, **dtypes)
    self.post_ffw_norm = norm(config.embed_dim)

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, cache=None, write_slots_BxL=None, layer=None):
    h, cache = self.attn(self.pre_attn_norm(x_BxLxD), positions_BxL, mask_BxLxS, cache, write_slots_BxL,
                         layer)
    x_BxLxD = x_BxLxD + self.post_attn_norm(h)
    h = self.mlp(self.pre_ffw_norm(x_BxLxD))
    return partitioning.constrain(x_BxLxD + self.post_ffw_norm(h), _ACT), cache


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
  """Keys and values of every layer, one context per row, slot index = position.

  layers[i] = (k_BxSxKxH, v_BxSxKxH) for the unscanned layers (all of them
  without `scan_layers`); stacked[j] = (k_RxBxSxKxH, v_RxBxSxKxH) for the R
  repeats of position j of the scanned period. Slots at or past length_B[b]
  are empty. Local layers keep all slots too and apply their window through
  the mask, so a row stays exact however far it runs past the window.
  """

  layers: tuple
  length_B: jax.Array
  stacked: tuple = ()

  @property
  def capacity(self) -> int:
    return (self.layers or self.stacked)[0][0].shape[-3]

  @classmethod
  def zeros(cls, config: GemmaConfig, batch: int, capacity: int, dtype=None) -> "KVCache":
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, capacity, config.num_kv_heads, config.head_dim)
    period, repeats = config.scan_layout()
    pair = lambda s: (jnp.zeros(s, dtype), jnp.zeros(s, dtype))
    return cls(layers=tuple(pair(shape) for _ in config.layer_types[repeats * len(period):]),
               length_B=jnp.zeros((batch,), jnp.int32),
               stacked=tuple(pair((repeats,) + shape) for _ in period))


class Transformer(nnx.Module):
  """Gemma decoder. Tokens in, final hidden states or logits out."""

  def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embedder = Embedder(
        config.vocab_size, config.embed_dim, param_dtype=jnp.dtype(config.param_dtype),
        dtype=jnp.dtype(config.dtype), rngs=rngs)
    period, repeats = config.scan_layout()
    self.scanned = ScannedBlocks(config, period, repeats, rngs=rngs) if repeats else None
    # The layers not scanned: all of them, or those past the last whole period.
    self.blocks = nnx.List([Block(config, t, rngs=rngs)
                            for t in config.layer_types[repeats * len(period):]])
    self.final_norm = RMSNorm(config.embed_dim, eps=config.rms_norm_eps,
                              param_dtype=jnp.dtype(config.param_dtype))

  def hidden_states(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None):
    """Final-normed hidden states [B, L, D].

    positions default to 0..L-1; segment_ids default to one segment per row.
    Tokens attend only within their segment; segment 0 marks padding.
    """
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones((b, l), jnp.int32)
    global_mask = attention_mask(positions_BxL, segment_ids_BxL, positions_BxL, segment_ids_BxL)
    local_mask = attention_mask(positions_BxL, segment_ids_BxL, positions_BxL, segment_ids_BxL,
                                window=self.config.sliding_window)
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

  def extend(self, tokens_BxC, cache: "KVCache", num_new_B):
    """Appends row b's first num_new_B[b] tokens to its cached context.

    Returns the hidden states [B, C, D] of the chunk (positions past
    num_new_B are padding and are not stored) and the cache with lengths
    advanced by num_new_B. The caller keeps length + num_new within capacity.
    """
    b, c = tokens_BxC.shape
    start_B = cache.length_B
    positions_BxC = start_B[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]
    end_B = start_B + num_new_B
    is_new_BxC = jnp.arange(c, dtype=jnp.int32)[None, :] < num_new_B[:, None]
    write_slots_BxC = jnp.where(is_new_BxC, positions_BxC, cache.capacity)
    slots_S = jnp.arange(cache.capacity, dtype=jnp.int32)
    slot_positions_BxS = jnp.broadcast_to(slots_S, (b, cache.capacity))
    slot_valid_BxS = (slots_S[None, :] < end_B[:, None]).astype(jnp.int32)
    ones_BxC = jnp.ones((b, c), jnp.int32)
    global_mask = attention_mask(positions_BxC, ones_BxC, slot_positions_BxS, slot_valid_BxS)
    local_mask = attention_mask(positions_BxC, ones_BxC, slot_positions_BxS, slot_valid_BxS,
                                window=self.config.sliding_window)
    x_BxCxD = partitioning.constrain(self.embedder.encode(tokens_BxC), _ACT)
    mask_of = lambda block: global_mask if block.is_global else local_mask
    stacked = cache.stacked
    if self.scanned is not None:
      def run_period(x, period, r, stacked):
        updated = []
        for block, layer in zip(period, stacked):
          x, layer = block(x, positions_BxC, mask_of(block), layer, write_slots_BxC, layer=r)
          updated.append(layer)
        return x, tuple(updated)
      x_BxCxD, stacked = self.scanned.scan(x_BxCxD, run_period, stacked)
    new_layers = []
    for block, layer in zip(self.blocks, cache.layers):
      x_BxCxD, layer = block(x_BxCxD, positions_BxC, mask_of(block), layer, write_slots_BxC)
      new_layers.append(layer)
    return self.final_norm(x_BxCxD), KVCache(layers=tuple(new_layers), length_B=end_B, stacked=stacked)

  def logits_at(self, hidden_NxD):
    """Logits [..., V] of hidden states of any leading shape, soft-capped, fp32."""
    logits = self.embedder.decode(hidden_NxD).astype(jnp.float32)
    if self.config.final_logit_softcap is not None:
      cap = self.config.final_logit_softcap
      logits = jnp.tanh(logits / cap) * cap
    return logits

  def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None):
    """Logits [B, L, V]. For inference and tests; training uses `logits_at`."""
    hidden_BxLxD = self.hidden_states(tokens_BxL, positions_BxL, segment_ids_BxL)
    logits_BxLxV = self.logits_at(hidden_BxLxD)
    return partitioning.constrain(
        logits_BxLxV, ("activation_batch", "activation_length", "activation_vocab"))


def init_model(config: GemmaConfig, seed: int = 0) -> Transformer:
  """A randomly initialized model on the default device."""
  return Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: GemmaConfig) -> Transformer:
  """The model's structure with ShapeDtypeStructs in place of arrays (no memory)."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=0)))
