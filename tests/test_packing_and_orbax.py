"""Packed rows equal separate rows; orbax save/restore is exact."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from swirl_jax.checkpoints.orbax_io import restore_params, save_params
from swirl_jax.models import init_model, model_config


def test_packed_logits_equal_separate_logits():
  model = init_model(model_config("tiny"), seed=1)
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 512, 13), rng.integers(1, 512, 11)  # both longer than the window
  separate_a = np.asarray(model(jnp.asarray(a[None])))[0]
  separate_b = np.asarray(model(jnp.asarray(b[None])))[0]
  pad = 3
  tokens = np.concatenate([a, b, np.zeros(pad, int)])[None]
  positions = np.concatenate([np.arange(13), np.arange(11), np.zeros(pad, int)])[None]
  segments = np.concatenate([np.full(13, 1), np.full(11, 2), np.zeros(pad, int)])[None]
  packed = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)))[0]
  np.testing.assert_allclose(packed[:13], separate_a, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[13:24], separate_b, atol=1e-5, rtol=1e-5)
  assert np.isfinite(packed).all()  # padding rows see no key, yet stay finite


def test_orbax_round_trip_is_exact(tmp_path):
  config = model_config("tiny")
  model = init_model(config, seed=7)
  save_params(str(tmp_path / "params"), model)
  restored = restore_params(str(tmp_path / "params"), config)
  before = nnx.to_flat_state(nnx.state(model, nnx.Param))
  after = dict(nnx.to_flat_state(nnx.state(restored, nnx.Param)))
  assert set(dict(before)) == set(after)
  for path, variable in before:
    np.testing.assert_array_equal(np.asarray(variable[...]), np.asarray(after[path][...]))


def test_bf16_compute_and_remat_run_close_to_fp32():
  config = model_config("tiny")
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 512, (2, 20)))
  reference = np.asarray(init_model(config, seed=2)(tokens))
  remat = np.asarray(init_model(config.replace(remat="full"), seed=2)(tokens))
  np.testing.assert_allclose(remat, reference, atol=1e-5)
  bf16 = init_model(config.replace(dtype="bfloat16", param_dtype="bfloat16"), seed=2)
  assert bf16.blocks[0].attn.q[...].dtype == jnp.bfloat16
  out = np.asarray(bf16(tokens))
  assert out.dtype == np.float32 and np.abs(out - reference).max() < 0.1 * np.abs(reference).max()
