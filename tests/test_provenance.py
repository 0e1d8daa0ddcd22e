"""Every resumable output records what made it; a run with other settings, data or model refuses it."""

import dataclasses
import json
import os

import pytest

from swirl_jax import evaluation, generation, judging, provenance, tasks
from swirl_jax.checkpoints import policy
from swirl_jax.checkpoints.policy import load_policy
from swirl_jax.data import trajectory_io
from swirl_jax.environment import protocol
from swirl_jax.environment.episode import EpisodeConfig
from swirl_jax.models import init_model, model_config
from swirl_jax.records import Verdict
from swirl_jax.training.trainer import OptimizerConfig, TrainConfig, Trainer
from swirl_jax.testing.judged import known_trajectories


@pytest.fixture(scope="module")
def tiny_policy(tokenizer_gguf, tmp_path_factory):
  os.environ.setdefault("SWIRL_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  return load_policy(source="init", config_name="tiny", tokenizer_gguf=tokenizer_gguf)


def _task():
  return tasks.build_task("builtin_arithmetic", split="test", num_questions=2, template=protocol.PromptTemplate("Solve.", ()),
                          arithmetic_max_steps=2)


def test_evaluation_of_another_model_is_refused_and_the_report_names_its_checkpoint(tmp_path, tiny_policy):
  model, vocab = tiny_policy
  config = evaluation.EvalConfig(output_dir=str(tmp_path), rows=2, capacity=1024, max_action_tokens=8)
  first = policy.policy_identity({"step": 100, "training": "abc"})
  report = evaluation.evaluate(_task(), model, vocab, "model", config, model_id=first)
  assert report["checkpoint_step"] == 100 and report["model"] == first
  # Evaluating checkpoint 200 under the same name must not print checkpoint 100's numbers.
  with pytest.raises(ValueError, match=r"model was made with other settings, data or model \(model\.checkpoint\.step: 100 -> 200\); remove "):
    evaluation.evaluate(_task(), model, vocab, "model", config,
                        model_id=policy.policy_identity({"step": 200, "training": "abc"}))
  with pytest.raises(ValueError, match=r"config\.max_action_tokens: 8 -> 9"):
    evaluation.evaluate(_task(), model, vocab, "model", dataclasses.replace(config, max_action_tokens=9),
                        model_id=first)
  # The same model and settings: the finished shards are reused, the same report comes back.
  assert evaluation.evaluate(_task(), model, vocab, "model", config, model_id=first) == report


def test_generation_refuses_shards_made_with_other_settings_or_without_a_fingerprint(tmp_path, tiny_policy):
  model, vocab = tiny_policy
  config = generation.GenerateConfig(output_dir=str(tmp_path / "gen"), samples_per_question=1, rows=2,
                                     capacity=1024, questions_per_shard=1)
  episode = EpisodeConfig(max_action_tokens=8, max_steps=1)
  generation.generate(_task(), model, vocab, config, episode)
  with pytest.raises(ValueError, match=r"episode\.temperature: 1\.0 -> 0\.5"):
    generation.generate(_task(), model, vocab, config, dataclasses.replace(episode, temperature=0.5))
  other_questions = tasks.build_task("builtin_arithmetic", split="test", num_questions=2, seed=1, 
                                     template=protocol.PromptTemplate("Solve.", ()), arithmetic_max_steps=2)
  with pytest.raises(ValueError, match=r"task\.question_digest"):
    generation.generate(other_questions, model, vocab, config, episode)
  # Rows are not part of it (per-row keys give the same trajectories in any batch): the finished
  # shards are reused as they are.
  stamps = {p: os.stat(p).st_mtime_ns for p in trajectory_io.shard_files(config.output_dir)}
  summary = generation.generate(_task(), model, vocab, dataclasses.replace(config, rows=1), episode)
  assert summary["shards_generated_now"] == 0 and len(stamps) == 2
  assert {p: os.stat(p).st_mtime_ns for p in trajectory_io.shard_files(config.output_dir)} == stamps
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / "trajectories-s00000.jsonl").write_text("")
  with pytest.raises(ValueError, match=r"legacy holds outputs without a fingerprint\.json"):
    generation.generate(_task(), model, vocab, dataclasses.replace(config, output_dir=str(legacy)), episode)


