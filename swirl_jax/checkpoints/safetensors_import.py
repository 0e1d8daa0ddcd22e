"""Loads HF-format checkpoints (config.json + safetensors): Gemma 2, Gemma 3, Qwen3, Llama 3.

safetensors holds raw arrays and a JSON header only, so loading runs no code
from the file. bf16 tensors are read through the flax (jax) framework of
safetensors, which numpy alone cannot represent.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open

from swirl_jax import partitioning
from swirl_jax.checkpoints.params import hf_to_flat, model_from_flat
from swirl_jax.models.config import GemmaConfig, gemma2_layer_types, gemma3_layer_types
from swirl_jax.models.transformer import Transformer


def _rope_settings(hf: dict[str, Any]) -> dict[str, float]:
  """RoPE bases and global scaling from either the v5 or the older config layout."""
  params = hf.get("rope_parameters")
  if isinstance(params, dict) and "full_attention" in params:
    full, local = params["full_attention"], params.get("sliding_attention", {})
    scale = full.get("factor", 1.0) if full.get("rope_type", "default") == "linear" else 1.0
    return dict(global_rope_base=float(full["rope_theta"]),
                local_rope_base=float(local.get("rope_theta", full["rope_theta"])),
                global_rope_scale=float(scale))
  if isinstance(params, dict) and "rope_theta" in params:
    theta = float(params["rope_theta"])
    scale = params.get("factor", 1.0) if params.get("rope_type", "default") == "linear" else 1.0
    return dict(global_rope_base=theta, local_rope_base=float(hf.get("rope_local_base_freq", theta)),
                global_rope_scale=float(scale))
  theta = float(hf.get("rope_theta", 10_000.0))
  scaling = hf.get("rope_scaling") or {}
  scale = scaling.get("factor", 1.0) if scaling.get("rope_type", scaling.get("type")) == "linear" else 1.0
  return dict(global_rope_base=theta, local_rope_base=float(hf.get("rope_local_base_freq", theta)),
              global_rope_scale=float(scale))


MODEL_TYPES = ("gemma2", "gemma3_text", "gemma3", "qwen3", "llama")


def _llama3_rope(hf: dict[str, Any], source: str, model_type: str) -> tuple[float, float, float, int] | None:
  """Llama 3's RoPE scaling from `rope_parameters` (transformers 5) or `rope_scaling` (older); any
  other scaling (Qwen's YaRN) is refused, not dropped."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = params.get("rope_type", params.get("type", "default"))
  if kind in (None, "default"):
    return None
  allowed = ("default", "llama3") if model_type == "llama" else ("default",)
  if kind not in allowed:
    raise ValueError(f"{source}: rope type {kind!r}; swirl_jax loads {model_type} with rope type "
                     f"{' or '.join(map(repr, allowed))}")
  try:
    return (float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]))
  except KeyError as e:
    raise ValueError(f"{source}: rope field {e.args[0]!r} is missing") from None


def _dense_config(hf: dict[str, Any], source: str, model_type: str) -> dict[str, Any]:
  """The fields of a Qwen3 or Llama 3 config (every layer global, SiLU, plain norms)."""
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ValueError(f"{source}: {flag} is true; swirl_jax's Qwen3 and Llama decoders have no biases")
  if hf.get("use_sliding_window"):
    raise ValueError(f"{source}: use_sliding_window is true; swirl_jax loads Qwen3 with global attention only")
  heads, d = int(hf["num_attention_heads"]), int(hf["hidden_size"])
  head_dim = int(hf.get("head_dim") or d // heads)
  params = hf.get("rope_parameters") or {}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  return dict(
      vocab_size=int(hf["vocab_size"]), embed_dim=d, mlp_dim=int(hf["intermediate_size"]), num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads), head_dim=head_dim,
      layer_types=("global",) * int(hf["num_hidden_layers"]), sliding_window=1 << 30,
      query_pre_attn_scalar=float(head_dim), use_qk_norm=model_type == "qwen3",
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)), global_rope_base=theta, local_rope_base=theta,
      llama3_rope=_llama3_rope(hf, source, model_type), norm_offset=0.0,
      post_norms=False, mlp_activation="silu", scale_embeddings=False,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def config_from_hf(hf: dict[str, Any], source: str = "config.json", **overrides) -> GemmaConfig:
  """Our config from an HF `config.json` dict (gemma2, gemma3_text, gemma3, qwen3 or llama)."""
  if hf.get("model_type") == "gemma3" and "text_config" in hf:
    hf = {**hf["text_config"], "model_type": "gemma3_text"}
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type={model_type!r}; swirl_jax loads {', '.join(MODEL_TYPES)}")
  activation = hf.get("hidden_activation") or hf.get("hidden_act")
  expected = "silu" if model_type in ("qwen3", "llama") else "gelu_pytorch_tanh"
  if activation not in (None, expected):
    raise ValueError(f"{source}: hidden activation {activation!r}; swirl_jax's {model_type} MLP uses {expected!r}")
  if model_type in ("qwen3", "llama"):
    try:
      fields = _dense_config(hf, source, model_type)
    except KeyError as e:
      raise ValueError(f"{source}: field {e.args[0]!r} is missing") from None
    fields.update(overrides)
    return GemmaConfig(**fields)
  try:
    num_layers = int(hf["num_hidden_layers"])
    if "layer_types" in hf and hf["layer_types"]:
      layer_types = tuple("global" if t == "full_attention" else "local" for t in hf["layer_types"])
    elif model_type == "gemma2":
      layer_types = gemma2_layer_types(num_layers)
    else:
      layer_types = gemma3_layer_types(num_layers)
    fields = dict(
        vocab_size=int(hf["vocab_size"]), embed_dim=int(hf["hidden_size"]),
        mlp_dim=int(hf["intermediate_size"]), num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf["num_key_value_heads"]), head_dim=int(hf["head_dim"]),
        layer_types=layer_types, sliding_window=int(hf["sliding_window"]),
        query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]),
        use_qk_norm=model_type == "gemma3_text",
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        **_rope_settings(hf))
  except KeyError as e:
    raise ValueError(f"{source}: field {e.args[0]!r} is missing") from None
  if hf.get("tie_word_embeddings") is False:
    raise ValueError(f"{source}: tie_word_embeddings is false; swirl_jax's Gemma ties them")
  fields.update(overrides)
  return GemmaConfig(**fields)


def _safetensors_files(directory: str) -> list[str]:
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: field 'weight_map' is missing or not an object")
    return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
  single = os.path.join(directory, "model.safetensors")
  if not os.path.exists(single):
    raise FileNotFoundError(f"{directory}: neither model.safetensors nor model.safetensors.index.json")
  return [single]


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory as float32 numpy arrays."""
  tensors = {}
  for path in _safetensors_files(directory):
    with safe_open(path, framework="flax") as f:
      for name in f.keys():
        tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
  return tensors


def load_hf_checkpoint(directory: str, *, mesh: Mesh | None = None,
                       rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
                       **config_overrides) -> Transformer:
  """A Transformer from an HF Gemma directory; `config_overrides` set dtypes, remat."""
  config_path = os.path.join(directory, "config.json")
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path}: line {e.lineno}: {e.msg}") from None
  config = config_from_hf(hf, source=config_path, **config_overrides)
  flat = hf_to_flat(read_safetensors(directory), config, source=directory)
  return model_from_flat(config, flat, source=directory, mesh=mesh, rules=rules)
