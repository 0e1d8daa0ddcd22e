"""Builds a sharded Transformer from HF-named weight arrays.

Both importers (safetensors and GGUF) speak HF's tensor names, so the name
mapping, transposes and shape checks live here once.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from swirl_jax import partitioning
from swirl_jax.models.config import GemmaConfig
from swirl_jax.models.transformer import Transformer, abstract_model

# Prefixes of the text decoder inside HF checkpoints (CausalLM and multimodal).
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_SKIPPED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
            "model.multi_modal_projector.", "lm_head.")


def layer_rules(cfg: GemmaConfig) -> list[tuple[str, tuple[str, ...], Callable]]:
  d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  same = lambda w: w
  return [
      (r"self_attn\.q_proj\.weight", ("attn", "q"), lambda w: w.T.reshape(d, n, h)),
      (r"self_attn\.k_proj\.weight", ("attn", "k"), lambda w: w.T.reshape(d, k, h)),
      (r"self_attn\.v_proj\.weight", ("attn", "v"), lambda w: w.T.reshape(d, k, h)),
      (r"self_attn\.o_proj\.weight", ("attn", "o"), lambda w: w.T.reshape(n, h, d)),
      (r"self_attn\.q_norm\.weight", ("attn", "q_norm", "scale"), same),
      (r"self_attn\.k_norm\.weight", ("attn", "k_norm", "scale"), same),
      (r"mlp\.gate_proj\.weight", ("mlp", "gate"), lambda w: w.T),
      (r"mlp\.up_proj\.weight", ("mlp", "up"), lambda w: w.T),
      (r"mlp\.down_proj\.weight", ("mlp", "down"), lambda w: w.T),
      (r"input_layernorm\.weight", ("pre_attn_norm", "scale"), same),
  ] + ([
      (r"post_attention_layernorm\.weight", ("post_attn_norm", "scale"), same),
      (r"pre_feedforward_layernorm\.weight", ("pre_ffw_norm", "scale"), same),
      (r"post_feedforward_layernorm\.weight", ("post_ffw_norm", "scale"), same),
  ] if cfg.post_norms else [  # Qwen3, Llama: the norm "after attention" is the MLP's pre-norm
      (r"post_attention_layernorm\.weight", ("pre_ffw_norm", "scale"), same),
  ])


def hf_to_flat(tensors: Mapping[str, np.ndarray], config: GemmaConfig,
               source: str) -> dict[tuple, np.ndarray]:
  """Maps HF tensor names to our variable paths, transposed to our layouts.

  Raises with the tensor name and `source` for unknown names, bad shapes, and missing tensors. With
  tied embeddings an `lm_head` that differs from the embedding is refused; untied, it is required.
  """
  rules = [(re.compile(rf"layers\.(\d+)\.{pat}$"), path, fn) for pat, path, fn in layer_rules(config)]
  flat: dict[tuple, np.ndarray] = {}
  embed = lm_head = None
  for name, array in tensors.items():
    if name.startswith(_SKIPPED):
      if name.startswith("lm_head."):
        lm_head = array
      continue
    short = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
    if short == "embed_tokens.weight":
      embed = array
      flat[("embedder", "table")] = array
      continue
    if short == "norm.weight":
      flat[("final_norm", "scale")] = array
      continue
    for pattern, path, fn in rules:
      m = pattern.match(short)
      if m:
        layer = int(m.group(1))
        if layer >= config.num_layers:
          raise ValueError(f"{source}: tensor {name} is for layer {layer}, "
                           f"but the config has {config.num_layers} layers")
        flat[("blocks", layer) + path] = fn(array)
        break
    else:
      raise ValueError(f"{source}: tensor {name!r} is not part of a text decoder swirl_jax loads")
  if not config.tie_embeddings:
    if lm_head is None:
      raise ValueError(f"{source}: lm_head.weight is missing, and the config does not tie the embeddings")
    flat[("lm_head",)] = np.asarray(lm_head).T
  elif lm_head is not None and embed is not None and not np.array_equal(np.asarray(lm_head), np.asarray(embed)):
    raise ValueError(f"{source}: lm_head.weight differs from the embedding, and the config ties them "
                     "(tie_word_embeddings)")
  return flat


def stack_scanned_layers(flat: Mapping[tuple, np.ndarray], config: GemmaConfig) -> dict[tuple, np.ndarray]:
  """Per-layer variables ("blocks", layer, ...) at the paths of a model with `scan_layers`.

  Layer r * p + j of a period of p layers is entry r of ("scanned", "period", j, ...); layers past
  the last whole period are ("blocks", layer - repeats * p, ...). Unchanged without scan_layers.
  """
  period, repeats = config.scan_layout()
  scanned = repeats * len(period)
  if not scanned:
    return dict(flat)
  out: dict[tuple, np.ndarray] = {}
  parts: dict[tuple, dict[int, np.ndarray]] = {}
  for path, array in flat.items():
    if path[0] != "blocks":
      out[path] = array
    elif path[1] < scanned:
      parts.setdefault(("scanned", "period", path[1] % len(period)) + path[2:], {})[path[1] // len(period)] = array
    else:
      out[("blocks", path[1] - scanned) + path[2:]] = array
  for path, by_repeat in parts.items():
    if len(by_repeat) == repeats:  # otherwise the path is reported missing
      out[path] = np.stack([np.asarray(by_repeat[r]) for r in range(repeats)])
  return out


def model_from_flat(config: GemmaConfig, flat: Mapping[tuple, np.ndarray], *, source: str,
                    mesh: Mesh | None = None,
                    rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> Transformer:
  """A Transformer whose variables come from `flat`, placed on `mesh` if given.

  Every host builds only the shards it owns (make_array_from_callback), so the
  same call loads a model onto a multi-host TPU mesh.
  """
  graphdef, abstract_state = nnx.split(abstract_model(config))
  flat = stack_scanned_layers(flat, config)
  expected = dict(nnx.to_flat_state(abstract_state))
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise ValueError(f"{source}: missing tensors for {['/'.join(map(str, p)) for p in missing[:8]]}"
                     f"{' ...' if len(missing) > 8 else ''}")
  dtype = jnp.dtype(config.param_dtype)
  leaves = []
  for path, variable in nnx.to_flat_state(abstract_state):
    array = np.asarray(flat[path])
    if array.shape != variable.shape:
      raise ValueError(f"{source}: {'/'.join(map(str, path))} has shape {array.shape}, "
                       f"the config expects {variable.shape}")
    array = array.astype(dtype)
    if mesh is None:
      value = jax.device_put(array)
    else:
      axes = variable.get_metadata()["logical_axes"]
      spec = partitioning.logical_to_spec(axes, rules, array.shape, mesh)
      value = jax.make_array_from_callback(array.shape, NamedSharding(mesh, spec),
                                           lambda index, a=array: a[index])
    leaves.append((path, variable.replace(value)))
  state = nnx.from_flat_state(leaves)
  return nnx.merge(graphdef, state)
