"""The multi-host helpers on one process, the runtime set-up, and preemption of a 1-process trainer."""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from swirl_jax import multihost, partitioning, runtime
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.sampler import row_key
from swirl_jax.training.trainer import OptimizerConfig, TrainConfig, Trainer
from swirl_jax.testing.judged import known_trajectories


def test_one_process_owns_every_row_and_reads_them_back():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=4, fsdp=2))
  sharding = partitioning.batch_sharding(mesh, partitioning.DEFAULT_RULES, (16, 3))
  np.testing.assert_array_equal(multihost.owned_rows(sharding, 16), np.arange(16))
  host = np.arange(48, dtype=np.int32).reshape(16, 3)
  array = multihost.global_array(host, sharding)
  assert len(array.addressable_shards) == 8
  np.testing.assert_array_equal(multihost.host_rows(array), host)
  assert multihost.allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}]
  assert multihost.any_process(False, True) == (False, True) and multihost.any_process(True) is True
  assert multihost.max_over_processes(7) == 7


def test_merge_counts_adds_nested_counts():
  merged = multihost.merge_counts([{"n": 1, "finish": {"a": 2}}, {"n": 3, "finish": {"a": 1, "b": 5}}])
  assert merged == {"n": 4, "finish": {"a": 3, "b": 5}}


def test_row_keys_depend_on_the_ids_only():
  assert (row_key(0, "q-1", 2, 0) == row_key(0, "q-1", 2, 0)).all()
  keys = {tuple(row_key(0, q, s, t)) for q in ("q-1", "q-2") for s in range(3) for t in range(3)}
  assert len(keys) == 18


def test_runtime_config_checks_and_the_hybrid_mesh_needs_whole_slices():
  with pytest.raises(ValueError, match="go together"):
    runtime.RuntimeConfig(coordinator_address="127.0.0.1:1")
  with pytest.raises(ValueError, match="multiple of num_slices"):
    partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=8), num_slices=2)
  rt = runtime.setup_runtime(runtime.RuntimeConfig())
  assert rt.mesh is not None and rt.mesh.size == jax.device_count() == 8
  assert "process 0 of 1" in rt.describe()


@pytest.mark.slow
def test_sigterm_saves_and_stops_and_the_restart_ends_with_the_uninterrupted_params(tmp_path):
  """One process: the trainer's SIGTERM handler saves the step it is at, raises Preempted, and
  gives SIGTERM back to its old handler afterwards."""
  config = TrainConfig(mode="offline", steps=5, batch_size=2, sequence_length=96, checkpoint_every=100, log_every=1)
  optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=1)

  class TermAtStep2(Trainer):
    def run_step(self):
      metrics = super().run_step()
      if self.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return metrics

  def params(model):
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}

  previous = signal.getsignal(signal.SIGTERM)
  model = init_model(model_config("tiny"), seed=0)
  stopped = TermAtStep2(model, known_trajectories(), dataclasses.replace(config, checkpoint_dir=str(tmp_path / "a")),
                        optimizer=optimizer)
  with pytest.raises(multihost.Preempted, match="saved step 2"):
    stopped.train()
  assert stopped.checkpoints.latest_step() == 2
  assert signal.getsignal(signal.SIGTERM) is previous

  resumed_model = init_model(model_config("tiny"), seed=0)
  resumed = Trainer(resumed_model, known_trajectories(), dataclasses.replace(config, checkpoint_dir=str(tmp_path / "a")),
                    optimizer=optimizer)
  resumed.train()
  assert resumed.step == 5

  clean_model = init_model(model_config("tiny"), seed=0)
  Trainer(clean_model, known_trajectories(), dataclasses.replace(config, checkpoint_dir=str(tmp_path / "b")),
          optimizer=optimizer).train()
  a, b = params(resumed_model), params(clean_model)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)
