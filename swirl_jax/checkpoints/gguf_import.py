"""Loads Gemma 2, Gemma 3, Qwen3 and Llama 3 GGUF files (llama.cpp format) with the `gguf` package.

Every tensor is dequantized to fp32 by `gguf.quants.dequantize` (all of
llama.cpp's block formats: Q4_K, Q5_0, Q6_K, Q8_0, ...). The reader parses a binary header and
raw blocks: nothing in the file is executed. Where llama.cpp's layout differs from HF's, we undo it:
- Gemma's norm weights are stored as (1 + w); we keep w.
- Llama's q and k projections are stored with each head's rows interleaved (llama.cpp rotates
  adjacent pairs; HF and we rotate the first half of a head against the second), so we put them back.
- Llama 3's RoPE scaling is stored as its per-frequency divisors (the tensor `rope_freqs.weight`), not
  as its four settings; we recover the settings and check that they give those divisors.
"""

from __future__ import annotations

import os
import re

import gguf
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from swirl_jax import partitioning
from swirl_jax.checkpoints.params import hf_to_flat, model_from_flat
from swirl_jax.models.config import GemmaConfig, gemma2_layer_types, gemma3_layer_types
from swirl_jax.models.layers import llama3_frequencies
from swirl_jax.models.transformer import Transformer

ARCHITECTURES = ("gemma2", "gemma3", "qwen3", "llama")

# GGUF block tensor names -> HF names (the importer in params.py takes it from there), for Gemma.
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# The same for Qwen3 and Llama: llama.cpp's ffn_norm is their one norm before the MLP.
DENSE_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
# Llama 3.x's own low and high frequency factors (every released model): the divisors in the file fix
# only where the blend starts and ends, and these two fix the rest.
_LLAMA3_FREQ_FACTORS = (1.0, 4.0)


def block_names(arch: str) -> dict[str, str]:
  """GGUF block tensor kinds -> HF names for `arch`."""
  return BLOCK_NAMES if arch.startswith("gemma") else DENSE_BLOCK_NAMES


