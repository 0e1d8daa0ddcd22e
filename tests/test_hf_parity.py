"""Our importer + forward pass against transformers on tiny random Gemma 2 / 3."""

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


@pytest.mark.parametrize("name", ["tiny", "tiny_gemma2"])
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
  with pytest.raises(ValueError, match="model_type='llama'"):
    config_from_hf({"model_type": "llama"})


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
