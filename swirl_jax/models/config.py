"""Gemma-family decoder configs: one dataclass and the named presets.

Gemma 2 and Gemma 3 text models differ only in numbers and switches (layer
pattern, QK-norm, soft-capping, RoPE bases), so one config covers both.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import gin

LayerType = Literal["local", "global"]
RematPolicy = Literal["none", "full", "dots"]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Shape and switches of a Gemma 2 / Gemma 3 text decoder."""

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
    """Parameter count (embedding counted once: it is tied)."""
    d, h = self.embed_dim, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    mlp = 3 * d * self.mlp_dim
    norms = 4 * d + (2 * h if self.use_qk_norm else 0)
    return self.vocab_size * d + self.num_layers * (attn + mlp + norms) + d

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
}


@gin.configurable
def model_config(name: str = "tiny", **overrides) -> GemmaConfig:
  """A named config with field overrides (`dtype`, `remat`, ...); gin's entry point."""
  if name not in NAMED_CONFIGS:
    raise ValueError(f"model_config(name={name!r}): unknown; known: {sorted(NAMED_CONFIGS)}")
  return NAMED_CONFIGS[name].replace(**overrides)
