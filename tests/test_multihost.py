"""Two CPU processes on 127.0.0.1 (gloo) train with the batch split by process, each reading only
its shard of the SeqIO task, and end with the params of one process that reads the whole task."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio

from swirl_jax.testing.subprocesses import free_port

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import sys
    import jax
    from swirl_jax import runtime
    mode, out, ckpt = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "multi":
      port, index = sys.argv[4], int(sys.argv[5])
      runtime.setup_runtime(runtime.RuntimeConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                                  process_id=index))
    import numpy as np
    from flax import nnx
    from swirl_jax import partitioning
    from swirl_jax.models import init_model, model_config
    from swirl_jax.data.features import INPUT_TOKENS
    from swirl_jax.training.trainer import OptimizerConfig, TrainConfig, Trainer
    from swirl_jax.testing.judged import known_trajectories
    model = init_model(model_config("tiny"), seed=0)
    mesh = None
    if mode == "multi":
      assert jax.process_count() == 2 and jax.device_count() == 2
      mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2))
      partitioning.shard_model(model, mesh, partitioning.DEFAULT_RULES)
    config = TrainConfig(mode="offline", steps=3, batch_size=4, sequence_length=96, checkpoint_every=100,
                         checkpoint_dir=ckpt, log_every=1)
    trainer = Trainer(model, known_trajectories(), config, mesh=mesh,
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1))
    read = []
    next_rows = trainer.stream.next_rows
    def reading(count):
      rows = next_rows(count)
      read.append(rows[INPUT_TOKENS])
      return rows
    trainer.stream.next_rows = reading
    trainer.train()
    np.save(f"{out}.rows{jax.process_index()}.npy", np.stack(read))
    if jax.process_index() == 0:
      flat = {"/".join(map(str, k)): np.asarray(v[...].addressable_data(0) if mode == "multi" else v[...])
              for k, v in nnx.to_flat_state(nnx.state(model))}
      np.savez(out, **flat)
''')



def test_two_processes_match_one(tmp_path):
  script = tmp_path / "train_script.py"
  script.write_text(SCRIPT)
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  single = tmp_path / "single.npz"
  subprocess.run([sys.executable, str(script), "single", str(single), str(tmp_path / "ckpt1")], env=env,
                 check=True, capture_output=True, cwd=REPO)
  port = str(free_port())
  multi = tmp_path / "multi.npz"
  procs = [subprocess.Popen([sys.executable, str(script), "multi", str(multi), str(tmp_path / "ckpt2"), port, str(i)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0].decode()[-3000:] for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  # Each process read its own shard of the task: half of each step's rows, what SeqIO gives that
  # shard; together, the rows one process reads.
  from swirl_jax.data import features, seqio_tasks
  from swirl_jax.training.trainer import register_data
  from swirl_jax.testing.judged import known_trajectories
  task = register_data(known_trajectories(), "offline")
  one = np.load(f"{single}.rows0.npy")
  shards = [np.load(f"{multi}.rows{i}.npy") for i in range(2)]
  assert one.shape[:2] == (3, 4) and all(s.shape[:2] == (3, 2) for s in shards)
  for i, shard in enumerate(shards):
    ds = seqio.get_dataset(task, seqio_tasks.row_lengths(96), seqio_tasks.StepwiseFeatureConverter(), shuffle=True,
                           seed=0, num_epochs=None, shard_info=seqio.ShardInfo(i, 2), trim_output_features=False)
    expected = [row[features.INPUT_TOKENS] for _, row in zip(range(6), ds.as_numpy_iterator())]
    np.testing.assert_array_equal(shard.reshape(6, -1), np.stack(expected))
  for step in range(3):
    together = sorted(map(tuple, np.concatenate([shards[0][step], shards[1][step]]).tolist()))
    assert together == sorted(map(tuple, one[step].tolist()))
  a, b = np.load(single), np.load(multi)
  assert set(a.files) == set(b.files) and len(a.files) > 10
  for name in a.files:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
