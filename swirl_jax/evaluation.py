"""The `evaluate` stage: the tool loop on held-out questions, graded, with a report.

Accuracy (rule matchers or an outcome judge) with a 95% Wilson interval, token
F1 for QA, mean steps, and the share of steps the process judge calls GOOD
(the paper's Table 3 measure). Writes report.json, report.md and report.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import gin

from swirl_jax import atomic_io
from swirl_jax.data import trajectory_io
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.judging import process_requests
from swirl_jax.rewards.answers import answer_correct, token_f1
from swirl_jax.rewards.judge import Judge, OutcomeRequest
from swirl_jax.sampling.sampler import Sampler
from swirl_jax.tasks import Task


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  output_dir: str = "runs/default/eval"
  rows: int = 16
  capacity: int = 2048
  temperature: float = 0.0  # greedy
  max_action_tokens: int = 192
  grade_with_judge: bool = False  # outcome judge instead of the rule matchers


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a proportion (sound near 0 and 1, unlike p +/- 1.96 se)."""
  if total == 0:
    return (0.0, 0.0)
  p = correct / total
  denominator = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denominator
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
  return (max(0.0, centre - half), min(1.0, centre + half))


def grade(trajectories, judge: Judge | None = None, grade_with_judge: bool = False) -> dict:
  """Accuracy, interval, F1, steps and the GOOD-step share of finished trajectories."""
  trajectories = list(trajectories)
  if grade_with_judge and judge is not None:
    verdicts = judge.judge_outcomes([OutcomeRequest(t.question, t.final_answer, tuple(t.gold_answers), t.question_id)
                                     for t in trajectories])
    correct = [v.verdict == "YES" for v in verdicts]
  else:
    correct = [answer_correct(t.final_answer, t.gold_answers) for t in trajectories]
  n, k = len(trajectories), sum(correct)
  low, high = wilson_interval(k, n)
  report = {
      "questions": n, "correct": k, "accuracy": k / n if n else 0.0, "accuracy_95ci": [low, high],
      "token_f1": sum(token_f1(t.final_answer or "", t.gold_answers) for t in trajectories) / max(n, 1),
      "mean_steps": sum(len(t.steps) for t in trajectories) / max(n, 1),
      "answered": sum(t.final_answer is not None for t in trajectories) / max(n, 1),
  }
  if judge is not None:
    verdicts = judge.judge_steps([r for t in trajectories for r in process_requests(t)])
    judged = [v for v in verdicts if v.verdict is not None]
    report["good_step_share"] = sum(v.verdict == "GOOD" for v in judged) / len(judged) if judged else None
  return report


def evaluate(task: Task, model, vocab, name: str, config: EvalConfig = EvalConfig(),
             judge: Judge | None = None, mesh=None) -> dict:
  """Runs the tool loop once per held-out question; writes trajectories and the report."""
  directory = os.path.join(config.output_dir, name)
  path = trajectory_io.shard_path(directory, 0)
  if not os.path.exists(path):
    sampler = Sampler(model, rows=config.rows, capacity=config.capacity, vocab=vocab, mesh=mesh)
    episode = EpisodeConfig(max_steps=task.max_steps, temperature=config.temperature,
                            max_action_tokens=config.max_action_tokens)
    runner = EpisodeRunner(sampler, vocab, task.tools, task.template, episode)
    trajectories = sorted(runner.run([(q, 0) for q in task.questions]), key=lambda t: t.question_id)
    trajectory_io.write_shard(path, trajectories)
  report = grade(trajectory_io.read_shard(path), judge, config.grade_with_judge)
  report.update(name=name, task=task.name)
  with atomic_io.atomic_open(os.path.join(directory, "report.json")) as f:
    json.dump(report, f, indent=1)
  return report


def write_comparison(reports: list[dict], output_dir: str) -> str:
  """A Markdown table and a bar chart (accuracy with its interval) of several reports."""
  lines = ["| model | task | accuracy | 95% interval | token F1 | mean steps | GOOD steps |",
           "|---|---|---|---|---|---|---|"]
  for r in reports:
    good = "-" if r.get("good_step_share") is None else f"{r['good_step_share']:.3f}"
    lines.append(f"| {r['name']} | {r['task']} | {r['accuracy']:.3f} | [{r['accuracy_95ci'][0]:.3f}, "
                 f"{r['accuracy_95ci'][1]:.3f}] | {r['token_f1']:.3f} | {r['mean_steps']:.2f} | {good} |")
  table = "\n".join(lines) + "\n"
  with atomic_io.atomic_open(os.path.join(output_dir, "report.md")) as f:
    f.write(table)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(reports), 3.2))
  accuracy = [r["accuracy"] for r in reports]
  errors = [[a - r["accuracy_95ci"][0] for a, r in zip(accuracy, reports)],
            [r["accuracy_95ci"][1] - a for a, r in zip(accuracy, reports)]]
  ax.bar([r["name"] for r in reports], accuracy, yerr=errors, capsize=4, color="#4c72b0")
  ax.set_ylabel("accuracy (95% interval)")
  ax.set_ylim(0, 1)
  ax.set_title(reports[0]["task"] if reports else "")
  fig.tight_layout()
  with atomic_io.atomic_path(os.path.join(output_dir, "report.png")) as tmp:
    fig.savefig(tmp, format="png", dpi=120)
  plt.close(fig)
  with atomic_io.atomic_open(os.path.join(output_dir, "report.json")) as f:
    json.dump(reports, f, indent=1)
  return table
