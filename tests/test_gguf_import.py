"""GGUF import on tiny files written here: names, layouts, (1 + w) norms, quantized blocks; Qwen3 and
Llama 3 files as llama.cpp's converter writes them (Llama's reordered q and k rows, its RoPE divisors,
the byte-level BPE tokenizer)."""

import gguf
import numpy as np
import pytest

from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
from swirl_jax.models import model_config
from tests import hf_reference
from swirl_jax.testing.tiny_gguf import write_tiny_dense_gguf, write_tiny_gguf
from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer

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


def test_an_architecture_we_do_not_load_is_refused(tmp_path):
  path = tmp_path / "phi3.gguf"
  writer = gguf.GGUFWriter(str(path), "phi3")
  writer.add_block_count(1)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"phi3\.gguf: general\.architecture='phi3'"):
    load_gguf(str(path))


FAMILIES = {"tiny_qwen3": "qwen3", "tiny_llama3": "llama3"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def dense(request, tmp_path_factory):
  """(config, HF model, tokenizer directory, GGUF path) of a tiny Qwen3 or Llama 3."""
  cfg = model_config(request.param)
  directory = tmp_path_factory.mktemp(request.param)
  hf_model = hf_reference.random_hf_model(cfg, seed=3)
  tokenizer_dir = write_tiny_hf_tokenizer(str(directory / "tokenizer"), FAMILIES[request.param])
  path = directory / f"{request.param}.gguf"
  write_tiny_dense_gguf(path, hf_model, cfg, tokenizer_dir)
  return cfg, hf_model, tokenizer_dir, path


def test_qwen3_and_llama3_gguf_logits_match_transformers(tmp_path, dense):
  cfg, hf_model, tokenizer_dir, path = dense
  model = load_gguf(str(path))
  assert model.config == cfg  # Llama 3's four RoPE settings recovered from the file's divisors
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, cfg.vocab_size, (2, 37))
  ones = np.ones_like(tokens)
  expected = hf_reference.hf_logits(hf_model, tokens, ones, np.cumsum(ones, 1) - 1)
  np.testing.assert_allclose(np.asarray(model(tokens.astype(np.int32))), expected, atol=1e-4, rtol=1e-4)
  quantized = tmp_path / "q8.gguf"
  write_tiny_dense_gguf(quantized, hf_model, cfg, tokenizer_dir, quantize_mlp=True)
  ours = np.asarray(load_gguf(str(quantized))(tokens.astype(np.int32)))
  np.testing.assert_allclose(ours, expected, atol=0.05 * np.abs(expected).max(), rtol=0)


def _rotate(x_LxNxH, positions_L, base, pairs):
  """RoPE with plain frequencies, rotating the first half of a head against the second ("half") or
  adjacent entries ("adjacent", llama.cpp's rotation for Llama)."""
  half = x_LxNxH.shape[-1] // 2
  angles_LxK = positions_L[:, None] * base ** (-np.arange(half) * 2 / (2 * half))
  cos, sin = np.cos(angles_LxK)[:, None], np.sin(angles_LxK)[:, None]
  if pairs == "half":
    a, b = x_LxNxH[..., :half], x_LxNxH[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)
  a, b = x_LxNxH[..., 0::2], x_LxNxH[..., 1::2]
  out = np.empty_like(x_LxNxH)
  out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
  return out


