"""GGUF import on a tiny file written here: names, layouts, (1 + w) norms, quantized blocks."""

import gguf
import numpy as np
import pytest

from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
from swirl_jax.models import model_config
from tests import hf_reference

_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _vocabulary(size):
  """Specials, the 256 byte pieces, a few words, then filler pieces."""
  pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "  "]
  types = [3, 3, 3, 3, 3, 3, 4]
  pieces += [f"<0x{i:02X}>" for i in range(256)]
  types += [6] * 256
  words = ["\u2581the", "\u2581cat", "\u2581sat", "\u2581", "t", "h", "e", "c", "a", "s"]
  pieces += words + [f"\u2581w{i}" for i in range(size - len(pieces) - len(words))]
  types += [1] * (size - len(types))
  scores = [0.0] * 263 + [-float(i) for i in range(size - 263)]
  return pieces, scores, types


def write_tiny_gguf(path, hf_model, cfg, quantize_mlp=False):
  writer = gguf.GGUFWriter(str(path), "gemma3")
  writer.add_block_count(cfg.num_layers)
  writer.add_context_length(4096)
  writer.add_embedding_length(cfg.embed_dim)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_rope_freq_base(cfg.global_rope_base)
  writer.add_sliding_window(cfg.sliding_window)
  writer.add_sliding_window_pattern([t == "local" for t in cfg.layer_types])
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_tokenizer_model("llama")
  pieces, scores, types = _vocabulary(cfg.vocab_size)
  writer.add_token_list(pieces)
  writer.add_token_scores(scores)
  writer.add_token_types(types)
  for name, tensor in hf_model.state_dict().items():
    array = tensor.float().numpy()
    if name == "lm_head.weight":
      continue
    if name.endswith("norm.weight"):
      array = array + 1.0  # llama.cpp's convention for Gemma norms
    if name == "model.embed_tokens.weight":
      gguf_name = "token_embd.weight"
    elif name == "model.norm.weight":
      gguf_name = "output_norm.weight"
    else:
      layer, rest = name[len("model.layers."):].split(".", 1)
      gguf_name = f"blk.{layer}.{_HF_TO_GGUF[rest[:-len('.weight')]]}.weight"
    if quantize_mlp and "ffn_" in gguf_name and not gguf_name.endswith("norm.weight"):
      quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
      writer.add_tensor(gguf_name, quantized, raw_shape=quantized.shape,
                        raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(gguf_name, array)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def tiny():
  # The GGUF file fixes the local base at 10k; the tiny config's matches.
  cfg = model_config("tiny")
  return cfg, hf_reference.random_hf_model(cfg, seed=3)


@pytest.mark.parametrize("quantize_mlp", [False, True])
def test_gguf_logits_match_reference(tmp_path, tiny, quantize_mlp):
  cfg, hf_model = tiny
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(path, hf_model, cfg, quantize_mlp)
  model = load_gguf(str(path))
  assert model.config == cfg
  tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 19))
  ones = np.ones_like(tokens)
  expected = hf_reference.hf_logits(hf_model, tokens, ones, np.cumsum(ones, 1) - 1)
  ours = np.asarray(model(tokens.astype(np.int32)))
  tolerance = 0.05 if quantize_mlp else 1e-4  # Q8_0 rounds weights to 8 bits
  np.testing.assert_allclose(ours, expected, atol=tolerance * np.abs(expected).max(), rtol=0)


def test_vocabulary_from_gguf(tmp_path, tiny):
  cfg, hf_model = tiny
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(path, hf_model, cfg)
  vocab = vocabulary_from_gguf(str(path), cache_dir=str(tmp_path))
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 3)
  ids = vocab.encode("the cat  sat")
  assert vocab.decode(ids) == "the cat  sat"
  assert 6 in ids  # the user-defined "  " piece matched a run of two spaces
  assert vocab.encode("<start_of_turn>") == [4]
  assert vocab.decode(vocab.encode("zebra\u00e9")) == "zebra\u00e9"  # byte fallback


def test_not_a_gemma_file_is_refused(tmp_path):
  path = tmp_path / "llama.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"llama\.gguf: general\.architecture='llama'"):
    load_gguf(str(path))
