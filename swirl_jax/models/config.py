"""Decoder configs: one dataclass and the named presets of Gemma 2, Gemma 3, Qwen3 and Llama 3.

The four families share one decoder: grouped-query attention with RoPE, a gated MLP and RMSNorm.
They differ in numbers and switches: the layer pattern and window (Gemma), QK-norm (Gemma 3,
Qwen3), soft-capping (Gemma 2), the norm's form (Gemma's (1 + w) against w) and Gemma's extra
post-norms, the MLP's activation (GELU against SiLU), Gemma's sqrt(D) embedding scale, tied or
untied embeddings, and Llama 3's RoPE frequency scaling. So one config covers all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import gin

LayerType = Literal["local", "global"]
RematPolicy = Literal["none", "full", "dots"]
MlpActivation = Literal["gelu_tanh", "silu"]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Shape and switches of a decoder: Gemma 2, Gemma 3, Qwen3 or Llama 3 (the defaults are Gemma's)."""

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  layer_types: tuple[LayerType, ...]
  sliding_window: int
  query_pre_attn_scalar: float
  use_qk_norm: bool
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  local_rope_base: float = 10_000.0
  global_rope_base: float = 10_000.0
  # Linear RoPE position scaling on global layers (Gemma 3 4B and larger: 8).
  global_rope_scale: float = 1.0
  rms_norm_eps: float = 1e-6
  # Llama 3's RoPE frequency scaling on global layers: (factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings), e.g. (8.0, 1.0, 4.0, 8192) for Llama 3.1; None: none.
  llama3_rope: tuple[float, float, float, int] | None = None
  # The family switches (Gemma's values by default).
  norm_offset: float = 1.0  # RMSNorm scales by (norm_offset + w): Gemma 1 (w starts at 0), Qwen3 / Llama 0 (w at 1)
  post_norms: bool = True  # Gemma's norms after attention and after the MLP, inside the residual
  mlp_activation: MlpActivation = "gelu_tanh"  # the gated MLP's: Gemma gelu_tanh, Qwen3 / Llama silu
  scale_embeddings: bool = True  # Gemma multiplies the input embeddings by sqrt(D)
  tie_embeddings: bool = True  # the output projection is the embedding table (else its own lm_head)
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype of matmuls; norms and softmax stay fp32
  remat: RematPolicy = "none"
  # Run the layers as one lax.scan over stacked parameters (one period of the layer pattern is the
  # scanned body), so the compiled program and its compile time do not grow with depth.
  scan_layers: bool = False
  # Attention takes queries this many at a time (0: all at once), so fp32 logits of [B, heads,
  # block, keys] exist at a time instead of [B, heads, L, keys]; the result is the same.
  attention_query_block: int = 0

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"GemmaConfig.num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}")
    bad = [t for t in self.layer_types if t not in ("local", "global")]
    if bad:
      raise ValueError(f"GemmaConfig.layer_types has unknown entries {bad}; "
                       "use 'local' or 'global'")
    if self.attention_query_block < 0:
      raise ValueError(f"GemmaConfig.attention_query_block={self.attention_query_block} must be >= 0")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"GemmaConfig.remat={self.remat!r}; use none|full|dots")
    if self.mlp_activation not in ("gelu_tanh", "silu"):
      raise ValueError(f"GemmaConfig.mlp_activation={self.mlp_activation!r}; use gelu_tanh|silu")
    if self.llama3_rope is not None and (len(self.llama3_rope) != 4 or self.llama3_rope[2] <= self.llama3_rope[1]):
      raise ValueError(f"GemmaConfig.llama3_rope={self.llama3_rope}: (factor, low_freq_factor, high_freq_factor > "
                       "low_freq_factor, original_max_position_embeddings)")

  @property
  def num_layers(self) -> int:
    return len(self.layer_types)

  def layer_period(self) -> int:
    """The shortest p with layer_types[i] == layer_types[i % p] for every layer (Gemma 3: 6, Gemma 2: 2)."""
    types = self.layer_types
    return next(p for p in range(1, len(types) + 1)
                if all(t == types[i % p] for i, t in enumerate(types)))

  def scan_layout(self) -> tuple[tuple[LayerType, ...], int]:
    """(the scanned period's layer types, how many times it repeats); ((), 0) without scan_layers.

    Layers past repeats * len(period) (62 = 10 x 6 + 2 for Gemma 3 27B) run unscanned after it.
    """
    if not self.scan_layers:
      return (), 0
    period = self.layer_period()
    return self.layer_types[:period], self.num_layers // period

  def replace(self, **changes) -> "GemmaConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count (a tied embedding counted once)."""
    d, h = self.embed_dim, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    mlp = 3 * d * self.mlp_dim
    norms = (4 if self.post_norms else 2) * d + (2 * h if self.use_qk_norm else 0)
    embeddings = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return embeddings + self.num_layers * (attn + mlp + norms) + d

  def forward_flops(self, seq_len: int, logits_positions: int | None = None) -> float:
    """Useful matmul FLOPs of one causal forward pass over `seq_len` tokens.

    Attention counts only the keys each query may see (causal, windowed), not
    the masked work. Logits are counted at `logits_positions` (default: all).
    """
    d, h, l = self.embed_dim, self.head_dim, seq_len
    proj = 2 * d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    mlp = 2 * 3 * d * self.mlp_dim
    keys_global = l * (l + 1) / 2
    w = min(self.sliding_window, l)
    keys_local = w * (w + 1) / 2 + (l - w) * w
    attn = sum(4 * self.num_heads * h * (keys_global if t == "global" else keys_local)
               for t in self.layer_types)
    positions = l if logits_positions is None else logits_positions
    return l * self.num_layers * (proj + mlp) + attn + positions * 2 * d * self.vocab_size


