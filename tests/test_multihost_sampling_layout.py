"""The sampling layout on 2 CPU processes x 4 devices (gloo, 127.0.0.1) against 1 process x 8
devices: the same tokens and log-probs, and online RL in either layout ends at the same params, also
where a shard of the sampling layout's rows spans both processes."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from swirl_jax.testing.subprocesses import free_port

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    from swirl_jax import runtime
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "multi":
      runtime.setup_runtime(runtime.RuntimeConfig(coordinator_address=f"127.0.0.1:{sys.argv[3]}", num_processes=2,
                                                  process_id=int(sys.argv[4])))
    import numpy as np
    from flax import nnx
    from swirl_jax import partitioning
    from swirl_jax.models import init_model, model_config
    from swirl_jax.sampling.sampler import Sampler, SamplingConfig, row_key
    from swirl_jax.training import online
    from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer
    from swirl_jax.testing.judged import known_trajectories
    from tests.test_losses import FirstTokenScorer
    assert jax.device_count() == 8
    # "spanning": a training mesh whose fsdp blocks alternate between the processes two devices at a
    # time, and a sampling layout whose shard of rows (4 devices) holds devices of both processes: the
    # rows' host work stays with their training owners, their inputs and outputs move on device.
    def interleaved():
      local = {d: i for p in range(jax.process_count())
               for i, d in enumerate(sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id))}
      order = sorted(jax.devices(), key=lambda d: (local[d] // 2, d.process_index, local[d]))
      return jax.sharding.Mesh(np.asarray(order).reshape(1, 4, 2), partitioning.MESH_AXES,
                               axis_types=(jax.sharding.AxisType.Auto,) * 3)
    layouts = {
        "training": (None, lambda: partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=4, tensor=2))),
        "sampling": (partitioning.SamplingLayout(copy_params=True, data=-1, fsdp=1, tensor=2, param_dtype="float32"),
                     lambda: partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=4, tensor=2))),
        "spanning": (partitioning.SamplingLayout(copy_params=True, data=2, fsdp=1, tensor=4, param_dtype="float32"),
                     interleaved),
    }
    def placed(seed, make_mesh):
      mesh = make_mesh()
      return partitioning.shard_model(init_model(model_config("tiny"), seed=seed), mesh,
                                      partitioning.DEFAULT_RULES), mesh
    rng = np.random.default_rng(5)
    contexts = {slot: rng.integers(2, 512, n).tolist() for slot, n in enumerate(rng.integers(3, 30, 4))}
    turns = {}
    for name, (layout, make_mesh) in layouts.items():
      model, mesh = placed(11, make_mesh)
      sampler = Sampler(model, rows=8, capacity=64, buckets=(8, 32), mesh=mesh, layout=layout)
      turns[name + " staged"] = sampler.staged
      mine = {slot: c for slot, c in contexts.items() if slot * 2 in sampler.local_rows}
      got = online.sample_actions(sampler, mine, 2, SamplingConfig(temperature=1.0, max_new_tokens=10),
                                  key_ids=("mp",))
      turns[name] = {str(slot): [[a.tokens, a.logprobs] for a in actions] for slot, actions in got.items()}
      turns[name + " prefilled"] = sampler.prefill_tokens
      model, mesh = placed(0, make_mesh)
      trainer = Trainer(model, known_trajectories(),
                        TrainConfig(mode="online", steps=3, batch_size=8, sequence_length=128,
                                    checkpoint_dir=f"{out}.{name}.ckpt"),
                        online_config=OnlineConfig(samples_per_state=2, max_action_tokens=3),
                        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),
                        scorer=FirstTokenScorer(range(100, 300)), mesh=mesh, sampling_layout=layout)
      for _ in range(3):
        trainer.run_step()
      flat = {"/".join(map(str, k)): np.asarray(jax.experimental.multihost_utils.process_allgather(v[...], tiled=True))
              for k, v in nnx.to_flat_state(nnx.state(model))}
      if jax.process_index() == 0:
        np.savez(f"{out}.{name}.npz", **flat)
      if name == "training":  # the export streams each tensor off the mesh both processes hold
        from swirl_jax.checkpoints.safetensors_export import export_hf
        export_hf(model, f"{out}.hf", dtype="bfloat16", max_shard_bytes=60_000)
    with open(f"{out}.turns{jax.process_index()}.json", "w") as f:
      json.dump(turns, f)
''')



def test_two_processes_sample_and_train_in_the_sampling_layout_as_one(tmp_path):
  script = tmp_path / "layout_script.py"
  script.write_text(SCRIPT)
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  single, multi = tmp_path / "single", tmp_path / "multi"
  subprocess.run([sys.executable, str(script), "single", str(single)], cwd=REPO, check=True, capture_output=True,
                 env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(script), "multi", str(multi), port, str(i)], cwd=REPO,
                            env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [p.communicate(timeout=900)[0].decode()[-3000:] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  one = json.loads((tmp_path / "single.turns0.json").read_text())
  parts = [json.loads((tmp_path / f"multi.turns{i}.json").read_text()) for i in range(2)]
  # Only the spanning layout, on 2 processes, moves rows between owners and holders.
  assert [parts[0][f"{name} staged"] for name in ("training", "sampling", "spanning")] == [False, False, True]
  assert not one["spanning staged"]
  for name in ("training", "sampling", "spanning"):
    together = {**parts[0][name], **parts[1][name]}
    assert sorted(together) == sorted(one[name]) == ["0", "1", "2", "3"]
    assert all(parts[i][name] for i in range(2))  # each process sampled its own states
    for slot, actions in one[name].items():
      for (tokens, logprobs), (their_tokens, their_logprobs) in zip(actions, together[slot]):
        assert tokens == their_tokens
        np.testing.assert_allclose(logprobs, their_logprobs, atol=1e-5)
      for (tokens, logprobs), (their_tokens, their_logprobs) in zip(actions, one["training"][slot]):
        assert tokens == their_tokens  # the two layouts sample alike
        np.testing.assert_allclose(logprobs, their_logprobs, atol=1e-5)
  # The sampling layout prefilled each state once (into one row of its two, forked on its shard).
  assert one["sampling prefilled"] * 2 == one["training prefilled"]
  for name in ("sampling", "spanning"):
    assert parts[0][f"{name} prefilled"] + parts[1][f"{name} prefilled"] == one["sampling prefilled"]
  # The export from 2 processes: process 0 wrote the same files, byte for byte, as 1 process.
  written = sorted(os.listdir(tmp_path / "single.hf"))
  assert len(written) > 4 and sorted(os.listdir(tmp_path / "multi.hf")) == written
  for name in written:
    assert (tmp_path / "single.hf" / name).read_bytes() == (tmp_path / "multi.hf" / name).read_bytes(), name
  params = {(run, name): np.load(tmp_path / f"{run}.{name}.npz") for run in ("single", "multi")
            for name in ("training", "sampling", "spanning")}
  reference = params[("single", "training")]
  assert len(reference.files) > 10
  for key, other in params.items():
    for leaf in reference.files:
      np.testing.assert_allclose(other[leaf], reference[leaf], rtol=1e-4, atol=1e-5, err_msg=f"{key} {leaf}")