class _FixedJudge:
  name = "fixed"

  def __init__(self, label):
    self.identity = {"kind": "fixed", "label": label}
    self.label = label

  def judge_steps(self, requests):
    return [Verdict(self.label, 1.0, "", self.name) for _ in requests]

  def judge_outcomes(self, requests):
    return [Verdict("YES", 1.0, "", self.name) for _ in requests]


def test_judged_shards_of_another_judge_or_input_are_refused(tmp_path):
  inputs, judged = tmp_path / "in", tmp_path / "judged"
  trajectory_io.write_shard(trajectory_io.shard_path(str(inputs), 0), known_trajectories())
  judging.judge_directory(str(inputs), str(judged), _FixedJudge("GOOD"))
  with pytest.raises(ValueError, match=r"judge\.label: \"GOOD\" -> \"BAD\""):
    judging.judge_directory(str(inputs), str(judged), _FixedJudge("BAD"))
  trajectory_io.write_shard(trajectory_io.shard_path(str(inputs), 0), known_trajectories(seed=1)[:2])
  with pytest.raises(ValueError, match=r"input\.shards"):
    judging.judge_directory(str(inputs), str(judged), _FixedJudge("GOOD"))


def test_a_checkpoint_trained_on_other_data_or_settings_is_not_resumed(tmp_path):
  config = TrainConfig(mode="offline", steps=1, batch_size=2, sequence_length=96, checkpoint_every=1,
                       checkpoint_dir=str(tmp_path / "ckpt"))
  Trainer(init_model(model_config("tiny")), known_trajectories(), config).train()
  same = Trainer(init_model(model_config("tiny")), known_trajectories(), config)
  assert same.restore_latest() and same.step == 1
  with pytest.raises(ValueError, match=r"checkpoint 1 was made with other settings, data or model \(data\.data: "):
    Trainer(init_model(model_config("tiny")), known_trajectories(seed=1), config).restore_latest()
  with pytest.raises(ValueError, match=r"optimizer\.learning_rate: 1e-05 -> 0\.002"):
    Trainer(init_model(model_config("tiny")), known_trajectories(), config,
            optimizer=OptimizerConfig(learning_rate=2e-3)).restore_latest()
  with pytest.raises(ValueError, match=r"config\.seed: 0 -> 1"):
    Trainer(init_model(model_config("tiny")), known_trajectories(), dataclasses.replace(config, seed=1)).train()


def test_the_fingerprint_file_is_what_was_recorded(tmp_path):
  provenance.claim(str(tmp_path), {"a": 1, "b": {"c": [1, 2]}}, has_outputs=False)
  assert json.loads((tmp_path / provenance.FILE_NAME).read_text()) == {"a": 1, "b": {"c": [1, 2]}}
  provenance.claim(str(tmp_path), {"a": 1, "b": {"c": [1, 2]}}, has_outputs=True)
  with pytest.raises(ValueError, match=r"b\.c: \[1, 2\] -> \[1, 3\]"):
    provenance.claim(str(tmp_path), {"a": 1, "b": {"c": [1, 3]}}, has_outputs=True)
  (tmp_path / provenance.FILE_NAME).write_text("{broken")
  with pytest.raises(ValueError, match="unreadable fingerprint"):
    provenance.claim(str(tmp_path), {"a": 1}, has_outputs=True)