def gemma3_layer_types(num_layers: int) -> tuple[LayerType, ...]:
  """Gemma 3: five local layers, then one global, repeated."""
  return tuple("global" if (i + 1) % 6 == 0 else "local" for i in range(num_layers))


def gemma2_layer_types(num_layers: int) -> tuple[LayerType, ...]:
  """Gemma 2: local and global layers alternate, starting local."""
  return tuple("local" if i % 2 == 0 else "global" for i in range(num_layers))


def _gemma3(vocab, d, mlp, layers, heads, kv, head_dim, window, qpas, scale=1.0):
  return GemmaConfig(
      vocab_size=vocab, embed_dim=d, mlp_dim=mlp, num_heads=heads,
      num_kv_heads=kv, head_dim=head_dim,
      layer_types=gemma3_layer_types(layers), sliding_window=window,
      query_pre_attn_scalar=qpas, use_qk_norm=True,
      local_rope_base=10_000.0, global_rope_base=1_000_000.0,
      global_rope_scale=scale)


def _gemma2(d, mlp, layers, heads, kv, head_dim, qpas):
  return GemmaConfig(
      vocab_size=256_000, embed_dim=d, mlp_dim=mlp, num_heads=heads,
      num_kv_heads=kv, head_dim=head_dim,
      layer_types=gemma2_layer_types(layers), sliding_window=4096,
      query_pre_attn_scalar=qpas, use_qk_norm=False,
      attn_logit_softcap=50.0, final_logit_softcap=30.0)


def _no_window(layers: int) -> dict:
  """Every layer attends globally (Qwen3 and Llama 3 have no sliding window)."""
  return dict(layer_types=("global",) * layers, sliding_window=1 << 30)


def _qwen3(vocab, d, mlp, layers, heads, kv, tied, head_dim=128):
  return GemmaConfig(
      vocab_size=vocab, embed_dim=d, mlp_dim=mlp, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
      query_pre_attn_scalar=float(head_dim), use_qk_norm=True, global_rope_base=1_000_000.0,
      local_rope_base=1_000_000.0, norm_offset=0.0, post_norms=False, mlp_activation="silu",
      scale_embeddings=False, tie_embeddings=tied, **_no_window(layers))


def _llama3(vocab, d, mlp, layers, heads, kv, tied, rope=(8.0, 1.0, 4.0, 8192), head_dim=128):
  """Llama 3.1 and 3.2 (rope: 3.1 scales by 8, 3.2 by 32)."""
  return GemmaConfig(
      vocab_size=vocab, embed_dim=d, mlp_dim=mlp, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
      query_pre_attn_scalar=float(head_dim), use_qk_norm=False, global_rope_base=500_000.0,
      local_rope_base=500_000.0, llama3_rope=rope, rms_norm_eps=1e-5, norm_offset=0.0, post_norms=False,
      mlp_activation="silu", scale_embeddings=False, tie_embeddings=tied, **_no_window(layers))


