"""Small Gemma building blocks: RMSNorm, the tied embedder, the GeGLU MLP, RoPE.

Shapes: B batch, L length, D embed_dim, F mlp_dim, V vocab, H head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from swirl_jax import partitioning


def param(rngs: nnx.Rngs, shape, logical_axes, dtype, scale: float | None = None) -> nnx.Param:
  """A normal(0, scale) parameter that carries its logical axis names."""
  scale = (1.0 / shape[0]) ** 0.5 if scale is None else scale
  value = scale * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=tuple(logical_axes))


class RMSNorm(nnx.Module):
  """RMSNorm with Gemma's (1 + w) scale, computed in fp32; w starts at 0."""

  def __init__(self, dim: int, *, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Embedder(nnx.Module):
  """Token embedding, scaled by sqrt(D) on the way in, tied on the way out."""

  def __init__(self, vocab_size: int, embed_dim: int, *, param_dtype, dtype, rngs: nnx.Rngs):
    self.embed_dim = embed_dim
    self.dtype = dtype
    # std 1/sqrt(D): inputs (scaled by sqrt(D)) have unit variance, and the tied
    # output logits start near N(0, 1), so a fresh model samples broadly.
    self.table = param(rngs, (vocab_size, embed_dim), ("vocab", "embed"), param_dtype,
                       scale=embed_dim**-0.5)

  def encode(self, tokens_BxL: jax.Array):
    x_BxLxD = jnp.take(self.table[...], tokens_BxL, axis=0).astype(self.dtype)
    # The scale is rounded to the compute dtype first, as the reference does.
    return x_BxLxD * jnp.asarray(self.embed_dim**0.5, self.dtype)

  def decode(self, x_NxD: jax.Array):
    """Logits for hidden states of any leading shape [..., D] -> [..., V]."""
    return jnp.einsum("...d,vd->...v", x_NxD.astype(self.dtype),
                      self.table[...].astype(self.dtype))


class FeedForward(nnx.Module):
  """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

  def __init__(self, embed_dim: int, mlp_dim: int, *, param_dtype, dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.gate = param(rngs, (embed_dim, mlp_dim), ("embed", "mlp"), param_dtype)
    self.up = param(rngs, (embed_dim, mlp_dim), ("embed", "mlp"), param_dtype)
    self.down = param(rngs, (mlp_dim, embed_dim), ("mlp", "embed"), param_dtype)

  def __call__(self, x_BxLxD):
    x = x_BxLxD.astype(self.dtype)
    gate_BxLxF = jnp.einsum("bld,df->blf", x, self.gate[...].astype(self.dtype))
    up_BxLxF = jnp.einsum("bld,df->blf", x, self.up[...].astype(self.dtype))
    h_BxLxF = jax.nn.gelu(gate_BxLxF, approximate=True) * up_BxLxF
    h_BxLxF = partitioning.constrain(
        h_BxLxF, ("activation_batch", "activation_length", "activation_mlp"))
    return jnp.einsum("blf,fd->bld", h_BxLxF, self.down[...].astype(self.dtype))


def apply_rope(x_BxLxNxH: jax.Array, positions_BxL: jax.Array, base: float, scale: float = 1.0):
  """Rotary embedding, half-split layout (first half pairs with second half)."""
  half = x_BxLxNxH.shape[-1] // 2
  inv_freq_K = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) * 2 / (2 * half)))
  angles_BxLxK = (positions_BxL.astype(jnp.float32) / scale)[..., None] * inv_freq_K
  sin = jnp.sin(angles_BxLxK)[:, :, None, :]
  cos = jnp.cos(angles_BxLxK)[:, :, None, :]
  x32 = x_BxLxNxH.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x_BxLxNxH.dtype)
