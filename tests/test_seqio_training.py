"""Stage 2 reads SeqIO: a task a user registers from their own source trains through the CLI with
gin alone, and the train step sees exactly the rows `seqio.get_dataset` yields."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio

from swirl_jax.data import features, seqio_tasks
from swirl_jax.models import init_model, model_config
from swirl_jax.training.trainer import TrainConfig, Trainer
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.testing.subprocesses import cpu_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A user's module: their own file of judged trajectories, their own SeqIO source and task name.
USER_MODULE = textwrap.dedent('''
    """My judged trajectories, as a SeqIO task."""
    import json
    import os

    import seqio
    import tensorflow as tf

    from swirl_jax.data import seqio_tasks
    from swirl_jax.records import Trajectory

    PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "my_trajectories.jsonl")


    def my_dataset(split, shuffle_files, seed=None):
      def examples():
        with open(PATH, encoding="utf-8") as f:
          for line in f:
            yield seqio_tasks.trajectory_example(Trajectory.from_dict(json.loads(line)))
      return tf.data.Dataset.from_generator(examples, output_signature=seqio_tasks.SIGNATURE)


    seqio.TaskRegistry.add("{name}", source=seqio.FunctionDataSource(my_dataset, splits=["train"]),
                           preprocessors=[], output_features=seqio_tasks.output_features())
''')


def _user_module(tmp_path, name):
  (tmp_path / "my_trajectories.jsonl").write_text("".join(t.to_json() + "\n" for t in known_trajectories()))
  path = tmp_path / "my_tasks.py"
  path.write_text(USER_MODULE.replace("{name}", name))
  return path


@pytest.mark.slow
def test_a_task_a_user_registers_trains_through_the_cli_with_gin_only(tmp_path, tokenizer_gguf):
  _user_module(tmp_path, "mine:judged")
  checkpoints = tmp_path / "checkpoints"
  (tmp_path / "train.gin").write_text(textwrap.dedent(f'''
      import my_tasks

      run_train.task_name = 'mine:judged'
      load_policy.source = 'init'
      load_policy.config_name = 'tiny'
      load_policy.tokenizer_gguf = '{tokenizer_gguf}'
      TrainConfig.mode = 'offline'
      TrainConfig.steps = 2
      TrainConfig.batch_size = 2
      TrainConfig.sequence_length = 96
      TrainConfig.checkpoint_dir = '{checkpoints}'
  '''))
  env = {**cpu_env(tmp_path), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
  done = subprocess.run([sys.executable, "-m", "swirl_jax.main", "--mode=train", f"--gin_file={tmp_path / 'train.gin'}"],
                        env=env, capture_output=True, text=True, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout[done.stdout.index("{"):])
  assert printed["task"] == "mine:judged" and printed["step"] == 2
  manager = ocp.CheckpointManager(str(checkpoints))
  meta = manager.restore(2, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  assert meta["fingerprint"]["data"]["task"] == "mine:judged" and meta["data_positions"] == [4]


def test_the_step_sees_the_rows_seqio_get_dataset_yields(tmp_path):
  path = _user_module(tmp_path, "mine:seen")
  spec = importlib.util.spec_from_file_location("my_tasks_seen", path)
  spec.loader.exec_module(importlib.util.module_from_spec(spec))
  config = TrainConfig(mode="offline", steps=3, batch_size=2, sequence_length=96, seed=7,
                       checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=100)
  trainer = Trainer(init_model(model_config("tiny"), seed=0), "mine:seen", config)
  seen = []
  step = trainer._train_step

  def watching(params, opt_state, batch, reference, loss_slots):
    seen.append({k: np.asarray(v) for k, v in batch.items()})
    return step(params, opt_state, batch, reference, loss_slots)

  trainer._train_step = watching
  trainer.train()
  ds = seqio.get_dataset("mine:seen", task_feature_lengths=seqio_tasks.row_lengths(96),
                         feature_converter=seqio_tasks.StepwiseFeatureConverter(), dataset_split="train",
                         shuffle=True, seed=7, num_epochs=None, shard_info=seqio.ShardInfo(0, 1),
                         trim_output_features=False)
  expected = [row for _, row in zip(range(6), ds.as_numpy_iterator())]
  assert len(seen) == 3
  for name in features.NAMES:
    np.testing.assert_array_equal(np.concatenate([s[name] for s in seen]), np.stack([r[name] for r in expected]),
                                  err_msg=name)
  # Not the order of the file: the rows were shuffled, by the seed.
  first_rows = [trainer_row.tolist() for trainer_row in seen[0][features.INPUT_TOKENS]]
  in_file = seqio_tasks.prefix_shared_batch(known_trajectories()[:2], 96)[features.INPUT_TOKENS].tolist()
  assert first_rows != in_file