NAMED_CONFIGS: dict[str, GemmaConfig] = {
    # A few hundred thousand parameters; both layer kinds, a short window so
    # that test sequences run past it.
    "tiny": GemmaConfig(
        vocab_size=512, embed_dim=64, mlp_dim=128, num_heads=4,
        num_kv_heads=2, head_dim=16,
        layer_types=("local", "global", "local", "global"),
        sliding_window=8, query_pre_attn_scalar=16.0, use_qk_norm=True,
        local_rope_base=10_000.0, global_rope_base=1_000_000.0),
    "tiny_gemma2": GemmaConfig(
        vocab_size=512, embed_dim=64, mlp_dim=128, num_heads=4,
        num_kv_heads=2, head_dim=16,
        layer_types=("local", "global", "local", "global"),
        sliding_window=8, query_pre_attn_scalar=16.0, use_qk_norm=False,
        attn_logit_softcap=50.0, final_logit_softcap=30.0),
    # About 2.4M parameters: the policy the miniature reproduction trains from
    # scratch with its own 1,024-piece vocabulary (experiments/miniature).
    "tiny_2m": GemmaConfig(
        vocab_size=1024, embed_dim=192, mlp_dim=768, num_heads=4,
        num_kv_heads=2, head_dim=48,
        layer_types=("local", "global", "local", "global"),
        sliding_window=256, query_pre_attn_scalar=48.0, use_qk_norm=True,
        local_rope_base=10_000.0, global_rope_base=1_000_000.0),
    "gemma3_270m": _gemma3(262_144, 640, 2048, 18, 4, 1, 256, 512, 256),
    "gemma3_1b": _gemma3(262_144, 1152, 6912, 26, 4, 1, 256, 512, 256),
    "gemma3_4b": _gemma3(262_208, 2560, 10240, 34, 8, 4, 256, 1024, 256, 8.0),
    "gemma3_12b": _gemma3(262_208, 3840, 15360, 48, 16, 8, 256, 1024, 256, 8.0),
    "gemma3_27b": _gemma3(262_208, 5376, 21504, 62, 32, 16, 128, 1024, 168, 8.0),
    "gemma2_2b": _gemma2(2304, 9216, 26, 8, 4, 256, 256),
    "gemma2_9b": _gemma2(3584, 14336, 42, 16, 8, 256, 256),
    "gemma2_27b": _gemma2(4608, 36864, 46, 32, 16, 128, 144),
    # Qwen3 dense and Llama 3.x, from their config.json files.
    "tiny_qwen3": _qwen3(512, 64, 128, 4, 4, 2, tied=True, head_dim=16),
    "tiny_llama3": _llama3(512, 64, 128, 4, 4, 2, tied=False, rope=(8.0, 1.0, 4.0, 64), head_dim=16),
    "qwen3_0_6b": _qwen3(151_936, 1024, 3072, 28, 16, 8, tied=True),
    "qwen3_1_7b": _qwen3(151_936, 2048, 6144, 28, 16, 8, tied=True),
    "qwen3_4b": _qwen3(151_936, 2560, 9728, 36, 32, 8, tied=True),
    "qwen3_8b": _qwen3(151_936, 4096, 12288, 36, 32, 8, tied=False),
    "qwen3_14b": _qwen3(151_936, 5120, 17408, 40, 40, 8, tied=False),
    "qwen3_32b": _qwen3(151_936, 5120, 25600, 64, 64, 8, tied=False),
    "llama3_2_1b": _llama3(128_256, 2048, 8192, 16, 32, 8, tied=True, rope=(32.0, 1.0, 4.0, 8192), head_dim=64),
    "llama3_2_3b": _llama3(128_256, 3072, 8192, 28, 24, 8, tied=True, rope=(32.0, 1.0, 4.0, 8192)),
    "llama3_1_8b": _llama3(128_256, 4096, 14336, 32, 32, 8, tied=False),
    "llama3_1_70b": _llama3(128_256, 8192, 28672, 80, 64, 8, tied=False),
}


@gin.configurable
def model_config(name: str = "tiny", **overrides) -> GemmaConfig:
  """A named config with field overrides (`dtype`, `remat`, ...); gin's entry point."""
  if name not in NAMED_CONFIGS:
    raise ValueError(f"model_config(name={name!r}): unknown; known: {sorted(NAMED_CONFIGS)}")
  return NAMED_CONFIGS[name].replace(**overrides)
