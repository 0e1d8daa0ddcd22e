"""Grouped-query attention with the decoders' options (QK-norm, soft-cap, RoPE scaling), and the masks.

Shapes: B batch, L queries, S keys, D embed_dim, N query heads, K kv heads,
G = N / K query heads per kv head, H head_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from swirl_jax import partitioning
from swirl_jax.models.layers import RMSNorm, apply_rope, param

_MASKED = -1e30  # finite, so a row with no visible key gives no NaN


def attention_mask(q_positions_BxL: jax.Array, q_segments_BxL: jax.Array, k_positions_BxS: jax.Array, k_segments_BxS: jax.Array,
                   window: int | None = None, q_branches_BxL: jax.Array=None, k_branches_BxS: jax.Array=None):
  """Which keys each query sees: same segment (0 = padding), causal, in window, and (with branch
  ids, for tree-packed rows) a key on the shared trunk (branch 0) or on the query's own branch.

  Positions, not indices, decide causality and the window, so packed rows,
  branches whose positions restart at the trunk's end, and KV-cache slots all use the same rule.
  """
  q_pos = q_positions_BxL[:, :, None]
  k_pos = k_positions_BxS[:, None, :]
  mask_BxLxS = (q_segments_BxL[:, :, None] == k_segments_BxS[:, None, :])
  mask_BxLxS &= (k_segments_BxS[:, None, :] != 0) & (k_pos <= q_pos)
  if window is not None:
    mask_BxLxS &= (q_pos - k_pos) < window
  if q_branches_BxL is not None:
    k_branch = k_branches_BxS[:, None, :]
    mask_BxLxS &= (k_branch == 0) | (k_branch == q_branches_BxL[:, :, None])
  return mask_BxLxS


def attention_over_parts(q_BxLxNxH: jax.Array, parts, softcap: float | None = None):
  """Softmax attention with GQA over keys given in parts; logits and softmax in fp32.

  parts = ((k_BxSxKxH, v_BxSxKxH, mask_BxLxS), ...): one softmax runs over the keys of every part,
  as over their concatenation, without copying keys into one array (a KV cache's slots and the
  chunk being appended to it).
  """
  b, l, n, h = q_BxLxNxH.shape
  k = parts[0][0].shape[2]
  q_BxLxKxGxH = q_BxLxNxH.reshape(b, l, k, n // k, h)
  logits = []
  for k_BxSxKxH, _, mask_BxLxS in parts:
    part = jnp.einsum("blkgh,bskh->bkgls", q_BxLxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32)
    if softcap is not None:
      part = jnp.tanh(part / softcap) * softcap
    logits.append(jnp.where(mask_BxLxS[:, None, None, :, :], part, _MASKED))
  probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1) if len(logits) > 1 else logits[0], axis=-1)
  out_BxLxKxGxH = 0
  start = 0
  for _, v_BxSxKxH, mask_BxLxS in parts:
    size = mask_BxLxS.shape[-1]
    probs_part = jax.lax.slice_in_dim(probs, start, start + size, axis=-1).astype(v_BxSxKxH.dtype)
    out_BxLxKxGxH = out_BxLxKxGxH + jnp.einsum("bkgls,bskh->blkgh", probs_part, v_BxSxKxH)
    start += size
  return out_BxLxKxGxH.reshape(b, l, n, h)


def dot_product_attention(q_BxLxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask_BxLxS: jax.Array,
                          softcap: float | None = None):
  """Softmax attention with GQA; logits and softmax in fp32."""
  return attention_over_parts(q_BxLxNxH, ((k_BxSxKxH, v_BxSxKxH, mask_BxLxS),), softcap)


def blocked_attention(q_BxLxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask_BxLxS: jax.Array, softcap: float | None = None,
                      block: int = 0):
  """`dot_product_attention` with the queries taken `block` at a time (see `blocked_parts`)."""
  return blocked_parts(q_BxLxNxH, ((k_BxSxKxH, v_BxSxKxH, mask_BxLxS),), softcap, block)


def blocked_parts(q_BxLxNxH: jax.Array, parts, softcap: float | None = None, block: int = 0):
  """`attention_over_parts` with the queries taken `block` at a time.

  Each query's softmax runs over the same keys as before, so the result is the same; what changes is
  memory: fp32 logits of one block ([B, N, block, S]) exist at a time, not of all L queries, and the
  backward pass recomputes a block's logits instead of keeping them (jax.checkpoint per block). With
  block 0, or L <= block, it is `attention_over_parts`.
  """
  b, l, n, h = q_BxLxNxH.shape
  if not block or l <= block:
    return attention_over_parts(q_BxLxNxH, parts, softcap)
  blocks = -(-l // block)
  pad = blocks * block - l  # padded queries see no key and are dropped below
  q = jnp.pad(q_BxLxNxH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q_RxBxCxNxH = q.reshape(b, blocks, block, n, h).swapaxes(0, 1)
  masks_RxBxCxS = tuple(jnp.pad(mask, ((0, 0), (0, pad), (0, 0))).reshape(b, blocks, block, -1).swapaxes(0, 1)
                        for _, _, mask in parts)

  @jax.checkpoint
  def one_block(args):
    q_BxCxNxH, masks_BxCxS = args
    return attention_over_parts(
        q_BxCxNxH, tuple((k, v, m) for (k, v, _), m in zip(parts, masks_BxCxS)), softcap)
  out_RxBxCxNxH = jax.lax.map(one_block, (q_RxBxCxNxH, masks_RxBxCxS))
  return out_RxBxCxNxH.swapaxes(0, 1).reshape(b, blocks * block, n, h)[:, :l]


class CacheAccess(NamedTuple):
  """How a chunk of L new tokens meets one layer's KV cache of S slots.

  slots_BxL: the slot each new token is stored in (S or more: not stored, as padding).
  read: how many leading slots queries look at (static): the filled span of a full-length cache, or
    a sliding-window layer's whole ring buffer.
  mask_BxLxS: which of those `read` slots each query sees.
  new_mask_BxLxL: None to store the new tokens first and attend over the slots only (they hold the
    new tokens); else queries attend over the slots as they were plus the new tokens (this mask),
    and the new tokens are stored after.
  """

  slots_BxL: jax.Array
  read: int
  mask_BxLxS: jax.Array
  new_mask_BxLxL: jax.Array | None = None


class Attention(nnx.Module):
  """Attention: projections, optional QK-norm, RoPE, softcap, output proj."""

  def __init__(self, *, embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int,
               query_pre_attn_scalar: float, use_qk_norm: bool, softcap: float | None,
               rope_base: float, rope_scale: float, eps: float, param_dtype, dtype,
               rngs: nnx.Rngs, query_block: int = 0, llama3_rope: tuple | None = None, norm_offset: float = 1.0):
    self.dtype = dtype
    self.llama3_rope = llama3_rope
    self.query_block = query_block
    self.softcap = softcap
    self.rope_base = rope_base
    self.rope_scale = rope_scale
    self.query_scale = query_pre_attn_scalar**-0.5
    self.q = param(rngs, (embed_dim, num_heads, head_dim), ("embed", "q_heads", "head_dim"), param_dtype)
    self.k = param(rngs, (embed_dim, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.v = param(rngs, (embed_dim, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.o = param(rngs, (num_heads, head_dim, embed_dim), ("q_heads", "head_dim", "embed"), param_dtype,
                   scale=(1.0 / (num_heads * head_dim)) ** 0.5)
    if use_qk_norm:
      self.q_norm = RMSNorm(head_dim, eps=eps, param_dtype=param_dtype, offset=norm_offset)
      self.k_norm = RMSNorm(head_dim, eps=eps, param_dtype=param_dtype, offset=norm_offset)
    else:
      self.q_norm = self.k_norm = None

  def project_kv(self, x_BxSxD: jax.Array, positions_BxS: jax.Array):
    """Keys (normed, rotated) and values of new tokens: what a KV cache stores."""
    x = x_BxSxD.astype(self.dtype)
    k_BxSxKxH = jnp.einsum("bsd,dkh->bskh", x, self.k[...].astype(self.dtype))
    v_BxSxKxH = jnp.einsum("bsd,dkh->bskh", x, self.v[...].astype(self.dtype))
    if self.k_norm is not None:
      k_BxSxKxH = self.k_norm(k_BxSxKxH)
    k_BxSxKxH = apply_rope(k_BxSxKxH, positions_BxS, self.rope_base, self.rope_scale, self.llama3_rope)
    return k_BxSxKxH, v_BxSxKxH

  def project_q(self, x_BxLxD: jax.Array, positions_BxL: jax.Array):
    q_BxLxNxH = jnp.einsum("bld,dnh->blnh", x_BxLxD.astype(self.dtype), self.q[...].astype(self.dtype))
    q_BxLxNxH = partitioning.constrain(
        q_BxLxNxH, ("activation_batch", "activation_length", "activation_heads", None))
    if self.q_norm is not None:
      q_BxLxNxH = self.q_norm(q_BxLxNxH)
    q_BxLxNxH = apply_rope(q_BxLxNxH, positions_BxL, self.rope_base, self.rope_scale, self.llama3_rope)
    return q_BxLxNxH * jnp.asarray(self.query_scale, self.dtype)

  def attend(self, q_BxLxNxH: jax.Array, parts):
    """Attention over keys/values given in parts ((k, v, mask), ...), then the output projection."""
    out_BxLxNxH = blocked_parts(q_BxLxNxH, parts, self.softcap, self.query_block)
    return jnp.einsum("blnh,nhd->bld", out_BxLxNxH, self.o[...].astype(self.dtype))

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS=None, cache=None, access: CacheAccess | None = None,
               layer=None):
    """Self-attention over the new tokens, or over a KV cache they are written into.

    Without `cache`, keys are the new tokens (mask [B, L, L]); returns (out, None).
    With `cache` = (k_BxSxKxH, v_BxSxKxH), `access` says where each new token is stored and which
    cached slots each query sees (see `CacheAccess`); returns (out, cache).
    With `layer` (a traced index, for scanned layers) the cache is the stack
    (k_RxBxSxKxH, v_RxBxSxKxH) of every repeat of this layer: the new tokens are
    written into entry `layer` in place and the updated stack is returned.
    """
    q_BxLxNxH = self.project_q(x_BxLxD, positions_BxL)
    k_BxLxKxH, v_BxLxKxH = self.project_kv(x_BxLxD, positions_BxL)
    if cache is None:
      return self.attend(q_BxLxNxH, ((k_BxLxKxH, v_BxLxKxH, mask_BxLxS),)), None
    rows_Bx1 = jnp.arange(x_BxLxD.shape[0])[:, None]
    index = (rows_Bx1, access.slots_BxL) if layer is None else (layer, rows_Bx1, access.slots_BxL)
    kv_axes = ("activation_batch", "activation_length", "activation_kv_heads", None)
    if layer is not None:
      kv_axes = (None,) + kv_axes
    write = lambda c, new: partitioning.constrain(c.at[index].set(new.astype(c.dtype), mode="drop"), kv_axes)

    def read(c):  # the first access.read slots of this layer's cache, [B, read, K, H]
      c = c if layer is None else c[layer]
      return jax.lax.slice_in_dim(c, 0, access.read, axis=1).astype(self.dtype)

    if access.new_mask_BxLxL is None:  # write, then attend over the slots (the new tokens among them)
      cache = (write(cache[0], k_BxLxKxH), write(cache[1], v_BxLxKxH))
      out = self.attend(q_BxLxNxH, ((read(cache[0]), read(cache[1]), access.mask_BxLxS),))
      return out, cache
    # Attend over the slots as they were and over the new tokens, then write (a ring buffer's new
    # tokens may overwrite slots that earlier tokens of the same chunk still see).
    out = self.attend(q_BxLxNxH, ((read(cache[0]), read(cache[1]), access.mask_BxLxS),
                                  (k_BxLxKxH, v_BxLxKxH, access.new_mask_BxLxL)))
    return out, (write(cache[0], k_BxLxKxH), write(cache[1], v_BxLxKxH))
