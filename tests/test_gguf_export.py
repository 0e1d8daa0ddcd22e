"""GGUF export of every family: read back by our importer (the same params, config and tokenizer) and
by transformers' own GGUF reader (the same logits), in F32, F16, BF16 and Q8_0."""

import dataclasses
import json

import gguf
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from swirl_jax.checkpoints.gguf_export import export_gguf
from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
from swirl_jax.models import init_model, model_config
from swirl_jax.models.config import gemma3_layer_types
from swirl_jax.testing.tiny_gguf import write_tiny_gguf
from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer
from tests import hf_reference

FAMILIES = {"tiny": "gemma3", "tiny_gemma2": "gemma2", "tiny_qwen3": "qwen3", "tiny_llama3": "llama3"}
TEXT = "Question: What is 3 + 4? 12345, the cat sat.\n\n  <answer>7</answer> é"


def _vocab(name, directory):
  """The tokenizer a family ships: Gemma's SentencePiece (from a tiny Gemma GGUF), or a tokenizer.json."""
  family = FAMILIES[name]
  if family.startswith("gemma"):
    cfg = model_config("tiny")
    path = directory / "gemma_tokenizer.gguf"
    write_tiny_gguf(path, hf_reference.random_hf_model(cfg, seed=3), cfg)
    return vocabulary_from_gguf(str(path), cache_dir=str(directory))
  return HFTokenizerVocabulary(write_tiny_hf_tokenizer(str(directory / "tokenizer"), family))


def _exportable(name):
  """The family's tiny config with the window pattern llama.cpp fixes (Gemma 3: every 6th layer global)."""
  cfg = model_config(name)
  return dataclasses.replace(cfg, layer_types=gemma3_layer_types(6)) if name == "tiny" else cfg


def _flat(model):
  return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_f32_export_reads_back_as_the_same_model_and_tokenizer(tmp_path, name):
  model = init_model(_exportable(name), seed=1)
  vocab = _vocab(name, tmp_path)
  path = export_gguf(model, str(tmp_path / "model.gguf"), vocab, dtype="float32")
  back = load_gguf(path)
  assert back.config == model.config  # Llama 3's RoPE settings too, through the stored divisors
  ours, theirs = _flat(model), _flat(back)
  assert sorted(ours) == sorted(theirs)
  for key in ours:  # norms go through 1 + w and back for Gemma: within a rounding
    np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-6, err_msg=str(key))
  again = vocabulary_from_gguf(path, cache_dir=str(tmp_path / "cache"))
  assert again.encode(TEXT) == vocab.encode(TEXT)
  assert (again.bos_id, again.eos_id) == (vocab.bos_id, vocab.eos_id)
  if hasattr(vocab, "stop_ids"):
    assert sorted(again.stop_ids) == sorted(vocab.stop_ids) and again.chat_format is vocab.chat_format
  reader = gguf.GGUFReader(path)
  assert reader.fields["general.architecture"].contents() == {"gemma3": "gemma3", "gemma2": "gemma2",
                                                              "qwen3": "qwen3", "llama3": "llama"}[FAMILIES[name]]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_transformers_reads_the_export_as_the_same_model_and_tokenizer(tmp_path, name):
  """transformers' GGUF reader (written from llama.cpp's conventions, not ours) gives our logits and,
  for the BPE tokenizers, our tokens. Where that reader takes a default for what the file holds, the
  model here has the default: it drops Llama 3's stored RoPE divisors (none here); it takes Gemma's
  query scale as 1/sqrt(256) and Qwen3's head size as 128 (heads of that size here)."""
  cfg = _exportable(name)
  if cfg.llama3_rope is not None:
    cfg = dataclasses.replace(cfg, llama3_rope=None)
  if FAMILIES[name].startswith("gemma"):
    cfg = dataclasses.replace(cfg, num_heads=2, num_kv_heads=1, head_dim=256, query_pre_attn_scalar=256.0)
  if FAMILIES[name] == "qwen3":
    cfg = dataclasses.replace(cfg, head_dim=128, query_pre_attn_scalar=128.0)
  model = init_model(cfg, seed=2)
  vocab = _vocab(name, tmp_path)
  export_gguf(model, str(tmp_path / "model.gguf"), vocab, dtype="float32")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="model.gguf", dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 21))
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(tokens.astype(np.int32))), expected, atol=1e-4, rtol=1e-4)
  if not FAMILIES[name].startswith("gemma"):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    text = TEXT + vocab.chat_format.start_user + "hi" + vocab.chat_format.end_turn
    assert tokenizer(text, add_special_tokens=False).input_ids == list(vocab.encode(text))


