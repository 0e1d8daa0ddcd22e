"""Writes a model as an HF checkpoint (config.json + safetensors + tokenizer.model).

The weights are written tensor by tensor with our own safetensors writer (the format is a JSON
header and raw bytes): the `safetensors` package writes a file from tensors all held at once, which
for Gemma 3 27B is 54 GB of host memory in bf16.

The inverse of `safetensors_import`: users serve and evaluate trained policies with other tools
(vLLM, transformers), which read this layout. Gemma 3 text models become `Gemma3ForCausalLM`
(`model_type` gemma3_text), Gemma 2 models `Gemma2ForCausalLM` (embeddings tied), Qwen3 models
`Qwen3ForCausalLM` and Llama 3 models `LlamaForCausalLM` (with `lm_head.weight` where untied).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import struct
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from swirl_jax import atomic_io
from swirl_jax.checkpoints import chat_formats
from swirl_jax.checkpoints.params import layer_rules
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
    ("mlp", "gate"): lambda w: w.T, ("mlp", "up"): lambda w: w.T, ("mlp", "down"): lambda w: w.T,
    ("lm_head",): lambda w: w.T,
}
DTYPES = ("float32", "bfloat16")


def hf_model_type(config: GemmaConfig) -> str:
  """The transformers model type a config is (gemma2, gemma3_text, qwen3, llama); a mix of the
  families' switches that none of them is, is refused (transformers would load another model)."""
  gemma = dict(norm_offset=1.0, post_norms=True, mlp_activation="gelu_tanh", scale_embeddings=True,
               tie_embeddings=True, llama3_rope=None)
  dense = dict(norm_offset=0.0, post_norms=False, mlp_activation="silu", scale_embeddings=False,
               attn_logit_softcap=None, final_logit_softcap=None, global_rope_scale=1.0,
               layer_types=("global",) * config.num_layers, query_pre_attn_scalar=float(config.head_dim))
  for family, switches in (("gemma", gemma), ("dense", dense)):
    if all(getattr(config, k) == v for k, v in switches.items()):
      if family == "gemma":
        return "gemma3_text" if config.use_qk_norm else "gemma2"
      if config.use_qk_norm:
        if config.llama3_rope is None:
          return "qwen3"
      else:
        return "llama"
  raise ValueError("export: the config's switches are none of Gemma 2, Gemma 3, Qwen3 and Llama 3 "
                   f"({ {k: getattr(config, k) for k in list(gemma) + ['use_qk_norm']} })")


def _dense_hf_config(config: GemmaConfig, model_type: str) -> dict[str, Any]:
  """config.json of a Qwen3 or Llama 3 model (both rope layouts, as for Gemma)."""
  rope = {"rope_type": "default", "rope_theta": config.global_rope_base}
  if config.llama3_rope is not None:
    factor, low, high, original = config.llama3_rope
    rope = {"rope_type": "llama3", "rope_theta": config.global_rope_base, "factor": factor,
            "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": original}
  out = {
      "architectures": ["Qwen3ForCausalLM" if model_type == "qwen3" else "LlamaForCausalLM"],
      "model_type": model_type, "vocab_size": config.vocab_size, "hidden_size": config.embed_dim,
      "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps, "hidden_act": "silu",
      "attention_bias": False, "tie_word_embeddings": config.tie_embeddings,
      # The context the family's released models declare (vLLM takes its length limit from here;
      # transformers' default would be 2,048 for Llama).
      "max_position_embeddings": 40_960 if model_type == "qwen3" else 131_072,
      "rope_parameters": rope, "rope_theta": config.global_rope_base,
      "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"} if config.llama3_rope else None,
  }
  if model_type == "qwen3":
    out["use_sliding_window"] = False
  else:
    out["mlp_bias"] = False
  return out


def hf_config(config: GemmaConfig, dtype: str = "float32", bos_id: int | None = None,
              eos_id: int | Sequence[int] | None = None, pad_id: int | None = None) -> dict[str, Any]:
  """config.json for transformers: the v5 `rope_parameters` layout, and the older one (`rope_theta`,
  `rope_local_base_freq`, `rope_scaling`) that other readers take. `eos_id` may list several ids (the
  turn end among them)."""
  model_type = hf_model_type(config)
  out = (_dense_hf_config(config, model_type) if model_type in ("qwen3", "llama") else _gemma_hf_config(config))
  out.update(dtype=dtype, torch_dtype=dtype)
  for name, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id)):
    if value is not None:
      out[name] = [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)
  return out


def _gemma_hf_config(config: GemmaConfig) -> dict[str, Any]:
  """config.json of a Gemma 2 or Gemma 3 text model (both rope layouts)."""
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
      "tie_word_embeddings": True,
      "rope_parameters": ({"full_attention": full, "sliding_attention": {
          "rope_type": "default", "rope_theta": config.local_rope_base}} if gemma3 else full),
      "rope_theta": config.global_rope_base,
  }
  if gemma3:
    out["rope_local_base_freq"] = config.local_rope_base
  # The older layout: the global layers' RoPE scaling (Gemma 3 4B, 12B, 27B: linear, 8).
  out["rope_scaling"] = ({"rope_type": "linear", "factor": config.global_rope_scale}
                         if config.global_rope_scale != 1.0 else None)
  return out


