"""Saves and restores model params with orbax (sharding-aware, no pickle)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from swirl_jax import partitioning
from swirl_jax.models.config import GemmaConfig
from swirl_jax.models.transformer import Transformer, abstract_model


def save_params(directory: str, model: nnx.Module) -> None:
  """Writes the model's params to `directory` (must not exist yet)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), nnx.state(model, nnx.Param))
  checkpointer.wait_until_finished()


def restore_params(directory: str, config: GemmaConfig, *, mesh: Mesh | None = None,
                   rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES) -> Transformer:
  """A Transformer of `config` with params read from `directory`, on `mesh` if given."""
  graphdef, abstract_state = nnx.split(abstract_model(config))
  if mesh is not None:
    shardings = partitioning.state_shardings(abstract_state, mesh, rules)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_state)
  state = ocp.StandardCheckpointer().restore(os.path.abspath(directory), abstract_state)
  return nnx.merge(graphdef, state)
