"""GGUF import on a tiny file written here: names, layouts, (1 + w) norms, quantized blocks."""

import gguf
import numpy as np
import pytest

from swirl_jax.checkpoints.gguf_import import load_gguf
from swirl_jax.checkpoints.tokenizer import vocabulary_from_gguf
from swirl_jax.models import model_config
from tests import hf_reference
from swirl_jax.testing.tiny_gguf import write_tiny_gguf

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
