"""The pipeline mode end to end on the tiny model, then again: every stage skips its finished work."""

import json
import os
import subprocess
import sys

from swirl_jax.evaluation import grade, wilson_interval, write_comparison
from tests.judged_data import known_trajectories
from tests.test_generation import _env


def _command(tokenizer, run_dir):
  bindings = [
      "load_policy.source='init'", "load_policy.config_name='tiny'", f"load_policy.tokenizer_gguf='{tokenizer}'",
      "build_task.name='builtin_arithmetic'", "build_task.num_questions=4", "build_task.few_shot=False",
      "make_judge.kind='rule'", f"PipelineConfig.run_dir='{run_dir}'", "PipelineConfig.filter_strategy='none'",
      "PipelineConfig.eval_questions=4", "GenerateConfig.samples_per_question=2", "GenerateConfig.rows=4",
      "GenerateConfig.capacity=1024", "GenerateConfig.questions_per_shard=2", "EpisodeConfig.max_action_tokens=16",
      "EpisodeConfig.max_steps=2", "EvalConfig.rows=4", "EvalConfig.capacity=1024", "EvalConfig.max_action_tokens=16",
      "TrainConfig.mode='online'", "TrainConfig.steps=2", "TrainConfig.batch_size=2", "TrainConfig.samples_per_state=2",
      "TrainConfig.max_action_tokens=8", "TrainConfig.sequence_length=1024", "TrainConfig.checkpoint_every=1",
  ]
  return [sys.executable, "-m", "swirl_jax.main", "--mode=pipeline"] + [f"--gin.{b}" for b in bindings]


def test_pipeline_runs_and_resumes(tmp_path, tokenizer_gguf):
  run_dir = tmp_path / "run"
  first = subprocess.run(_command(tokenizer_gguf, run_dir), env=_env(tmp_path), capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["train_steps"] == 2 and summary["filter_survival"]["none"] == 8
  for name in ("report.md", "report.png", "comparison.json", "base/report.json", "trained/report.json"):
    assert (run_dir / "eval" / name).stat().st_size > 0
  assert "base accuracy" in first.stdout and "trained" in first.stdout
  assert "One held-out episode of the trained model" in first.stdout and "--- step 0: action" in first.stdout
  assert os.path.exists(run_dir / "metrics" / "metrics.jsonl")
  stamps = {p: os.stat(p).st_mtime_ns for p in run_dir.rglob("trajectories-s*.jsonl")}

  again = subprocess.run(_command(tokenizer_gguf, run_dir), env=_env(tmp_path), capture_output=True, text=True)
  assert again.returncode == 0, again.stderr[-3000:]
  assert {p: os.stat(p).st_mtime_ns for p in run_dir.rglob("trajectories-s*.jsonl")} == stamps  # nothing redone
  gen = json.loads((run_dir / "trajectories" / "summary-p000.json").read_text())
  assert gen["shards_generated_now"] == 0
  assert json.loads((run_dir / "summary.json").read_text())["train_steps"] == 2


def test_grading_and_report(tmp_path):
  low, high = wilson_interval(45, 100)
  assert 0.35 < low < 0.36 and 0.54 < high < 0.55
  assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
  trajectories = known_trajectories()
  trajectories[0].final_answer = "A"  # gold "a": correct after normalization
  trajectories[1].final_answer = None
  report = grade(trajectories)
  assert report["questions"] == 6 and report["correct"] == 5 and report["answered"] == 5 / 6
  report.update(name="base", task="test")
  table = write_comparison([report, {**report, "name": "trained"}], str(tmp_path))
  assert "| base | test | 0.833 |" in table
  assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
