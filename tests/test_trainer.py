"""The trainer: exact resume after SIGKILL, NaN stop, online mode on the mesh."""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from swirl_jax import partitioning
from swirl_jax.data import features, trajectory_io
from swirl_jax.models import init_model, model_config
from swirl_jax.training.trainer import (NonFiniteLossError, OnlineConfig, OptimizerConfig, SftConfig, TrainConfig,
                                        Trainer)
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.testing.subprocesses import cpu_env
from tests.test_losses import FirstTokenScorer

STEPS = 12


def _judged_dir(tmp_path):
  directory = tmp_path / "judged"
  trajectory_io.write_shard(trajectory_io.shard_path(str(directory), 0), known_trajectories())
  return str(directory)


def _train_command(tokenizer, judged, checkpoints):
  bindings = [
      "load_policy.source='init'", "load_policy.config_name='tiny'", f"load_policy.tokenizer_gguf='{tokenizer}'",
      f"run_train.judged_dir='{judged}'", "run_train.filter_strategy='none'",
      "TrainConfig.mode='offline'", f"TrainConfig.steps={STEPS}", "TrainConfig.batch_size=2",
      "TrainConfig.sequence_length=96", "TrainConfig.checkpoint_every=2", "TrainConfig.keep_checkpoints=2",
      f"TrainConfig.checkpoint_dir='{checkpoints}'", "OptimizerConfig.learning_rate=0.01", "OptimizerConfig.warmup_steps=2",
      "TrainConfig.grad_accum_steps=2",
  ]
  return [sys.executable, "-m", "swirl_jax.main", "--mode=train"] + [f"--gin.{b}" for b in bindings]


def _final_params(checkpoints):
  manager = ocp.CheckpointManager(str(checkpoints))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  return step, jax.tree.leaves(restored["params"])


def _kill_after_checkpoint(command, env, checkpoints, step):
  """Starts `command` and SIGKILLs it once a checkpoint of `step` or later is on disk."""
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while process.poll() is None:
    steps = [int(d) for d in os.listdir(checkpoints) if d.isdigit()] if checkpoints.exists() else []
    if steps and max(steps) >= step:
      break
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_params(tmp_path, tokenizer_gguf):
  judged = _judged_dir(tmp_path)
  clean = tmp_path / "clean"
  subprocess.run(_train_command(tokenizer_gguf, judged, clean), env=cpu_env(tmp_path), check=True,
                 capture_output=True)
  step, expected = _final_params(clean)
  assert step == STEPS
  # Metrics land beside the checkpoints, every log_every=10 steps and at the end.
  logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics" / "metrics.jsonl")]
  assert logged == [10, STEPS]

  killed = tmp_path / "killed"
  _kill_after_checkpoint(_train_command(tokenizer_gguf, judged, killed), cpu_env(tmp_path), killed, 4)
  assert ocp.CheckpointManager(str(killed)).latest_step() < STEPS, "the kill came too late"
  subprocess.run(_train_command(tokenizer_gguf, judged, killed), env=cpu_env(tmp_path), check=True,
                 capture_output=True)
  step, resumed = _final_params(killed)
  assert step == STEPS
  for a, b in zip(expected, resumed):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