def llama_unpermutation(rows_OxI: np.ndarray, heads: int) -> np.ndarray:
  """HF's layout of a Llama q or k projection from llama.cpp's: in each head, rows 2i and 2i + 1
  (rotated together by llama.cpp) become rows i and i + H/2 (rotated together by HF and us)."""
  out, rest = rows_OxI.shape[0], rows_OxI.shape[1:]
  return rows_OxI.reshape(heads, out // heads // 2, 2, *rest).swapaxes(1, 2).reshape(rows_OxI.shape)


def llama3_rope_divisors(base: float, head_dim: int, rope: tuple[float, float, float, int]) -> np.ndarray:
  """What llama.cpp stores as `rope_freqs.weight`: each frequency's divisor under Llama 3's scaling."""
  inv_freq_K = 1.0 / (base ** (np.arange(head_dim // 2, dtype=np.float64) * 2 / head_dim))
  return inv_freq_K / np.asarray(llama3_frequencies(inv_freq_K, *rope), np.float64)


def llama3_rope_from_divisors(divisors_K: np.ndarray, base: float, head_dim: int, source: str
                              ) -> tuple[float, float, float, int] | None:
  """Llama 3's (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) that give
  the file's per-frequency divisors (None where every divisor is 1)."""
  divisors_K = np.asarray(divisors_K, np.float64)
  if divisors_K.shape != (head_dim // 2,):
    raise ValueError(f"{source}: rope_freqs.weight has shape {divisors_K.shape}; expected ({head_dim // 2},)")
  if np.allclose(divisors_K, 1.0, rtol=0, atol=1e-6):
    return None
  factor = float(divisors_K.max())
  low, high = _LLAMA3_FREQ_FACTORS
  wavelength_K = 2 * np.pi * base ** (np.arange(head_dim // 2) * 2 / head_dim)
  kept, divided = np.isclose(divisors_K, 1.0, atol=1e-6), np.isclose(divisors_K, factor, rtol=1e-6)
  blended = ~kept & ~divided
  if blended.any():  # 1 / divisor = (1 - b) / factor + b, b = (original / wavelength - low) / (high - low)
    blend = (1.0 / divisors_K[blended] - 1.0 / factor) / (1.0 - 1.0 / factor)
    original = float(np.median((blend * (high - low) + low) * wavelength_K[blended]))
  else:  # any original between the last kept and the first divided wavelength gives these divisors
    floor = high * wavelength_K[kept].max() if kept.any() else 0.0
    ceiling = low * wavelength_K[divided].min() if divided.any() else np.inf
    original = 8192.0 if floor < 8192.0 < ceiling else np.floor(floor) + 1
  rope = (factor, low, high, int(round(original)))
  if not np.allclose(llama3_rope_divisors(base, head_dim, rope), divisors_K, rtol=1e-4, atol=1e-6):
    raise ValueError(f"{source}: rope_freqs.weight is not Llama 3's RoPE scaling with low and high frequency "
                     f"factors {low} and {high} (the closest, {rope}, gives other divisors)")
  return rope


REQUIRED = object()  # `metadata_field`'s default: a missing field is an error


def metadata_field(reader: gguf.GGUFReader, key: str, source: str, default=REQUIRED):
  """A metadata field's value; `default` where it is missing, or an error naming the file and field."""
  field = reader.fields.get(key)
  if field is None:
    if default is REQUIRED:
      raise ValueError(f"{source}: metadata field {key!r} is missing")
    return default
  return field.contents()


def gemma_query_scale(arch: str, num_layers: int, embed_dim: int, num_heads: int, head_dim: int) -> float:
  """llama.cpp's (and the reference's) query scale for Gemma: embed_dim / heads for the 27B models
  (62 layers in Gemma 3, 46 in Gemma 2), head_dim otherwise. The file does not store it."""
  is_27b = num_layers == (62 if arch == "gemma3" else 46)
  return float(embed_dim // num_heads if is_27b else head_dim)


def _layer_types(reader: gguf.GGUFReader, arch: str, num_layers: int, source: str):
  """Per-layer local/global from `attention.sliding_window_pattern` or the arch default.

  The field is either a period n (every n-th layer global) or one bool per
  layer (true = sliding window).
  """
  pattern = metadata_field(reader, f"{arch}.attention.sliding_window_pattern", source, default=False)
  if pattern is False:
    return gemma3_layer_types(num_layers) if arch == "gemma3" else gemma2_layer_types(num_layers)
  if isinstance(pattern, list):
    if len(pattern) != num_layers:
      raise ValueError(f"{source}: {arch}.attention.sliding_window_pattern has {len(pattern)} "
                       f"entries for {num_layers} layers")
    return tuple("local" if sliding else "global" for sliding in pattern)
  period = int(pattern)
  return tuple("global" if period and (i + 1) % period == 0 else "local" for i in range(num_layers))


def _tensor(reader: gguf.GGUFReader, name: str) -> gguf.ReaderTensor | None:
  return next((t for t in reader.tensors if t.name == name), None)


def _dense_config(reader: gguf.GGUFReader, arch: str, source: str) -> dict:
  """The fields of a Qwen3 (arch qwen3) or Llama 3 (arch llama) config from GGUF metadata."""
  get = lambda key, default=REQUIRED: metadata_field(reader, f"{arch}.{key}", source, default)
  d, heads = int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", d // heads))
  if int(get("attention.value_length", head_dim)) != head_dim:
    raise ValueError(f"{source}: {arch}.attention.value_length differs from key_length ({head_dim})")
  if metadata_field(reader, f"{arch}.rope.scaling.type", source, "none") not in ("none", "llama3"):
    raise ValueError(f"{source}: {arch}.rope.scaling.type="
                     f"{metadata_field(reader, f'{arch}.rope.scaling.type', source)!r}; swirl_jax loads {arch} "
                     "without RoPE scaling" + (" or with Llama 3's" if arch == "llama" else ""))
  embedding = _tensor(reader, "token_embd.weight")
  if embedding is None:
    raise ValueError(f"{source}: tensor 'token_embd.weight' is missing")
  base = float(get("rope.freq_base", 10_000.0))
  divisors = _tensor(reader, "rope_freqs.weight")
  rope = None
  if divisors is not None:
    if arch != "llama":
      raise ValueError(f"{source}: tensor 'rope_freqs.weight' in a {arch} file; swirl_jax reads it for llama only")
    rope = llama3_rope_from_divisors(gguf.quants.dequantize(divisors.data, divisors.tensor_type).ravel(),
                                     base, head_dim, source)
  return dict(
      vocab_size=int(embedding.shape[-1]), embed_dim=d, mlp_dim=int(get("feed_forward_length")),
      num_heads=heads, num_kv_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim,
      layer_types=("global",) * int(get("block_count")), sliding_window=1 << 30,
      query_pre_attn_scalar=float(head_dim), use_qk_norm=_tensor(reader, "blk.0.attn_q_norm.weight") is not None,
      rms_norm_eps=float(f"{get('attention.layer_norm_rms_epsilon'):.6g}"), global_rope_base=base,
      local_rope_base=base, llama3_rope=rope, norm_offset=0.0, post_norms=False, mlp_activation="silu",
      scale_embeddings=False, tie_embeddings=_tensor(reader, "output.weight") is None)


def config_from_gguf(reader: gguf.GGUFReader, source: str, **overrides) -> GemmaConfig:
  """Our config from GGUF metadata (architecture gemma2, gemma3, qwen3 or llama)."""
  arch = metadata_field(reader, "general.architecture", source)
  if arch not in ARCHITECTURES:
    raise ValueError(f"{source}: general.architecture={arch!r}; swirl_jax loads {', '.join(ARCHITECTURES)}")
  if arch in ("qwen3", "llama"):
    return GemmaConfig(**{**_dense_config(reader, arch, source), **overrides})
  get = lambda key, default=REQUIRED: metadata_field(reader, f"{arch}.{key}", source, default)
  num_layers = int(get("block_count"))
  heads = int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", int(get("embedding_length")) // heads))
  vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  query_pre_attn_scalar = gemma_query_scale(arch, num_layers, int(get("embedding_length")), heads, head_dim)
  fields = dict(
      vocab_size=vocab, embed_dim=int(get("embedding_length")),
      mlp_dim=int(get("feed_forward_length")), num_heads=heads,
      num_kv_heads=int(get("attention.head_count_kv")), head_dim=head_dim,
      sliding_window=int(get("attention.sliding_window")),
      # stored as float32: round 9.99999997e-07 back to the 1e-6 it was written from
      rms_norm_eps=float(f"{get('attention.layer_norm_rms_epsilon'):.6g}"))
  if arch == "gemma3":
    # llama.cpp fixes the local RoPE base at 10k; the file has the global one.
    scale = 1.0
    if metadata_field(reader, "gemma3.rope.scaling.type", source, "none") == "linear":
      scale = float(metadata_field(reader, "gemma3.rope.scaling.factor", source))
    fields.update(
        layer_types=_layer_types(reader, arch, num_layers, source), use_qk_norm=True,
        query_pre_attn_scalar=query_pre_attn_scalar,
        local_rope_base=10_000.0, global_rope_base=float(get("rope.freq_base", 1_000_000.0)),
        global_rope_scale=scale)
  else:
    fields.update(
        layer_types=_layer_types(reader, arch, num_layers, source), use_qk_norm=False,
        query_pre_attn_scalar=query_pre_attn_scalar,
        attn_logit_softcap=float(get("attn_logit_softcapping", 50.0)),
        final_logit_softcap=float(get("final_logit_softcapping", 30.0)))
  fields.update(overrides)
  return GemmaConfig(**fields)


def read_gguf_tensors(reader: gguf.GGUFReader, source: str) -> dict[str, np.ndarray]:
  """Every tensor dequantized to fp32, under its HF name and in HF's layout."""
  arch = metadata_field(reader, "general.architecture", source)
  names = block_names(arch)
  norm_offset = 1.0 if arch.startswith("gemma") else 0.0
  heads = {"attn_q": int(metadata_field(reader, f"{arch}.attention.head_count", source))}
  heads["attn_k"] = int(metadata_field(reader, f"{arch}.attention.head_count_kv", source, heads["attn_q"]))
  tensors = {}
  for tensor in tqdm(reader.tensors, desc=f"dequantizing {os.path.basename(source)}",
                     unit="tensor", leave=False, disable=None):
    name = tensor.name
    if name == "rope_freqs.weight":  # read into the config (config_from_gguf)
      continue
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    if name == "token_embd.weight":
      tensors["model.embed_tokens.weight"] = array
    elif name == "output_norm.weight":
      tensors["model.norm.weight"] = array - norm_offset
    elif name == "output.weight":
      tensors["lm_head.weight"] = array
    else:
      match = _BLOCK.match(name)
      if not match or match.group(2) not in names:
        raise ValueError(f"{source}: tensor {name!r} is not part of a {arch} text decoder")
      layer, kind = match.groups()
      if kind.endswith("norm"):
        array = array - norm_offset
      if arch == "llama" and kind in heads:
        if array.shape[0] % (2 * heads[kind]):
          raise ValueError(f"{source}: tensor {name!r} has {array.shape[0]} rows, not pairs for each of "
                           f"{heads[kind]} heads")
        array = llama_unpermutation(array, heads[kind])
      tensors[f"model.layers.{layer}.{names[kind]}.weight"] = array
  return tensors


def load_gguf(path: str, *, mesh: Mesh | None = None,
              rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
              reader: gguf.GGUFReader | None = None, **config_overrides) -> Transformer:
  """A Transformer from a GGUF file; `config_overrides` set dtypes, remat.

  Pass `reader` to reuse a parsed file (parsing 262k vocabulary entries takes
  seconds).
  """
  reader = reader or gguf.GGUFReader(path)
  config = config_from_gguf(reader, path, **config_overrides)
  flat = hf_to_flat(read_gguf_tensors(reader, path), config, source=path)
  return model_from_flat(config, flat, source=path, mesh=mesh, rules=rules)
