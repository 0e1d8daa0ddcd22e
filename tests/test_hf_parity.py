"""Our importer + forward pass against transformers on tiny random Gemma 2 / 3, Qwen3 and Llama 3."""

import numpy as np
import pytest

from swirl_jax.checkpoints.safetensors_import import load_hf_checkpoint
from swirl_jax.models import model_config
from tests import hf_reference


def _padded_batch(rng, vocab, lengths, total, left):
  """Rows of random tokens, right- or left-padded with 0, with mask and positions."""
  tokens = np.zeros((len(lengths), total), np.int64)
  mask = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  for i, n in enumerate(lengths):
    span = slice(total - n, total) if left else slice(0, n)
    tokens[i, span] = rng.integers(1, vocab, n)
    mask[i, span] = 1
    positions[i, span] = np.arange(n)
  return tokens, mask, positions


@pytest.mark.parametrize("name", ["tiny", "tiny_gemma2", "tiny_qwen3", "tiny_llama3"])
@pytest.mark.parametrize("left", [False, True])
def test_logits_match_transformers(tmp_path, name, left):
  cfg = model_config(name)
  reference = hf_reference.random_hf_model(cfg)
  reference.save_pretrained(tmp_path)  # safetensors + config.json
  model = load_hf_checkpoint(str(tmp_path))
  assert model.config.layer_types == cfg.layer_types
  assert model.config.sliding_window == cfg.sliding_window

  rng = np.random.default_rng(1)
  # 29 > 3 x the window of 8; the padded rows are shorter.
  tokens, mask, positions = _padded_batch(rng, cfg.vocab_size, [29, 17, 5], 29, left)
  expected = hf_reference.hf_logits(reference, tokens, mask, positions)
  ours = np.asarray(model(tokens.astype(np.int32), positions.astype(np.int32), mask.astype(np.int32)))
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=1e-4)


def test_bad_config_names_file_and_field(tmp_path):
  import json
  from swirl_jax.checkpoints.safetensors_import import config_from_hf
  cfg = hf_reference.hf_config(model_config("tiny")).to_dict()
  del cfg["head_dim"]
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config\.json: field 'head_dim' is missing"):
    load_hf_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model_type": "gemma3_text",\n "vocab_size": }')
  with pytest.raises(ValueError, match=r"config\.json: line 2"):
    load_hf_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match="model_type='mistral'"):
    config_from_hf({"model_type": "mistral"})
  qwen = hf_reference.hf_dense_config(model_config("tiny_qwen3")).to_dict()
  with pytest.raises(ValueError, match="attention_bias is true"):
    config_from_hf({**qwen, "attention_bias": True})
  with pytest.raises(ValueError, match="hidden activation 'gelu'"):
    config_from_hf({**qwen, "hidden_act": "gelu"})
  for model_type in ("llama", "qwen3"):  # Qwen's documented long-context setting is YaRN: refused, not dropped
    with pytest.raises(ValueError, match="rope type 'yarn'"):
      config_from_hf({**qwen, "model_type": model_type, "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
                      "rope_parameters": None})


def test_real_config_layouts():
  """Older HF configs (rope_theta + rope_local_base_freq + rope_scaling) map too."""
  from swirl_jax.checkpoints.safetensors_import import config_from_hf
  gemma3_4b = {
      "model_type": "gemma3", "text_config": {
          "model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 2560,
          "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
          "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 1024,
          "query_pre_attn_scalar": 256, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
          "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}}
  assert config_from_hf(gemma3_4b) == model_config("gemma3_4b")
  gemma2_2b = {
      "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
      "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
      "sliding_window": 4096, "query_pre_attn_scalar": 256, "rope_theta": 10000.0,
      "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
  assert config_from_hf(gemma2_2b) == model_config("gemma2_2b")


def test_real_qwen3_and_llama3_configs_give_the_named_configs():
  """Qwen3-0.6B's and Llama-3.2-1B's config.json files (the older layout: rope_theta, rope_scaling)."""
  from swirl_jax.checkpoints.safetensors_import import config_from_hf
  qwen3_0_6b = {
      "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
      "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960, "model_type": "qwen3",
      "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
      "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
      "use_sliding_window": False, "vocab_size": 151936}
  assert config_from_hf(qwen3_0_6b) == model_config("qwen3_0_6b")
  llama3_2_1b = {
      "architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
      "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256}
  assert config_from_hf(llama3_2_1b) == model_config("llama3_2_1b")
  assert model_config("qwen3_32b").num_params() > 32e9 and model_config("llama3_1_8b").num_params() > 8e9


@pytest.mark.parametrize("name", ["tiny_qwen3", "tiny_llama3"])
def test_the_kv_cache_path_gives_the_full_forward_s_logits(name):
  """Sampling's path (the context appended to a KV cache in chunks) against the full forward pass."""
  import jax.numpy as jnp
  from swirl_jax.models.transformer import KVCache, init_model
  model = init_model(model_config(name), seed=3)
  tokens = np.random.default_rng(0).integers(1, 512, (2, 24)).astype(np.int32)
  full = np.asarray(model(jnp.asarray(tokens)))
  cache = KVCache.zeros(model.config, 2, 32)
  hidden = []
  for start in range(0, 24, 8):
    h, cache = model.extend(jnp.asarray(tokens[:, start:start + 8]), cache, jnp.full((2,), 8, jnp.int32))
    hidden.append(np.asarray(model.logits_at(h)))
  np.testing.assert_allclose(np.concatenate(hidden, axis=1), full, atol=1e-4, rtol=1e-4)