KILL_SCRIPT = """
import sys
from swirl_jax.models import init_model, model_config
from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer
from swirl_jax.testing.judged import known_trajectories
from tests.test_losses import FirstTokenScorer
mode, checkpoints = sys.argv[1], sys.argv[2]
config = TrainConfig(mode=mode, steps=8, batch_size=4 if mode == "online" else 2, pack_rows=mode == "sft",
                     sequence_length=160, checkpoint_every=1, keep_checkpoints=2, checkpoint_dir=checkpoints)
scorer = FirstTokenScorer(range(100, 300)) if mode == "online" else None
Trainer(init_model(model_config("tiny"), seed=0), known_trajectories(), config, scorer=scorer,
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),
        online_config=OnlineConfig(samples_per_state=2, max_action_tokens=3)).train()
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sft", "online"])
def test_killed_training_resumes_to_the_same_params_in_every_mode(tmp_path, mode):
  """SFT with packed rows (a varying number of trajectories per row) and online mode (states from
  the task, fresh samples, the judge) resume to the params of an uninterrupted run (offline: the
  CLI test above)."""
  script = tmp_path / "train.py"
  script.write_text(KILL_SCRIPT)
  env = {**cpu_env(tmp_path), "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
  command = lambda directory: [sys.executable, str(script), mode, str(directory)]
  subprocess.run(command(tmp_path / "clean"), env=env, check=True, capture_output=True)
  killed = tmp_path / "killed"
  _kill_after_checkpoint(command(killed), env, killed, 3)
  assert ocp.CheckpointManager(str(killed)).latest_step() < 8, "the kill came too late"
  subprocess.run(command(killed), env=env, check=True, capture_output=True)
  (step, expected), (resumed_step, resumed) = _final_params(tmp_path / "clean"), _final_params(killed)
  assert step == resumed_step == 8
  for a, b in zip(expected, resumed):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def _first_batch_with_nan(trajectories, config) -> int | None:
  """The step whose batch first holds a NaN reward, found from the batches themselves."""
  probe = Trainer(init_model(model_config("tiny")), trajectories, config)
  for step in range(config.steps):
    if np.isnan(probe._offline_batch()[0][features.REWARDS]).any():
      return step
  return None


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = TrainConfig(mode="offline", steps=6, batch_size=2, sequence_length=96, checkpoint_every=1,
                       checkpoint_dir=str(tmp_path / "ckpt"))
  for poisoned in range(len(known_trajectories())):  # a trajectory that enters after the first step
    trajectories = known_trajectories()
    first_step = trajectories[poisoned].steps[0]
    first_step.process = dataclasses.replace(first_step.process, score=math.nan)
    bad_step = _first_batch_with_nan(trajectories, dataclasses.replace(config, checkpoint_dir=str(tmp_path / "probe")))
    if bad_step:
      break
  assert bad_step, "every trajectory is in the first batch"
  trainer = Trainer(init_model(model_config("tiny")), trajectories, config)
  with pytest.raises(NonFiniteLossError, match=rf"loss is nan at step {bad_step}; stopped without saving"):
    trainer.train()
  assert ocp.CheckpointManager(str(tmp_path / "ckpt")).latest_step() == bad_step
  _, params = _final_params(tmp_path / "ckpt")
  assert all(np.isfinite(np.asarray(p)).all() for p in params)


@pytest.mark.slow
def test_online_mode_on_a_mesh_raises_reward(tmp_path):
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  model = partitioning.shard_model(init_model(model_config("tiny"), seed=0), mesh, partitioning.DEFAULT_RULES)
  config = TrainConfig(mode="online", steps=30, batch_size=16, sequence_length=64, checkpoint_every=100,
                       checkpoint_dir=str(tmp_path / "ckpt"), log_every=1)
  trainer = Trainer(model, known_trajectories(), config, scorer=FirstTokenScorer(range(100, 164)), mesh=mesh,
                    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=1),
                    online_config=OnlineConfig(samples_per_state=4, max_action_tokens=2, kl_coef=0.01))
  last = trainer.train()
  log = [json.loads(line) for line in open(tmp_path / "metrics" / "metrics.jsonl")]
  assert len(log) == 30 and {"loss", "mean_reward", "logged_reward", "kl", "grad_norm", "tokens_per_second"} <= set(last)
  first, final = np.mean([r["mean_reward"] for r in log[:5]]), np.mean([r["mean_reward"] for r in log[-5:]])
  assert final > first + 0.2, (first, final)
  assert nnx.state(model)["blocks"][0]["attn"]["q"][...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


@pytest.mark.slow
def test_packed_sft_rows_resume_at_the_same_data_position(tmp_path):
  """Packed rows hold a varying number of trajectories; the checkpoint keeps each process's
  position in its stream (the examples its rows held), so a restored trainer builds exactly the
  batch the first one would have."""
  trajectories = known_trajectories()
  config = TrainConfig(mode="sft", steps=3, batch_size=2, pack_rows=True, sequence_length=160, checkpoint_every=3,
                       checkpoint_dir=str(tmp_path / "ckpt"), log_every=1)
  sft = SftConfig(context_weight=1.0)
  first = Trainer(init_model(model_config("tiny"), seed=0), trajectories, config, sft=sft)
  first.train()
  assert first.stream.position > 2 * 3  # six rows, more than six trajectories
  expected, _, _ = first._offline_batch()
  expected_examples = int(np.asarray(expected[features.SEGMENT_IDS]).max(axis=1).sum())
  assert expected[features.SEGMENT_IDS].max() > 1  # more than one trajectory in a row
  second = Trainer(init_model(model_config("tiny"), seed=0), trajectories, config, sft=sft)
  assert second.restore_latest() and second.stream.position == first.stream.position - expected_examples
  batch, _, _ = second._offline_batch()
  for key in expected:
    np.testing.assert_array_equal(batch[key], expected[key])


@pytest.mark.slow
def test_clipped_mode_reuses_each_batch_and_the_schedule_counts_optimizer_updates(tmp_path):
  """updates_per_batch=3 with the clipped ratio, through the trainer: 3 optimizer updates per step,
  and the learning rate is still above 0 at the last update (it was 0 from step steps/3 on when the
  schedule counted trainer steps)."""
  from swirl_jax.training.trainer import learning_rate_schedule
  config = TrainConfig(mode="online", steps=4, batch_size=4, sequence_length=64, checkpoint_every=100,
                       checkpoint_dir=str(tmp_path / "ckpt"), log_every=1)
  optimizer = OptimizerConfig(learning_rate=1e-3, warmup_steps=1)
  online_config = OnlineConfig(samples_per_state=2, max_action_tokens=2, clip_epsilon=0.2, updates_per_batch=3)
  schedule = learning_rate_schedule(optimizer, config.steps, online_config.updates_per_batch)
  assert float(schedule(3)) == pytest.approx(1e-3) and float(schedule(4 * 3 - 1)) > 1e-5
  trainer = Trainer(init_model(model_config("tiny"), seed=0), known_trajectories(), config,
                    scorer=FirstTokenScorer(range(100, 164)), optimizer=optimizer, online_config=online_config)
  last = trainer.train()
  counts = [int(x) for x in jax.tree.leaves(trainer.opt_state)
            if np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype, np.integer)]
  assert counts and set(counts) == {4 * 3}
  assert np.isfinite(last["loss"])


@pytest.mark.parametrize("make, bad, message", [
    (TrainConfig, dict(grad_accum_steps=0), "grad_accum_steps=0 must be at least 1"),
    (TrainConfig, dict(steps=-5), "steps=-5 must be at least 1"),
    (TrainConfig, dict(batch_size=0), "batch_size=0 must be at least 1"),
    (TrainConfig, dict(batch_size=6, grad_accum_steps=4), "batch_size=6 must be a multiple of grad_accum_steps=4"),
    (OnlineConfig, dict(baseline="mean"), "baseline='mean'"),
    (OnlineConfig, dict(samples_per_state=1), "rloo baseline needs samples_per_state >= 2"),
    (OnlineConfig, dict(updates_per_batch=2), "set clip_epsilon"),
    (OnlineConfig, dict(temperature=-1.0), "temperature=-1.0 must not be negative"),
    (OnlineConfig, dict(clip_epsilon=-0.1), "clip_epsilon=-0.1 must be positive"),
    (OnlineConfig, dict(importance_cap=0.5), "importance_cap=0.5 must be at least 1"),
    (OnlineConfig, dict(importance_cap=1.1, clip_epsilon=0.2), "above 1 + clip_epsilon"),
    (OptimizerConfig, dict(learning_rate=-1e-3), "learning_rate=-0.001 must not be negative"),
    (SftConfig, dict(context_weight=-1.0), "context_weight=-1.0 must not be negative"),
])
def test_bad_train_settings_are_refused_when_the_config_is_built(make, bad, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    make(**bad)


def test_online_rows_must_hold_whole_states(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=6 rows must be a multiple of OnlineConfig.samples_per_state=4"):
    Trainer(init_model(model_config("tiny")), known_trajectories(),
            TrainConfig(mode="online", batch_size=6, checkpoint_dir=str(tmp_path / "c")),
            online_config=OnlineConfig(samples_per_state=4), scorer=FirstTokenScorer([1]))


def test_bad_settings_elsewhere_are_refused_when_built():
  from swirl_jax.environment.episode import EpisodeConfig
  from swirl_jax.evaluation import EvalConfig
  from swirl_jax.generation import GenerateConfig
  from swirl_jax.pipeline import PipelineConfig
  from swirl_jax.sampling.sampler import SamplingConfig
  for make, message in ((lambda: PipelineConfig(filter_strategy="best"), "filter_strategy='best'"),
                        (lambda: SamplingConfig(temperature=-0.5), "temperature=-0.5"),
                        (lambda: SamplingConfig(top_p=0.0), "top_p=0.0"),
                        (lambda: EpisodeConfig(temperature=-1.0), "temperature=-1.0"),
                        (lambda: GenerateConfig(rows=0), "rows=0"),
                        (lambda: EvalConfig(questions_per_shard=0), "questions_per_shard=0")):
    with pytest.raises(ValueError, match=re.escape(message)):
      make()


def test_offline_gradient_accumulation_equals_one_large_batch(tmp_path):
  """The micro-batches hold different numbers of action tokens; the objective is the token-mean of
  the whole batch whatever grad_accum_steps is (it was a mean of per-micro-batch means)."""
  def trained(accum):
    model = init_model(model_config("tiny"), seed=0)
    config = TrainConfig(mode="offline", steps=2, batch_size=4, grad_accum_steps=accum, sequence_length=96,
                         checkpoint_every=100, checkpoint_dir=str(tmp_path / f"ckpt{accum}"), log_every=1)
    trainer = Trainer(model, known_trajectories(), config,
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1, grad_clip_norm=1e6))
    weights = trainer._offline_batch()[0][features.LOSS_WEIGHTS].sum(axis=1)
    trainer.stream.seek(0)
    losses_ = [trainer.run_step()["loss"] for _ in range(2)]  # the first update has learning rate 0
    return losses_[-1], weights, jax.tree.leaves(nnx.state(model))

  loss_1, weights, params_1 = trained(1)
  loss_4, _, params_4 = trained(4)
  initial = jax.tree.leaves(nnx.state(init_model(model_config("tiny"), seed=0)))
  assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(params_1, initial)) > 1e-3
  assert len(set(weights.tolist())) > 1  # unequal micro-batches: the case that differed
  assert loss_1 == pytest.approx(loss_4, rel=1e-5)
  for a, b in zip(params_1, params_4):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _long_context_trajectories(rows=4, context=480, action=8, vocab=512):
  from swirl_jax.records import Step, Trajectory, Verdict
  rng = np.random.default_rng(0)
  return [Trajectory(f"t{i}#0", f"t{i}", 0, "test", "q", ["1"], [Step(
      0, [2] + rng.integers(3, vocab, context - 1).tolist(), "", rng.integers(3, vocab, action).tolist(), "",
      [-1.0] * action, "tool", "stop_string", process=Verdict("GOOD", 1.0))], "1", "answered")
      for i in range(rows)]


def test_compiled_flops_is_xla_s_count_of_a_matmul():
  from swirl_jax.training.flops import compiled_flops
  a, b = jnp.ones((64, 96)), jnp.ones((96, 80))
  assert compiled_flops(jax.jit(jnp.matmul).lower(a, b)) == pytest.approx(2 * 64 * 96 * 80, rel=0.01)


@pytest.mark.slow
def test_mfu_counts_what_the_step_computes_and_the_peak_is_measured_only_when_asked(tmp_path, monkeypatch):
  """Long contexts, a few action tokens, a large vocabulary: counting 6 FLOPs per parameter per
  token (the tied embedding included) would overstate the step many times over."""
  from swirl_jax.training import peak
  config = model_config("tiny", vocab_size=32_768)
  base = TrainConfig(mode="offline", steps=1, batch_size=4, sequence_length=512, checkpoint_every=100,
                     checkpoint_dir=str(tmp_path / "ckpt"))
  monkeypatch.setattr(peak, "xla_matmul_peak", lambda *a, **k: pytest.fail("the peak was measured unasked"))
  plain = Trainer(init_model(config), _long_context_trajectories(), base).run_step()
  assert "mfu" not in plain and "update_flops_per_device" not in plain

  measured = []
  monkeypatch.setattr(peak, "xla_matmul_peak", lambda dtype="float32", **k: measured.append(dtype) or 1e11)
  trainer = Trainer(init_model(config), _long_context_trajectories(),
                    dataclasses.replace(base, measure_peak=True, checkpoint_dir=str(tmp_path / "ckpt2")))
  batch, _, _ = trainer._offline_batch()
  trainer.stream.seek(0)  # run_step builds the same batch again
  metrics = trainer.run_step()
  assert measured == ["float32"]  # once, in the model's compute dtype
  rows, length = batch[features.INPUT_TOKENS].shape
  slots = trainer._loss_slots(batch, np.arange(rows))  # logits are computed at these
  # What the step computes: per row, projections and MLP at every position and attention over
  # every (query, key) pair (dense, masked); logits only at the gathered slots; backward about
  # twice the forward.
  d, h, layers = config.embed_dim, config.head_dim, config.num_layers
  per_token = 2 * d * h * (2 * config.num_heads + 2 * config.num_kv_heads) + 2 * 3 * d * config.mlp_dim
  forward_row = length * layers * per_token + layers * 4 * config.num_heads * h * length * length
  analytic = 3 * (rows * forward_row + slots * 2 * d * config.vocab_size)
  old_count = 6 * config.num_params() * int((batch[features.SEGMENT_IDS] > 0).sum())
  assert 0.85 * analytic < metrics["update_flops_per_device"] < 1.3 * analytic, (metrics, analytic)
  assert old_count > 2 * metrics["update_flops_per_device"], (old_count, metrics["update_flops_per_device"])
  assert metrics["mfu"] == pytest.approx(metrics["update_flops_per_device"] / metrics["update_seconds"] / 1e11)
  # Gradient accumulation runs the micro-batch gradient in a scan, whose body XLA counts once:
  # the same batch in 2 micro-batches is about the same work, not half of it.
  accumulated = Trainer(init_model(config), _long_context_trajectories(),
                        dataclasses.replace(base, measure_peak=True, grad_accum_steps=2,
                                            checkpoint_dir=str(tmp_path / "ckpt3"))).run_step()
  assert 0.8 < accumulated["update_flops_per_device"] / metrics["update_flops_per_device"] < 1.25, accumulated


def test_a_task_every_process_must_refuse_is_refused_when_the_trainer_is_built(tmp_path):
  """An example longer than a row would be met by one process in its shard while the others wait
  in a collective: it is found from the task's agreed facts before any step."""
  with pytest.raises(ValueError, match=r"has an example of \d+ tokens; rows hold 40"):
    Trainer(init_model(model_config("tiny")), known_trajectories(),
            TrainConfig(mode="offline", sequence_length=40, checkpoint_dir=str(tmp_path / "c")))
  with pytest.raises(ValueError, match="shuffles inside its source"):
    Trainer(init_model(model_config("tiny")), known_trajectories(),
            TrainConfig(mode="offline", sequence_length=96, use_cached_task=True, checkpoint_dir=str(tmp_path / "d")))


