"""Loads Gemma 2 / Gemma 3 GGUF files (llama.cpp format) with the `gguf` package.

Every tensor is dequantized to fp32 by `gguf.quants.dequantize` (all of
llama.cpp's block formats: Q4_K, Q5_0, Q6_K, Q8_0, ...). GGUF stores Gemma's
norm weights as (1 + w); we keep w. The reader parses a binary header and
raw blocks: nothing in the file is executed.
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
from swirl_jax.models.transformer import Transformer

# GGUF block tensor names -> HF names (the importer in params.py takes it from there).
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")


def _field(reader: gguf.GGUFReader, key: str, source: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is not None:
      return default
    raise ValueError(f"{source}: metadata field {key!r} is missing")
  return field.contents()


def _layer_types(reader: gguf.GGUFReader, arch: str, num_layers: int, source: str):
  """Per-layer local/global from `attention.sliding_window_pattern` or the arch default.

  The field is either a period n (every n-th layer global) or one bool per
  layer (true = sliding window).
  """
  pattern = _field(reader, f"{arch}.attention.sliding_window_pattern", source, default=False)
  if pattern is False:
    return gemma3_layer_types(num_layers) if arch == "gemma3" else gemma2_layer_types(num_layers)
  if isinstance(pattern, list):
    if len(pattern) != num_layers:
      raise ValueError(f"{source}: {arch}.attention.sliding_window_pattern has {len(pattern)} "
                       f"entries for {num_layers} layers")
    return tuple("local" if sliding else "global" for sliding in pattern)
  period = int(pattern)
  return tuple("global" if period and (i + 1) % period == 0 else "local" for i in range(num_layers))


def config_from_gguf(reader: gguf.GGUFReader, source: str, **overrides) -> GemmaConfig:
  """Our config from GGUF metadata (architecture gemma2 or gemma3)."""
  arch = _field(reader, "general.architecture", source)
  if arch not in ("gemma2", "gemma3"):
    raise ValueError(f"{source}: general.architecture={arch!r}; expected gemma2 or gemma3")
  get = lambda key, default=None: _field(reader, f"{arch}.{key}", source, default)
  num_layers = int(get("block_count"))
  heads = int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", int(get("embedding_length")) // heads))
  vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  # llama.cpp, like the reference, scales queries by embed_dim / heads for the
  # 27B models (62 layers in Gemma 3, 46 in Gemma 2) and by head_dim otherwise.
  is_27b = num_layers == (62 if arch == "gemma3" else 46)
  query_pre_attn_scalar = float(int(get("embedding_length")) // heads if is_27b else head_dim)
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
    if _field(reader, "gemma3.rope.scaling.type", source, "none") == "linear":
      scale = float(_field(reader, "gemma3.rope.scaling.factor", source))
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
  """Every tensor dequantized to fp32, under its HF name."""
  tensors = {}
  for tensor in tqdm(reader.tensors, desc=f"dequantizing {os.path.basename(source)}",
                     unit="tensor", leave=False, disable=None):
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    name = tensor.name
    if name == "token_embd.weight":
      tensors["model.embed_tokens.weight"] = array
    elif name == "output_norm.weight":
      tensors["model.norm.weight"] = array - 1.0
    elif name == "output.weight":
      tensors["lm_head.weight"] = array
    else:
      match = _BLOCK.match(name)
      if not match or match.group(2) not in BLOCK_NAMES:
        raise ValueError(f"{source}: tensor {name!r} is not part of a Gemma text decoder")
      layer, kind = match.groups()
      if kind.endswith("norm"):
        array = array - 1.0
      tensors[f"model.layers.{layer}.{BLOCK_NAMES[kind]}.weight"] = array
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