def test_load_policy_loads_a_trainer_checkpoint_and_names_it_by_what_it_holds(tmp_path, tokenizer_gguf):
  import gin
  import jax
  import numpy as np
  from flax import nnx
  checkpoints = str(tmp_path / "run" / "ckpt")
  config = TrainConfig(mode="offline", steps=2, batch_size=2, sequence_length=96, checkpoint_dir=checkpoints)
  model = init_model(model_config("tiny"))
  trainer = Trainer(model, known_trajectories(), config, optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1))
  trainer.train()
  arguments = dict(source="init", config_name="tiny", tokenizer_gguf=tokenizer_gguf)
  loaded, _ = load_policy(**arguments, checkpoint_dir=checkpoints)
  untrained, _ = load_policy(**arguments)
  leaves = lambda m: [np.asarray(x) for x in jax.tree.leaves(nnx.state(m))]
  for a, b in zip(leaves(model), leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(model), leaves(untrained)))
  # Named by the step and training it holds, not by where it lies (the same identity a pipeline
  # gives the trainer's params).
  try:
    gin.bind_parameter("load_policy.checkpoint_dir", checkpoints)
    assert policy.policy_identity()["checkpoint"] == trainer.identity()
    assert "checkpoint_dir" not in policy.policy_identity()["policy"]
  finally:
    gin.clear_config()
  with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
    load_policy(**arguments, checkpoint_dir=str(tmp_path / "missing"))


def test_the_policy_identity_sees_what_gin_binds_on_model_config():
  """model_config decides the architecture and dtypes: policies that differ there have other
  identities, so generation, evaluation and the trainer refuse each other's outputs."""
  import gin
  settings = [["model_config.name = 'tiny'"], ["model_config.name = 'tiny_2m'"],
              ["model_config.name = 'tiny_2m'", "model_config.dtype = 'bfloat16'"],
              ["model_config.name = 'tiny'", "load_policy.scan_layers = True"], ["model_config.name = 'tiny'"]]
  identities = []
  for bindings in settings:
    with gin.unlock_config():
      gin.parse_config(["load_policy.source = 'init'"] + bindings)
    try:
      identities.append(json.dumps(policy.policy_identity(), sort_keys=True))
    finally:
      gin.clear_config()
  assert identities[0] == identities[4]
  assert len(set(identities[:4])) == 4, identities


@pytest.mark.slow
def test_evaluating_a_checkpoint_on_questions_it_was_trained_on_is_refused(tmp_path):
  """The trainer records digests of its training questions with each checkpoint; --mode=evaluate
  refuses a test set that holds one of them (before the model loads), unless allowed."""
  import gin
  from swirl_jax import main, runtime
  trajectories = known_trajectories()
  trainer = Trainer(init_model(model_config("tiny"), seed=0), trajectories,
                    TrainConfig(mode="sft", steps=1, batch_size=2, sequence_length=128,
                                checkpoint_dir=str(tmp_path / "ckpt")))
  trainer.train()
  test = tmp_path / "test.jsonl"
  test.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n"
                          for q in ["a question never trained on?", "  QUESTION of " + trajectories[0].question[12:]]))
  bindings = ["build_task.name = 'gsm8k'", f"build_task.eval_path = '{test}'",
              f"run_evaluate.checkpoint_dir = '{tmp_path / 'ckpt'}'", "load_policy.source = 'no such source'"]
  rt = runtime.Runtime(None, ())
  for allow, expected in ((False, r"1 of 2 evaluation questions are also questions .*ckpt was trained on "
                                  r"\(e\.g\. gsm8k:.*test\.jsonl:1\).*run_evaluate\.allow_training_questions=True"),
                          (True, r"make_judge\(kind='rule'\)")):
    with gin.unlock_config():
      gin.parse_config(bindings + [f"run_evaluate.allow_training_questions = {allow}"])
    try:
      with pytest.raises(ValueError, match=expected):  # allowed: it goes on, to build the judge
        main.run_evaluate(rt)
    finally:
      gin.clear_config()


def test_the_family_switches_count_in_a_policy_identity_only_where_they_are_not_gemma_s():
  """A Gemma policy's identity is what it was before Qwen3 and Llama 3 came (so its checkpoints and
  outputs are still its own); a Qwen3 policy's names its switches."""
  import gin
  try:
    gin.bind_parameter("model_config.name", "tiny")
    gemma = policy.policy_identity()["model_config"]
    gin.bind_parameter("model_config.name", "tiny_qwen3")
    qwen = policy.policy_identity()["model_config"]
  finally:
    gin.clear_config()
  assert not set(policy.FAMILY_FIELDS) & set(gemma)
  assert {"norm_offset", "post_norms", "mlp_activation", "scale_embeddings"} <= set(qwen)
  assert provenance.digest(gemma) != provenance.digest(qwen)