@pytest.mark.slow
def test_online_kl_to_the_reference_trains_under_remat_as_without(tmp_path):
  """The reference params enter the micro-batch scan from outside; merged from there, nnx.remat
  refused them ("Cannot mutate Param from a different trace level"). Same update with and without
  remat."""
  params = {}
  for remat in ("none", "full"):
    model = init_model(model_config("tiny", remat=remat), seed=0)
    trainer = Trainer(model, known_trajectories(),
                      TrainConfig(mode="online", steps=2, batch_size=4, grad_accum_steps=2, sequence_length=96,
                                  checkpoint_dir=str(tmp_path / remat)),
                      online_config=OnlineConfig(samples_per_state=2, max_action_tokens=2, kl_coef=0.1),
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),
                      scorer=FirstTokenScorer(range(100, 300)))
    for _ in range(2):  # the first update has learning rate 0
      trainer.run_step()
    params[remat] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
  initial = [np.asarray(x) for x in jax.tree.leaves(nnx.state(init_model(model_config("tiny"), seed=0)))]
  assert max(float(np.abs(a - b).max()) for a, b in zip(params["none"], initial)) > 1e-4
  for a, b in zip(params["none"], params["full"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("on_mesh", [False, True])
def test_online_tree_rows_train_as_one_row_per_sample(tmp_path, on_mesh):
  """OnlineConfig.layout='tree' trains a row per state (its G samples as branches): the same
  updates as a row per sample, with grad accumulation, KL and clipping, alone and on a 2x2x2 mesh."""
  params, rows = {}, {}
  for layout in ("rows", "tree"):
    mesh, model = None, init_model(model_config("tiny"), seed=0)
    if on_mesh:
      mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
      model = partitioning.shard_model(model, mesh, partitioning.DEFAULT_RULES)
    trainer = Trainer(model, known_trajectories(),
                      TrainConfig(mode="online", steps=2, batch_size=16, grad_accum_steps=2, sequence_length=128,
                                  checkpoint_dir=str(tmp_path / layout)),
                      online_config=OnlineConfig(samples_per_state=2, max_action_tokens=3, kl_coef=0.1,
                                                 clip_epsilon=0.2, layout=layout),
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),
                      scorer=FirstTokenScorer(range(100, 300)), mesh=mesh)
    rows[layout] = trainer.total_rows
    for _ in range(2):  # the first update has learning rate 0
      trainer.run_step()
    params[layout] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
  assert rows == {"rows": 16, "tree": 8}
  initial = [np.asarray(x) for x in jax.tree.leaves(nnx.state(init_model(model_config("tiny"), seed=0)))]
  assert max(float(np.abs(a - b).max()) for a, b in zip(params["rows"], initial)) > 1e-4
  # Adam's first real update moves a weight by about the learning rate (1e-2); the layouts agree to
  # 1e-5 (on the mesh, sums in another order move single weights by up to 7e-6).
  for a, b in zip(params["rows"], params["tree"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_online_row_lengths_and_loss_slots_take_a_bounded_set_of_shapes():
  """Every longest row (1 to 2,048 tokens) and every loss count of an online step at 2,048 tokens
  and 16 rows a micro-batch: at most 9 row lengths x 4 loss-slot sizes, each slot count holding its
  batch's loss positions (multiples of 128 and powers of two made 16 x 10 shapes)."""
  from swirl_jax.training import online
  from swirl_jax.training.logprobs import loss_slots_for
  length, rows, levels = 2048, 16, 4
  assert online.row_length_buckets(length) == (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
  assert online.row_length_buckets(100) == (100,) and online.row_length_buckets(300) == (128, 192, 256, 300)
  row_lengths = set()
  for longest in range(1, length + 1):
    row_length = online._padded_length(longest, length)
    assert longest <= row_length <= max(128, longest * 3 // 2 + 1)
    row_lengths.add(row_length)
  shapes = set()
  for row_length in row_lengths:
    positions = rows * row_length
    for count in range(0, positions + 1, 7):
      slots = loss_slots_for(count, positions, levels)
      assert count <= slots <= positions
      shapes.add((row_length, slots))
  assert len(shapes) <= 9 * levels, len(shapes)
  with pytest.raises(ValueError, match="need 2049 tokens"):
    online._padded_length(2049, length)


@pytest.mark.slow  # compiles several programs on purpose: the full tier
def test_an_online_run_counts_the_update_programs_it_compiles(tmp_path):
  """The step_programs metric counts the update programs that really compiled (jit's own cache), and
  stays within Trainer.max_step_programs(), with actions of varied lengths (a stop id a token in 5)."""
  model = init_model(model_config("tiny"), seed=0)
  trainer = Trainer(model, known_trajectories(),
                    TrainConfig(mode="online", steps=5, batch_size=8, sequence_length=384, loss_slot_levels=2,
                                checkpoint_dir=str(tmp_path / "ckpt")),
                    online_config=OnlineConfig(samples_per_state=2, max_action_tokens=200, temperature=1.0),
                    optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1),
                    scorer=FirstTokenScorer(range(100, 300)), stop_ids=range(0, 512, 5))
  assert trainer.max_step_programs() == len((128, 192, 256, 384)) * 2
  before = trainer._train_step._cache_size()
  metrics = [trainer.run_step() for _ in range(5)]
  compiled = trainer._train_step._cache_size() - before
  assert metrics[-1]["step_programs"] == compiled == len(trainer.step_programs) <= trainer.max_step_programs()
  assert [m["step_programs"] for m in metrics] == sorted(m["step_programs"] for m in metrics)
