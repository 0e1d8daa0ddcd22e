"""A tiny GGUF file (weights from an HF model, a byte-fallback vocabulary), for tests."""

import gguf

from swirl_jax.checkpoints.gguf_import import BLOCK_NAMES

_HF_TO_GGUF = {hf: ours for ours, hf in BLOCK_NAMES.items()}  # the importer's table, inverted


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


