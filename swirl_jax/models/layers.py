"""Small decoder building blocks: RMSNorm, the embedder, the gated MLP, RoPE.

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
  """RMSNorm scaled by (offset + w), computed in fp32: Gemma's offset 1 (w starts at 0), Qwen3's
  and Llama's 0 (w starts at 1); either way a fresh norm scales by 1."""

  def __init__(self, dim: int, *, eps: float, param_dtype, offset: float = 1.0):
    self.eps, self.offset = eps, offset
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype), logical_axes=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Embedder(nnx.Module):
  """Token embedding, scaled by sqrt(D) on the way in (Gemma's; `scale_inputs`), and the output
  projection when the embeddings are tied."""

  def __init__(self, vocab_size: int, embed_dim: int, *, param_dtype, dtype, rngs: nnx.Rngs,
               scale_inputs: bool = True):
    self.embed_dim = embed_dim
    self.dtype = dtype
    self.scale_inputs = scale_inputs
    # std 1/sqrt(D): inputs (scaled by sqrt(D)) have unit variance, and the tied
    # output logits start near N(0, 1), so a fresh model samples broadly.
    self.table = param(rngs, (vocab_size, embed_dim), ("vocab", "embed"), param_dtype,
                       scale=embed_dim**-0.5)

  def encode(self, tokens_BxL: jax.Array):
    x_BxLxD = jnp.take(self.table[...], tokens_BxL, axis=0).astype(self.dtype)
    if not self.scale_inputs:
      return x_BxLxD
    # The scale is rounded to the compute dtype first, as the reference does.
    return x_BxLxD * jnp.asarray(self.embed_dim**0.5, self.dtype)

  def decode(self, x_NxD: jax.Array):
    """Logits for hidden states of any leading shape [..., D] -> [..., V]."""
    return jnp.einsum("...d,vd->...v", x_NxD.astype(self.dtype),
                      self.table[...].astype(self.dtype))


_ACTIVATIONS = {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu}


class FeedForward(nnx.Module):
  """The gated MLP: down(act(gate(x)) * up(x)); GeGLU (Gemma: gelu_tanh) or SwiGLU (silu)."""

  def __init__(self, embed_dim: int, mlp_dim: int, *, param_dtype, dtype, rngs: nnx.Rngs,
               activation: str = "gelu_tanh"):
    self.dtype = dtype
    self.activation = activation
    self.gate = param(rngs, (embed_dim, mlp_dim), ("embed", "mlp"), param_dtype)
    self.up = param(rngs, (embed_dim, mlp_dim), ("embed", "mlp"), param_dtype)
    self.down = param(rngs, (mlp_dim, embed_dim), ("mlp", "embed"), param_dtype)

  def __call__(self, x_BxLxD):
    x = x_BxLxD.astype(self.dtype)
    gate_BxLxF = jnp.einsum("bld,df->blf", x, self.gate[...].astype(self.dtype))
    up_BxLxF = jnp.einsum("bld,df->blf", x, self.up[...].astype(self.dtype))
    h_BxLxF = _ACTIVATIONS[self.activation](gate_BxLxF) * up_BxLxF
    h_BxLxF = partitioning.constrain(
        h_BxLxF, ("activation_batch", "activation_length", "activation_mlp"))
    return jnp.einsum("blf,fd->bld", h_BxLxF, self.down[...].astype(self.dtype))


def llama3_frequencies(inv_freq_K: jax.Array, factor: float, low_freq_factor: float, high_freq_factor: float,
                       original_positions: int) -> jax.Array:
  """Llama 3's RoPE scaling: frequencies whose wavelength exceeds original_positions / low_freq_factor
  are divided by `factor`, those under original_positions / high_freq_factor kept, and those between
  blended linearly in original_positions / wavelength."""
  wavelength_K = 2 * jnp.pi / inv_freq_K
  ratio_K = original_positions / wavelength_K  # how many wavelengths the original context holds
  blend_K = jnp.clip((ratio_K - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
  return (1.0 - blend_K) * inv_freq_K / factor + blend_K * inv_freq_K


def apply_rope(x_BxLxNxH: jax.Array, positions_BxL: jax.Array, base: float, scale: float = 1.0,
               llama3: tuple[float, float, float, int] | None = None):
  """Rotary embedding, half-split layout (first half pairs with second half). `scale` divides the
  positions (linear scaling); `llama3` scales the frequencies (`llama3_frequencies`)."""
  half = x_BxLxNxH.shape[-1] // 2
  inv_freq_K = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) * 2 / (2 * half)))
  if llama3 is not None:
    inv_freq_K = llama3_frequencies(inv_freq_K, *llama3)
  angles_BxLxK = (positions_BxL.astype(jnp.float32) / scale)[..., None] * inv_freq_K
  sin = jnp.sin(angles_BxLxK)[:, :, None, :]
  cos = jnp.cos(angles_BxLxK)[:, :, None, :]
  x32 = x_BxLxNxH.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x_BxLxNxH.dtype)
