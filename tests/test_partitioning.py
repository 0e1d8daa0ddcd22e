"""Sharding on 8 fake CPU devices: params land as the rules say; logits do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from swirl_jax import partitioning
from swirl_jax.models import init_model, model_config

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def _sharded_copy(config, seed, mesh, rules):
  model = init_model(config, seed=seed)
  return partitioning.shard_model(model, mesh, rules)


def test_eight_devices_present():
  assert jax.device_count() == 8


@pytest.mark.parametrize("shape", MESHES)
def test_params_sharded_per_rules_and_logits_unchanged(shape):
  config = model_config("tiny")
  rules = partitioning.DEFAULT_RULES
  mesh = partitioning.make_mesh(partitioning.MeshConfig(*shape))
  single = init_model(config, seed=4)
  sharded = _sharded_copy(config, 4, mesh, rules)
  data, fsdp, tensor = shape

  # Every variable carries the spec its logical axes map to.
  for path, variable in nnx.to_flat_state(nnx.state(sharded)):
    axes = variable.get_metadata()["logical_axes"]
    expected = partitioning.logical_to_spec(axes, rules, variable.shape, mesh)
    assert variable[...].sharding.spec == expected, path
    assert variable[...].sharding.mesh.shape == mesh.shape

  # Spelled out for the main weights (tiny: D=64, heads 4, kv heads 2, F=128, V=512).
  # Axes of size 1 stay named in the spec; they split nothing.
  fs, tp = "fsdp", "tensor"
  attn = sharded.blocks[0].attn
  assert sharded.embedder.table[...].sharding.spec == P(tp, fs)
  assert attn.q[...].sharding.spec == P(fs, tp, None)
  kv_tp = tp if 2 % tensor == 0 else None  # 2 kv heads cannot split 4 ways
  assert attn.k[...].sharding.spec == P(fs, kv_tp, None)
  assert sharded.blocks[0].mlp.down[...].sharding.spec == P(tp, fs)
  assert sharded.final_norm.scale[...].sharding.spec == P(None)
  assert attn.q[...].addressable_shards[0].data.shape == (64 // fsdp, 4 // tensor, 16)
  assert attn.k[...].addressable_shards[0].data.shape == (64 // fsdp, 2 if kv_tp is None else 2 // tensor, 16)

  tokens = np.random.default_rng(0).integers(1, 512, (8, 21))  # longer than the window
  expected_logits = np.asarray(single(jnp.asarray(tokens)))

  @nnx.jit
  def forward(model, tokens):
    return model(tokens)

  batch = jax.device_put(tokens, partitioning.batch_sharding(mesh, rules, tokens.shape))
  with partitioning.activate(mesh, rules):
    logits = forward(sharded, batch)
  # Batch split over data x fsdp, vocab over tensor.
  assert logits.addressable_shards[0].data.shape == (8 // (data * fsdp), 21, 512 // tensor)
  np.testing.assert_allclose(np.asarray(logits), expected_logits, atol=1e-5, rtol=1e-5)


def test_optimizer_state_follows_params():
  config = model_config("tiny")
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  rules = partitioning.DEFAULT_RULES
  model = _sharded_copy(config, 0, mesh, rules)
  params = nnx.state(model, nnx.Param)
  param_shardings = partitioning.state_shardings(params, mesh, rules)
  tx = optax.adamw(1e-3)
  shapes = jax.eval_shape(tx.init, params)
  shardings = partitioning.optimizer_state_shardings(tx, shapes, param_shardings, mesh)
  adam = shardings[0]
  assert adam.mu["blocks"][0]["attn"]["q"].get_value().spec == P("fsdp", "tensor", None)
  assert adam.count.spec == P()
  opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
  assert opt_state[0].nu["embedder"]["table"][...].sharding.spec == P("tensor", "fsdp")


def test_mesh_config_and_rule_errors():
  assert partitioning.MeshConfig(-1, 2, 2).shape(8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 12 devices"):
    partitioning.MeshConfig(3, 2, 2).shape(8)
  with pytest.raises(ValueError, match="at most one"):
    partitioning.MeshConfig(-1, -1, 2).shape(8)
  with pytest.raises(ValueError, match="no rule"):
    partitioning.logical_to_spec(["nonsense"], partitioning.DEFAULT_RULES)
  rules = partitioning.logical_rules(overrides=(("embed", None), ("mlp", ("fsdp", "tensor"))))
  assert partitioning.logical_to_spec(["embed", "mlp"], rules) == P(None, ("fsdp", "tensor"))
