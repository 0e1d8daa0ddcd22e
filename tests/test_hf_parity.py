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
