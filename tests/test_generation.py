"""Stage 1 from the command line: shards, summary, and SIGKILL then resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from swirl_jax.testing.subprocesses import cpu_env
from swirl_jax.data import trajectory_io

QUESTIONS, SAMPLES, PER_SHARD = 12, 3, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(tokenizer_gguf, output_dir):
  bindings = [
      "load_policy.source='init'", "load_policy.config_name='tiny'", f"load_policy.tokenizer_gguf='{tokenizer_gguf}'",
      "build_task.name='builtin_arithmetic'", f"build_task.num_questions={QUESTIONS}", "PromptTemplate.examples=()",
      "PromptTemplate.instructions='Solve.'", "build_task.arithmetic_max_steps=2",
      f"GenerateConfig.output_dir='{output_dir}'", f"GenerateConfig.samples_per_question={SAMPLES}",
      f"GenerateConfig.questions_per_shard={PER_SHARD}", "GenerateConfig.rows=4", "GenerateConfig.capacity=1024",
      "EpisodeConfig.max_action_tokens=24", "EpisodeConfig.on_malformed='feedback'", "EpisodeConfig.max_steps=2",
  ]
  return [sys.executable, "-m", "swirl_jax.main", "--mode=generate"] + [f"--gin.{b}" for b in bindings]


def _ids(directory):
  return [t.id for t in trajectory_io.read_all(directory)]


@pytest.mark.slow
def test_generate_killed_and_resumed_writes_each_trajectory_once(tmp_path, tokenizer_gguf):
  expected = sorted(f"arith-train-0-{i}#{s}" for i in range(QUESTIONS) for s in range(SAMPLES))
  # An uninterrupted run, for reference.
  clean = tmp_path / "clean"
  subprocess.run(_command(tokenizer_gguf, clean), env=cpu_env(tmp_path), check=True, capture_output=True)
  assert sorted(_ids(clean)) == expected
  summary = json.loads((clean / "summary-p000.json").read_text())
  assert summary["trajectories"] == len(expected) and summary["shards"] == QUESTIONS // PER_SHARD
  assert {"steps_per_trajectory", "malformed_rate", "tool_errors", "tokens_per_second"} <= set(summary)

  # Killed with SIGKILL once a shard is on disk, then run again.
  resumed = tmp_path / "resumed"
  process = subprocess.Popen(_command(tokenizer_gguf, resumed), env=cpu_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while not trajectory_io.shard_files(str(resumed)) and process.poll() is None:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  first = len(trajectory_io.shard_files(str(resumed)))
  assert 0 < first < QUESTIONS // PER_SHARD, "the kill came too late to test resuming"
  subprocess.run(_command(tokenizer_gguf, resumed), env=cpu_env(tmp_path), check=True, capture_output=True)
  ids = _ids(resumed)
  assert sorted(ids) == expected and len(set(ids)) == len(ids)
  assert not [f for f in os.listdir(resumed) if f.endswith(".tmp")]
  summary = json.loads((resumed / "summary-p000.json").read_text())
  assert summary["shards_generated_now"] == QUESTIONS // PER_SHARD - first
  # Keys per (question, sample, turn): the resumed run wrote what the uninterrupted one did. Rows
  # are batched differently after a resume, so log-probs may differ in their last float bits.
  for a, b in zip(trajectory_io.shard_files(str(clean)), trajectory_io.shard_files(str(resumed))):
    for x, y in zip(trajectory_io.read_shard(a), trajectory_io.read_shard(b), strict=True):
      assert x.id == y.id and x.final_answer == y.final_answer and x.finish == y.finish
      for s, t in zip(x.steps, y.steps, strict=True):
        assert (s.context_tokens, s.action_tokens, s.action_text, s.tool_output) == \
            (t.context_tokens, t.action_tokens, t.action_text, t.tool_output)
        np.testing.assert_allclose(s.behaviour_logprobs, t.behaviour_logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_judge_mode_with_the_rule_judge(tmp_path, tokenizer_gguf):
  """generate then judge from the command line; every step and trajectory gets a verdict."""
  generated = tmp_path / "generated"
  subprocess.run(_command(tokenizer_gguf, generated), env=cpu_env(tmp_path), check=True, capture_output=True)
  judged = tmp_path / "judged"
  command = [sys.executable, "-m", "swirl_jax.main", "--mode=judge",
             "--gin.build_task.name='builtin_arithmetic'", f"--gin.build_task.num_questions={QUESTIONS}",
             f"--gin.judge_directory.input_dir='{generated}'", f"--gin.judge_directory.output_dir='{judged}'",
             "--gin.make_judge.kind='rule'"]
  out = subprocess.run(command, env=cpu_env(tmp_path), check=True, capture_output=True, text=True)
  summary = json.loads((judged / "judge_summary.json").read_text())
  trajectories = list(trajectory_io.read_all(str(judged)))
  assert len(trajectories) == QUESTIONS * SAMPLES
  assert all(t.outcome.verdict in ("YES", "NO") for t in trajectories)
  assert all(s.process.verdict in ("GOOD", "BAD") for t in trajectories for s in t.steps)
  assert summary["filter_survival"]["none"] == QUESTIONS * SAMPLES
  assert '"filter_survival"' in out.stdout