@pytest.mark.parametrize("dtype, tolerance", [("float16", 0.01), ("bfloat16", 0.05), ("q8_0", 0.05)])
def test_lower_precision_exports_stay_close(tmp_path, dtype, tolerance):
  model = init_model(model_config("tiny_qwen3"), seed=1)
  path = export_gguf(model, str(tmp_path / "model.gguf"), _vocab("tiny_qwen3", tmp_path), dtype=dtype)
  stored = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
  expected = {"float16": gguf.GGMLQuantizationType.F16, "bfloat16": gguf.GGMLQuantizationType.BF16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
  assert stored["blk.0.ffn_up.weight"] == expected and stored["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
  tokens = np.random.default_rng(0).integers(1, 512, (2, 17)).astype(np.int32)
  ours = np.asarray(model(tokens))
  np.testing.assert_allclose(np.asarray(load_gguf(path)(tokens)), ours, atol=tolerance * np.abs(ours).max(), rtol=0)


def test_what_llama_cpp_cannot_hold_is_refused(tmp_path):
  vocab = _vocab("tiny_qwen3", tmp_path)
  odd = init_model(dataclasses.replace(_exportable("tiny"), query_pre_attn_scalar=7.0), seed=0)
  with pytest.raises(ValueError, match="query_pre_attn_scalar=7.0"):
    export_gguf(odd, str(tmp_path / "odd.gguf"), vocab)
  with pytest.raises(ValueError, match="llama.cpp's gemma3 runs"):  # it fixes the window pattern
    export_gguf(init_model(model_config("tiny"), seed=0), str(tmp_path / "alternating.gguf"), vocab)
  with pytest.raises(ValueError, match="dtype='int4'"):
    export_gguf(init_model(model_config("tiny_qwen3"), seed=0), str(tmp_path / "x.gguf"), vocab, dtype="int4")
  # A tokenizer whose pre-tokenizer llama.cpp does not name would tokenize differently there.
  tokenizer_json = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())
  tokenizer_json["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                     "use_regex": True}
  (tmp_path / "tokenizer" / "tokenizer.json").write_text(json.dumps(tokenizer_json))
  with pytest.raises(ValueError, match="none that llama.cpp names"):
    export_gguf(init_model(model_config("tiny_qwen3"), seed=0), str(tmp_path / "y.gguf"),
                HFTokenizerVocabulary(str(tmp_path / "tokenizer")))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]  # nothing, half-written or not, is left


@pytest.mark.slow
def test_the_embedded_gemma3_270m_exported_reads_back_as_itself(gemma3_270m, tmp_path):
  """The real 262k-piece SentencePiece vocabulary and 18 layers: a Q8_0 file of its weights (as the
  embedded Q4_K_M GGUF was made) reads back with the same config, the same tokens for real text, and
  logits within Q8_0's rounding."""
  model, vocab = gemma3_270m
  path = export_gguf(model, str(tmp_path / "gemma3_270m.gguf"), vocab, dtype="q8_0")
  reader = gguf.GGUFReader(path)
  back = load_gguf(path, reader=reader)
  assert back.config == model.config
  # The tokenizer's metadata is the embedded file's own, piece for piece (llama.cpp reads it alike).
  from swirl_jax.checkpoints import embedded
  original = gguf.GGUFReader(embedded.gemma3_270m_gguf_path())
  for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
              "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
              "tokenizer.ggml.add_space_prefix", "gemma3.context_length"):
    assert reader.fields[key].contents() == original.fields[key].contents(), key
  again = vocabulary_from_gguf(path, cache_dir=str(tmp_path), reader=reader)
  text = "<start_of_turn>user\nWhat is 12 * 7?  Think, then answer.<end_of_turn>\n<start_of_turn>model\n"
  assert again.encode(text) == vocab.encode(text) and again.decode(vocab.encode(text)) == text
  assert (again.bos_id, again.eos_id, again.pad_id, again.unk_id) == (vocab.bos_id, vocab.eos_id, vocab.pad_id,
                                                                      vocab.unk_id)
  tokens = np.asarray([vocab.encode(text)], np.int32)
  ours = np.asarray(model(tokens))
  np.testing.assert_allclose(np.asarray(back(tokens)), ours, atol=0.05 * np.abs(ours).max(), rtol=0)
  assert (np.asarray(back(tokens)).argmax(-1) == ours.argmax(-1)).mean() > 0.9
