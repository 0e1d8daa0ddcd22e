"""Writes a model as an HF Gemma checkpoint (config.json + safetensors + tokenizer.model).

The inverse of `safetensors_import`: users serve and evaluate trained policies with other tools
(vLLM, transformers), which read this layout. Gemma 3 text models become `Gemma3ForCausalLM`
(`model_type` gemma3_text), Gemma 2 models `Gemma2ForCausalLM`; embeddings are tied.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from swirl_jax import atomic_io
from swirl_jax.checkpoints.params import layer_rules, unstack_scanned_layers
from swirl_jax.checkpoints.tokenizer import SentencePieceVocabulary
from swirl_jax.models.config import GemmaConfig
from swirl_jax.models.transformer import Transformer

# The layout change from ours to HF's where there is one (the names and paths are the importer's,
# `params.layer_rules`): projections flatten their heads and transpose; norms are as they are.
_TO_HF = {
    ("attn", "q"): lambda w: w.reshape(w.shape[0], -1).T,
    ("attn", "k"): lambda w: w.reshape(w.shape[0], -1).T,
    ("attn", "v"): lambda w: w.reshape(w.shape[0], -1).T,
    ("attn", "o"): lambda w: w.reshape(-1, w.shape[-1]).T,
    ("mlp", "gate"): np.transpose, ("mlp", "up"): np.transpose, ("mlp", "down"): np.transpose,
}
DTYPES = ("float32", "bfloat16")


def hf_config(config: GemmaConfig, dtype: str = "float32", bos_id: int | None = None,
              eos_id: int | Sequence[int] | None = None, pad_id: int | None = None) -> dict[str, Any]:
  """config.json for transformers: the v5 `rope_parameters` layout, and the older one (`rope_theta`,
  `rope_local_base_freq`, `rope_scaling`) that other readers take. `eos_id` may list several ids (the
  turn end among them)."""
  gemma3 = config.use_qk_norm
  full = {"rope_type": "default", "rope_theta": config.global_rope_base}
  if config.global_rope_scale != 1.0:
    full = {"rope_type": "linear", "factor": config.global_rope_scale, "rope_theta": config.global_rope_base}
  out = {
      "architectures": ["Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM"],
      "model_type": "gemma3_text" if gemma3 else "gemma2",
      "vocab_size": config.vocab_size, "hidden_size": config.embed_dim, "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
      "layer_types": ["full_attention" if t == "global" else "sliding_attention" for t in config.layer_types],
      "sliding_window": config.sliding_window, "query_pre_attn_scalar": _number(config.query_pre_attn_scalar),
      "attn_logit_softcapping": config.attn_logit_softcap, "final_logit_softcapping": config.final_logit_softcap,
      "rms_norm_eps": config.rms_norm_eps, "hidden_activation": "gelu_pytorch_tanh",
      "tie_word_embeddings": True, "dtype": dtype, "torch_dtype": dtype,
      "rope_parameters": ({"full_attention": full, "sliding_attention": {
          "rope_type": "default", "rope_theta": config.local_rope_base}} if gemma3 else full),
      "rope_theta": config.global_rope_base,
  }
  if gemma3:
    out["rope_local_base_freq"] = config.local_rope_base
  # The older layout: the global layers' RoPE scaling (Gemma 3 4B, 12B, 27B: linear, 8).
  out["rope_scaling"] = ({"rope_type": "linear", "factor": config.global_rope_scale}
                         if config.global_rope_scale != 1.0 else None)
  for name, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id)):
    if value is not None:
      out[name] = [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)
  return out


def turn_end_ids(vocab: SentencePieceVocabulary) -> list[int]:
  """EOS and, where the vocabulary has it as one piece, <end_of_turn>: where a policy's turn ends."""
  end_of_turn = list(vocab.encode("<end_of_turn>"))
  return [int(vocab.eos_id)] + ([int(end_of_turn[0])] if len(end_of_turn) == 1 else [])


def generation_config(vocab: SentencePieceVocabulary) -> dict[str, Any]:
  """generation_config.json: transformers and vLLM stop at any of these ids."""
  return {"bos_token_id": int(vocab.bos_id), "eos_token_id": turn_end_ids(vocab), "pad_token_id": int(vocab.pad_id)}


def _number(x: float) -> int | float:
  """An integral value as an int (transformers' config classes check the type)."""
  return int(x) if float(x).is_integer() else x


def _host_array(x: jax.Array) -> np.ndarray:
  """The whole array on this host (gathered from every process where it spans several)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
  """Our variables under HF's names and layouts, as float32 host arrays."""
  config = model.config
  flat = {path: _host_array(variable.get_value()) for path, variable in nnx.to_flat_state(nnx.state(model))}
  flat = unstack_scanned_layers(flat, config)
  out = {"model.embed_tokens.weight": flat.pop(("embedder", "table")),
         "model.norm.weight": flat.pop(("final_norm", "scale"))}
  names = [(pattern.replace("\\.", "."), path) for pattern, path, _ in layer_rules(config)]
  for layer in range(config.num_layers):
    for name, path in names:
      key = ("blocks", layer) + path
      if key in flat:
        out[f"model.layers.{layer}.{name}"] = _TO_HF.get(path, lambda w: w)(flat.pop(key))
  if flat:
    raise ValueError(f"hf_tensors: variables with no HF name: {['/'.join(map(str, p)) for p in list(flat)[:4]]}")
  return {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in out.items()}


def export_hf(model: Transformer, directory: str, vocab: SentencePieceVocabulary | None = None,
              dtype: str = "float32") -> str:
  """Writes `directory`/config.json, model.safetensors and (with `vocab`) tokenizer.model; returns the
  directory. Collective on a multi-host mesh (every process calls it); process 0 writes."""
  if dtype not in DTYPES:
    raise ValueError(f"export_hf(dtype={dtype!r}): use one of {DTYPES}")
  tensors = hf_tensors(model)
  if jax.process_index() != 0:
    return directory
  if dtype == "bfloat16":
    import ml_dtypes  # a jax dependency: numpy's bfloat16
    tensors = {name: array.astype(ml_dtypes.bfloat16) for name, array in tensors.items()}
  os.makedirs(directory, exist_ok=True)
  with atomic_io.atomic_path(os.path.join(directory, "model.safetensors")) as tmp:
    save_file(tensors, tmp, metadata={"format": "pt"})
  ids = {} if vocab is None else {"bos_id": vocab.bos_id, "eos_id": turn_end_ids(vocab), "pad_id": vocab.pad_id}
  with atomic_io.atomic_open(os.path.join(directory, "config.json")) as f:
    json.dump(hf_config(model.config, dtype, **ids), f, indent=1)
  if vocab is not None:
    atomic_io.write_bytes(os.path.join(directory, "tokenizer.model"), vocab.sp_model)
    with atomic_io.atomic_open(os.path.join(directory, "generation_config.json")) as f:
      json.dump(generation_config(vocab), f, indent=1)
  return directory
