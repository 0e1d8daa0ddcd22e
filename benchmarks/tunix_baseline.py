"""google-tunix 0.1.7's native sampler on swirl_jax's weights: a second decode baseline.

Install it with `make tunix` (pinned, --no-deps, into .tunix/; see requirements/bench-tunix.txt).
This module appends that directory to sys.path, so the venv's jax and flax are always the ones used.

tunix's Gemma3 takes our Gemma 3 270M weights with two layout changes (queries [N, D, H]; keys and
values stacked as [2, K, D, H]); both libraries store RMSNorm scales w and apply 1 + w. Greedy,
every row makes exactly `new_tokens` (no token has id -1, so its loop never stops a row early).
The timed path calls tunix's two compiled stages (prefill, then the decode loop) as its
`Sampler.__call__` does, so that decode can be timed alone; this reads private names and is why
the version is pinned. Its decode loop runs `new_tokens` model steps; every layer's cache has
prompt + new_tokens slots and every step attends over all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TUNIX_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".tunix")
_NEVER = -1  # an end-of-sequence id no token has


def available() -> bool:
  return os.path.isdir(os.path.join(TUNIX_DIR, "tunix"))


def _import_tunix():
  """tunix's sampler and Gemma 3 modules. Importing them sets flax's global
  `flax_always_shard_variable` to False; it is restored, and set only while tunix code runs."""
  if TUNIX_DIR not in sys.path:
    sys.path.append(TUNIX_DIR)
  before = flax.config.flax_always_shard_variable
  import tunix
  from tunix.generate import sampler, utils
  from tunix.models.gemma3 import model
  flax.config.update("flax_always_shard_variable", before)
  if tunix.__version__ != "0.1.7":
    raise SystemExit(f"tunix {tunix.__version__} in {TUNIX_DIR}; this baseline is written for 0.1.7")
  return sampler, utils, model


@contextlib.contextmanager
def _tunix_flags():
  before = flax.config.flax_always_shard_variable
  flax.config.update("flax_always_shard_variable", False)
  try:
    yield
  finally:
    flax.config.update("flax_always_shard_variable", before)


def _weights(model) -> dict[tuple, jax.Array]:
  """Our (unscanned) Gemma 3 weights under tunix Gemma3's state paths, in its layouts."""
  if model.scanned is not None:
    raise ValueError("the tunix baseline takes an unscanned model")
  weights = {("embedder", "input_embedding"): model.embedder.table[...],
             ("final_norm", "scale"): model.final_norm.scale[...]}
  for i, block in enumerate(model.blocks):
    attn, mlp = block.attn, block.mlp
    heads_first = lambda x: jnp.transpose(x[...], (1, 0, 2))  # [D, N, H] -> [N, D, H]
    layer = {
        ("pre_attention_norm", "scale"): block.pre_attn_norm.scale,
        ("post_attention_norm", "scale"): block.post_attn_norm.scale,
        ("pre_ffw_norm", "scale"): block.pre_ffw_norm.scale,
        ("post_ffw_norm", "scale"): block.post_ffw_norm.scale,
        ("attn", "q_einsum", "w"): heads_first(attn.q),
        ("attn", "kv_einsum", "w"): jnp.stack([heads_first(attn.k), heads_first(attn.v)]),
        ("attn", "attn_vec_einsum", "w"): attn.o,
        ("attn", "_query_norm", "scale"): attn.q_norm.scale,
        ("attn", "_key_norm", "scale"): attn.k_norm.scale,
        ("mlp", "gate_proj", "kernel"): mlp.gate,
        ("mlp", "up_proj", "kernel"): mlp.up,
        ("mlp", "down_proj", "kernel"): mlp.down,
    }
    weights |= {("layers", i) + path: x[...] if isinstance(x, nnx.Variable) else x for path, x in layer.items()}
  return weights


