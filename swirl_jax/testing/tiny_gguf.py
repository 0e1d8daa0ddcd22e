"""Tiny GGUF files for tests: Gemma's (weights from an HF model, a byte-fallback vocabulary), and
Qwen3's and Llama 3's (weights from an HF model, the tokenizer of an HF directory read by the `gguf`
package's own vocabulary readers). Names and layouts are the exporter's (`gguf_export`), which
transformers' GGUF reader checks (tests/test_gguf_export.py); the Llama RoPE divisors are computed
here from transformers' rule, apart from the importer's."""

import pathlib

import gguf
import gguf.vocab
import numpy as np

from swirl_jax.checkpoints.gguf_export import add_model_metadata, gguf_name, to_llama_cpp


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


def _open_writer(path, arch, cfg):
  """A GGUF writer with the architecture's metadata (the exporter's)."""
  writer = gguf.GGUFWriter(str(path), arch)
  add_model_metadata(writer, cfg, arch, "float32")
  return writer


def _add_tensor(writer, stored_name, array, quantize_mlp):
  """fp32, or Q8_0 for the MLP's matrices where asked."""
  if quantize_mlp and "ffn_" in stored_name and not stored_name.endswith("norm.weight"):
    quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor(stored_name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
  else:
    writer.add_tensor(stored_name, np.ascontiguousarray(array))


def _close(writer):
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def write_tiny_gguf(path, hf_model, cfg, quantize_mlp=False):
  writer = _open_writer(path, "gemma3", cfg)
  writer.add_tokenizer_model("llama")
  pieces, scores, types = _vocabulary(cfg.vocab_size)
  writer.add_token_list(pieces)
  writer.add_token_scores(scores)
  writer.add_token_types(types)
  for name, tensor in hf_model.state_dict().items():
    array = tensor.float().numpy()
    if name == "lm_head.weight":
      continue
    stored_name, kind = gguf_name(name, "gemma3")
    _add_tensor(writer, stored_name, to_llama_cpp(array, stored_name, kind, "gemma3", cfg), quantize_mlp)
  _close(writer)


def _llama3_divisors(cfg):
  """llama.cpp's `rope_freqs.weight`: each frequency's divisor under Llama 3's scaling (transformers'
  rule: kept under the high-frequency wavelength, divided by the factor over the low one, blended)."""
  factor, low, high, original = cfg.llama3_rope
  divisors = []
  for i in range(0, cfg.head_dim, 2):
    wavelength = 2 * np.pi * cfg.global_rope_base ** (i / cfg.head_dim)
    if wavelength < original / high:
      divisors.append(1.0)
    elif wavelength > original / low:
      divisors.append(factor)
    else:
      blend = (original / wavelength - low) / (high - low)
      divisors.append(1.0 / ((1 - blend) / factor + blend))
  return np.asarray(divisors, np.float32)


def write_tiny_dense_gguf(path, hf_model, cfg, tokenizer_dir, quantize_mlp=False):
  """A Qwen3 (arch qwen3) or Llama 3 (arch llama) GGUF of `hf_model` with the tokenizer in
  `tokenizer_dir` (tokenizer.json and its configs), padded to the embedding's rows as llama.cpp pads."""
  arch = "qwen3" if cfg.use_qk_norm else "llama"
  writer = _open_writer(path, arch, cfg)
  vocab = gguf.vocab.BpeVocab(pathlib.Path(tokenizer_dir))
  pieces, types = [], []
  for piece, _, kind in vocab.all_tokens():
    pieces.append(piece.decode("utf-8") if isinstance(piece, bytes) else piece)
    types.append(int(kind))
  for i in range(len(pieces), cfg.vocab_size):
    pieces.append(f"[PAD{i}]")
    types.append(int(gguf.TokenType.UNUSED))
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("qwen2" if arch == "qwen3" else "llama-bpe")
  writer.add_token_list(pieces)
  writer.add_token_types(types)
  gguf.vocab.SpecialVocab(pathlib.Path(tokenizer_dir), load_merges=True, n_vocab=len(pieces)).add_to_gguf(
      writer, quiet=True)
  if cfg.llama3_rope is not None:
    writer.add_tensor("rope_freqs.weight", _llama3_divisors(cfg))
  for name, tensor in hf_model.state_dict().items():
    array = tensor.float().numpy()
    if name == "lm_head.weight" and cfg.tie_embeddings:
      continue
    stored_name, kind = gguf_name(name, arch)
    _add_tensor(writer, stored_name, to_llama_cpp(array, stored_name, kind, arch, cfg), quantize_mlp)
  _close(writer)