def tokenizer_ids(vocab) -> dict[str, Any]:
  """bos / eos / pad ids as config.json takes them (a tokenizer without BOS, or pad, gives None)."""
  pad = vocab.pad_token_id if hasattr(vocab, "pad_token_id") else vocab.pad_id
  return {"bos_id": vocab.bos_id, "eos_id": list(chat_formats.turn_end_ids(vocab)), "pad_id": pad}


def generation_config(vocab) -> dict[str, Any]:
  """generation_config.json: transformers and vLLM stop at any of these ids."""
  ids = tokenizer_ids(vocab)
  out = {"bos_token_id": ids["bos_id"], "eos_token_id": ids["eos_id"], "pad_token_id": ids["pad_id"]}
  return {k: int(v) if isinstance(v, (int, np.integer)) else v for k, v in out.items() if v is not None}


def _number(x: float) -> int | float:
  """An integral value as an int (transformers' config classes check the type)."""
  return int(x) if float(x).is_integer() else x


# What a checkpoint's shard may hold at most (transformers' own default `max_shard_size`, "5GB").
MAX_SHARD_BYTES = 5 * 10**9
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One tensor of the export: its HF name, where it is among our variables (`layer`: its index in
  a scanned variable's stack, or None), and its HF shape."""

  name: str
  path: tuple
  layer: int | None
  shape: tuple[int, ...]


def _layout_change(path: tuple):
  """Our layout to HF's for the variable at `path` (a layer's variable ends with one of `_TO_HF`'s keys)."""
  return next((fn for key, fn in _TO_HF.items() if path[-len(key):] == key), lambda w: w)


def hf_plan(model: Transformer) -> list[HFTensor]:
  """Every tensor of the HF checkpoint, in the order they are written, from shapes alone."""
  config = model.config
  variables = dict(nnx.to_flat_state(nnx.state(model)))
  period, repeats = config.scan_layout()
  scanned = repeats * len(period)
  where: dict[tuple, tuple[tuple, int | None]] = {}  # ("blocks", layer, ...) -> our path, stack index
  for path in variables:
    if path[:2] == ("scanned", "period"):
      for r in range(repeats):
        where[("blocks", r * len(period) + path[2]) + path[3:]] = (path, r)
    elif path[0] == "blocks":
      where[("blocks", path[1] + scanned) + path[2:]] = (path, None)
    else:
      where[path] = (path, None)

  def planned(name: str, key: tuple) -> HFTensor:
    path, layer = where.pop(key)
    shape = variables[path].get_value().shape[1 if layer is not None else 0:]
    hf_shape = jax.eval_shape(_layout_change(key), jax.ShapeDtypeStruct(shape, np.float32)).shape
    return HFTensor(name, path, layer, tuple(hf_shape))

  plan = [planned("model.embed_tokens.weight", ("embedder", "table")),
          planned("model.norm.weight", ("final_norm", "scale"))]
  if not config.tie_embeddings:
    plan.append(planned("lm_head.weight", ("lm_head",)))
  names = [(pattern.replace("\\.", "."), path) for pattern, path, _ in layer_rules(config)]
  for layer in range(config.num_layers):
    for name, path in names:
      if ("blocks", layer) + path in where:
        plan.append(planned(f"model.layers.{layer}.{name}", ("blocks", layer) + path))
  if where:
    raise ValueError(f"hf_plan: variables with no HF name: {['/'.join(map(str, p)) for p in list(where)[:4]]}")
  return plan


@functools.partial(jax.jit, static_argnames=("layout_key", "dtype", "replicated"))
def _hf_layout(x, layer, *, layout_key: tuple, dtype: str, replicated):
  """One tensor in HF's layout and `dtype`, whole on every device (each chip casts its own shard
  before anything moves)."""
  if layer is not None:
    x = x[layer]
  out = _layout_change(layout_key)(x.astype(dtype))
  return out if replicated is None else jax.lax.with_sharding_constraint(out, replicated)


def gather_tensor(model_variables: dict, tensor: HFTensor, dtype: str, writer: bool) -> np.ndarray | None:
  """Collective: `tensor` whole, on the writing process's host (None on the others)."""
  x = model_variables[tensor.path].get_value()
  sharding = getattr(x, "sharding", None)
  replicated = (NamedSharding(sharding.mesh, PartitionSpec())
                if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1 else None)
  key = tuple(p for p in tensor.path if isinstance(p, str))
  layer = None if tensor.layer is None else np.int32(tensor.layer)
  out = _hf_layout(x, layer, layout_key=key, dtype=dtype, replicated=replicated)
  if not writer:
    # Wait as the writer waits: a process that runs tensors ahead queues programs whose collectives
    # the other has not reached, and on XLA's CPU backend they can hold the threads that those
    # collectives need (two processes on one core hung so; tests/test_multihost_export.py).
    out.block_until_ready()
    return None
  return np.asarray(out.addressable_shards[0].data)


def shard_files(plan: Sequence[HFTensor], dtype: str, max_shard_bytes: int) -> list[list[HFTensor]]:
  """Tensors split, in order, into files of at most `max_shard_bytes` (a larger tensor alone)."""
  itemsize = np.dtype(np.float32).itemsize if dtype == "float32" else 2
  files: list[list[HFTensor]] = [[]]
  held = 0
  for tensor in plan:
    size = int(np.prod(tensor.shape)) * itemsize
    if files[-1] and held + size > max_shard_bytes:
      files.append([])
      held = 0
    files[-1].append(tensor)
    held += size
  return files


def _safetensors_header(tensors: Sequence[HFTensor], dtype: str) -> tuple[bytes, int]:
  """The safetensors header (its 8-byte length, then JSON padded to 8 bytes) and the data's size."""
  itemsize = 4 if dtype == "float32" else 2
  entries, offset = {"__metadata__": {"format": "pt"}}, 0
  for tensor in tensors:
    size = int(np.prod(tensor.shape)) * itemsize
    entries[tensor.name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(tensor.shape),
                            "data_offsets": [offset, offset + size]}
    offset += size
  text = json.dumps(entries, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text, offset


def export_hf(model: Transformer, directory: str, vocab: SentencePieceVocabulary | None = None,
              dtype: str = "float32", max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
  """Writes `directory`/config.json, the weights and (with `vocab`) tokenizer.model and
  generation_config.json; returns the directory.

  The weights stream tensor by tensor: each is cast to `dtype` on the chips, laid out as HF's and
  gathered whole, then written by process 0 into files of at most `max_shard_bytes`
  (model.safetensors, or model-0000i-of-0000n.safetensors with model.safetensors.index.json), so a
  host holds one tensor at a time and only process 0 holds any. Collective on a multi-host mesh
  (every process calls it)."""
  if dtype not in DTYPES:
    raise ValueError(f"export_hf(dtype={dtype!r}): use one of {DTYPES}")
  if max_shard_bytes <= 0:
    raise ValueError(f"export_hf(max_shard_bytes={max_shard_bytes}): must be positive")
  writer = jax.process_index() == 0
  plan = hf_plan(model)
  files = shard_files(plan, dtype, max_shard_bytes)
  names = (["model.safetensors"] if len(files) == 1 else
           [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))])
  variables = dict(nnx.to_flat_state(nnx.state(model)))
  if writer:
    os.makedirs(directory, exist_ok=True)
    _remove_other_weights(directory, names)
  for number, (name, tensors) in enumerate(zip(names, files)):
    header, size = _safetensors_header(tensors, dtype)
    with (atomic_io.atomic_path(os.path.join(directory, name)) if writer else contextlib.nullcontext()) as tmp:
      f = open(tmp, "wb") if writer else None
      try:
        if f is not None:
          f.write(header)
        for tensor in tensors:
          array = gather_tensor(variables, tensor, dtype, writer)
          if f is not None:
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            del array
      finally:
        if f is not None:
          f.close()
    if writer:
      logging.info("export_hf: wrote %s (%d of %d, %.2f GB)", name, number + 1, len(files), size / 1e9)
  if not writer:
    return directory
  if len(files) > 1:
    itemsize = 4 if dtype == "float32" else 2
    index = {"metadata": {"total_size": sum(int(np.prod(t.shape)) * itemsize for t in plan)},
             "weight_map": {t.name: name for name, tensors in zip(names, files) for t in tensors}}
    with atomic_io.atomic_open(os.path.join(directory, "model.safetensors.index.json")) as f:
      json.dump(index, f, indent=1)
  ids = {} if vocab is None else tokenizer_ids(vocab)
  with atomic_io.atomic_open(os.path.join(directory, "config.json")) as f:
    json.dump(hf_config(model.config, dtype, **ids), f, indent=1)
  if vocab is not None:
    if hasattr(vocab, "files"):  # a tokenizer.json vocabulary: its files as they are (Qwen3, Llama 3)
      for name, path in vocab.files().items():
        if name != "generation_config.json":
          with open(path, "rb") as f:
            atomic_io.write_bytes(os.path.join(directory, name), f.read())
    else:
      atomic_io.write_bytes(os.path.join(directory, "tokenizer.model"), vocab.sp_model)
    with atomic_io.atomic_open(os.path.join(directory, "generation_config.json")) as f:
      json.dump(generation_config(vocab), f, indent=1)
  return directory


def _remove_other_weights(directory: str, keep: Sequence[str]) -> None:
  """Drops an earlier export's weight files that this one does not write (a reader would take a stale
  index, or a stale single file, for this model's)."""
  for name in os.listdir(directory):
    stale = name == "model.safetensors.index.json" or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", name)
    if stale and name not in keep:
      os.remove(os.path.join(directory, name))