def build_model(model):
  """tunix's Gemma3 270M (fp32) holding `model`'s weights; raises on any config or parameter
  that does not match."""
  _, _, gemma3 = _import_tunix()
  config = dataclasses.replace(gemma3.ModelConfig.gemma3_270m(), param_dtype=jnp.float32)
  ours = model.config
  expected = {"num_layers": ours.num_layers, "num_embed": ours.vocab_size, "embed_dim": ours.embed_dim,
              "hidden_dim": ours.mlp_dim, "num_heads": ours.num_heads, "head_dim": ours.head_dim,
              "num_kv_heads": ours.num_kv_heads, "sliding_window_size": ours.sliding_window,
              "local_base_frequency": ours.local_rope_base, "global_base_frequency": ours.global_rope_base}
  differ = {k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v}
  if differ or ours.query_pre_attn_scalar != ours.head_dim or ours.rms_norm_eps != 1e-6:
    raise ValueError(f"tunix's gemma3_270m differs from this model: {differ}")
  with _tunix_flags():
    abstract = nnx.eval_shape(lambda: gemma3.Gemma3(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  weights = _weights(model)
  if {tuple(p) for p, _ in flat} != set(weights):
    raise ValueError("tunix's Gemma3 parameters are not the ones this adapter fills")
  for path, variable in flat:
    array = weights[tuple(path)].astype(jnp.float32)
    if array.shape != variable.shape:
      raise ValueError(f"{path}: tunix {variable.shape}, ours {array.shape}")
    variable.set_value(array)
  with _tunix_flags():
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


class _IdTokenizer:
  """What tunix's Sampler needs of a tokenizer; prompts arrive as ids."""

  def __init__(self, sentencepiece):
    self.sp = sentencepiece

  def encode(self, x, **kwargs):
    return list(self.sp.EncodeAsIds(x)) if isinstance(x, str) else [int(t) for t in x]

  def decode(self, ids, **kwargs):
    return self.sp.DecodeIds([int(t) for t in ids])

  def bos_id(self):
    return self.sp.bos_id()

  def eos_id(self):
    return self.sp.eos_id()

  def pad_id(self):
    return max(self.sp.pad_id(), 0)


class TunixSampler:
  """tunix's native sampler for prompts of one padded length and one number of new tokens."""

  def __init__(self, tunix_model, vocab, prompt_length: int, new_tokens: int):
    sampler_lib, self._utils, _ = _import_tunix()
    self.prompt_length, self.new_tokens = prompt_length, new_tokens
    config = tunix_model.config
    cache = sampler_lib.CacheConfig(cache_size=prompt_length + new_tokens, num_layers=config.num_layers,
                                    num_kv_heads=config.num_kv_heads, head_dim=config.head_dim)
    with _tunix_flags():
      self.sampler = sampler_lib.Sampler(tunix_model, _IdTokenizer(vocab.tokenizer), cache)

  def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], float, float]:
    """Greedy: (new tokens per row, seconds of the whole call, seconds of the decode loop)."""
    s = self.sampler
    with _tunix_flags():
      start = time.perf_counter()
      s.eos_ids = jnp.array([_NEVER])
      ids = np.array([self._utils.pad_to_length(np.asarray(p, np.int32), self.prompt_length,
                                                pad_value=s.tokenizer.pad_id(), left=True) for p in prompts])
      state = s.init_sample_state(jnp.array(ids), total_sampling_steps=self.prompt_length + self.new_tokens,
                                  include_logits=False, forbidden_token_ids=None, temperature=0.0, top_p=None,
                                  top_k=None, seed=jax.random.PRNGKey(0), beam_size=None)
      state = s._compiled_prefill_fn(s._flattened_transformer_state, state, None, echo=False)
      jax.block_until_ready(state.token_buffer)
      decode_start = time.perf_counter()
      state = s._compiled_decode_fn(s._flattened_transformer_state, state)
      jax.block_until_ready(state.token_buffer)
      decode = time.perf_counter() - decode_start
      buffer = jax.device_get(state.token_buffer)
      total = time.perf_counter() - start
    return [row[self.prompt_length:].tolist() for row in buffer], total, decode