def test_the_llama_file_s_q_and_k_rows_are_llama_cpp_s(dense):
  """The stored row order (the exporter's, which the writer uses) is llama.cpp's: those weights,
  rotated llama.cpp's way (adjacent pairs), give the attention scores HF's weights give rotated HF's
  way. (The importer undoes that order; the logits test above checks it.)"""
  cfg, hf_model, _, path = dense
  reader = gguf.GGUFReader(str(path))
  stored = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float64) for t in reader.tensors}
  layer = hf_model.model.layers[0].self_attn
  if cfg.use_qk_norm:  # Qwen3 files keep HF's order: llama.cpp rotates Qwen's heads by halves, as HF does
    np.testing.assert_array_equal(stored["blk.0.attn_q.weight"], layer.q_proj.weight.detach().double().numpy())
    return
  x_LxD = np.random.default_rng(1).normal(size=(9, cfg.embed_dim))
  positions_L = np.arange(9.0)

  def scores(q_weight, k_weight, pairs):
    q = (x_LxD @ q_weight.T).reshape(9, cfg.num_heads, cfg.head_dim)
    k = (x_LxD @ k_weight.T).reshape(9, cfg.num_kv_heads, cfg.head_dim)
    q, k = _rotate(q, positions_L, cfg.global_rope_base, pairs), _rotate(k, positions_L, cfg.global_rope_base, pairs)
    k = np.repeat(k, cfg.num_heads // cfg.num_kv_heads, axis=1)
    return np.einsum("lnh,snh->nls", q, k)

  hf = scores(layer.q_proj.weight.detach().double().numpy(), layer.k_proj.weight.detach().double().numpy(), "half")
  theirs = scores(stored["blk.0.attn_q.weight"], stored["blk.0.attn_k.weight"], "adjacent")
  np.testing.assert_allclose(theirs, hf, rtol=1e-6, atol=1e-6)
  assert not np.allclose(stored["blk.0.attn_q.weight"], layer.q_proj.weight.detach().numpy())


def test_a_bpe_gguf_tokenizer_is_the_original(dense):
  """The tokenizer rebuilt from the GGUF metadata encodes as the tokenizer.json it was written from,
  and takes its BOS, EOS, stop ids and chat format from the file."""
  from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
  _, _, tokenizer_dir, path = dense
  vocab = vocabulary_from_gguf(str(path), cache_dir=str(path.parent / "cache"))
  original = HFTokenizerVocabulary(tokenizer_dir)
  fmt = original.chat_format
  assert vocab.chat_format is fmt
  texts = ["Question: What is 3 + 4? 12345 and 1,000,000.", "héllo wörld\n\n  x\t y", "e\u0301 café 中文 🙂",
           fmt.start_user + "hi" + fmt.end_turn + fmt.between + fmt.start_model + "<answer>7</answer>",
           "I'm sure they'll say 'HELLO' -- we've   seen it."]
  for text in texts:
    assert vocab.encode(text) == original.encode(text), text
    assert vocab.decode(vocab.encode(text)) == original.decode(original.encode(text))
  assert (vocab.bos_id, vocab.eos_id, vocab.pad_token_id) == (original.bos_id, original.eos_id, original.pad_token_id)
  assert sorted(vocab.stop_ids) == sorted(original.stop_ids)
  assert vocab.piece_count == original.piece_count  # llama.cpp's [PAD] rows are not tokens
  # Written once, named by content: a second read reuses the directory.
  again = vocabulary_from_gguf(str(path), cache_dir=str(path.parent / "cache"))
  assert again == vocab and again.directory == vocab.directory
  assert len(list((path.parent / "cache").iterdir())) == 1


def test_load_policy_reads_a_qwen3_or_llama3_gguf(dense, monkeypatch, tmp_path):
  from swirl_jax.checkpoints import embedded
  from swirl_jax.checkpoints.policy import load_policy
  cfg, _, _, path = dense
  monkeypatch.setattr(embedded, "cache_dir", lambda: str(tmp_path))
  model, vocab = load_policy(source="gguf", path=str(path))
  assert model.config == cfg and vocab.chat_format.name in ("chatml", "llama3")


def test_bad_bpe_metadata_is_named(tmp_path, dense):
  from swirl_jax.checkpoints.gguf_bpe import hf_tokenizer_files
  from swirl_jax.checkpoints.gguf_import import llama3_rope_from_divisors
  _, _, _, path = dense
  reader = gguf.GGUFReader(str(path))
  pre = reader.fields["tokenizer.ggml.pre"]

  class Patched:  # the reader with one field's value replaced
    def __init__(self, key, value):
      self.fields = {**reader.fields, key: type("F", (), {"contents": lambda self: value})()}

  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre='gpt-4o'"):
    hf_tokenizer_files(Patched("tokenizer.ggml.pre", "gpt-4o"), str(path))
  merges = reader.fields["tokenizer.ggml.merges"].contents()
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.merges\[1\]='abc'"):
    hf_tokenizer_files(Patched("tokenizer.ggml.merges", [merges[0], "abc"]), str(path))
  with pytest.raises(ValueError, match="eos_token_id=100000 is not one of"):
    hf_tokenizer_files(Patched("tokenizer.ggml.eos_token_id", 100_000), str(path))
  assert pre.contents() in ("qwen2", "llama-bpe")
  with pytest.raises(ValueError, match="rope_freqs.weight is not Llama 3's RoPE scaling"):
    llama3_rope_from_divisors(np.array([1.0, 3.0, 2.0, 8.0, 8.0, 8.0, 8.0, 8.0]), 500_000.0, 16, "x.gguf")
  assert llama3_rope_from_divisors(np.ones(8), 500_000.0, 16, "x.gguf") is None
