"""The `evaluate` stage: the tool loop on held-out questions, graded, with a report.

Accuracy (rule matchers or an outcome judge) with a 95% Wilson interval, token
F1 for QA, mean steps, and the share of steps the process judge calls GOOD
(the paper's Table 3 measure). Writes report.json per model, and report.md, report.png and
comparison.json for several side by side.

Multi-host: questions are cut into shards as in Stage 1 (shard k belongs to
process k % process_count); each process runs and grades (judges) only its own
shards, and the per-question grades of all processes are gathered, so every
process holds the same report, equal to a one-process run's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import gin
import jax
from jax.sharding import Mesh

from swirl_jax import atomic_io, multihost, partitioning, provenance, validation
from swirl_jax.checkpoints import policy
from swirl_jax.data import trajectory_io
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.generation import check_unique_ids, run_sharded_episodes
from swirl_jax.judging import process_requests
from swirl_jax.models.transformer import Transformer
from swirl_jax.records import Trajectory
from swirl_jax.rewards.answers import answer_correct, token_f1
from swirl_jax.rewards.judge import Judge, OutcomeRequest
from swirl_jax.sampling.interfaces import Vocabulary
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
  questions_per_shard: int = 16  # shards are the unit of work per process: have more than processes

  def __post_init__(self):
    validation.at_least_one(self, ("rows", "capacity", "max_action_tokens", "questions_per_shard"))
    validation.sampling_settings(self)


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a proportion (sound near 0 and 1, unlike p +/- 1.96 se)."""
  if total == 0:
    return (0.0, 0.0)
  p = correct / total
  denominator = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denominator
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
  return (max(0.0, centre - half), min(1.0, centre + half))


def grade_each(trajectories: Sequence[Trajectory], judge: Judge | None = None, grade_with_judge: bool = False) -> list[dict]:
  """One record per trajectory (correct, F1, steps, answered, GOOD and judged steps): what a
  process contributes to a report."""
  trajectories = list(trajectories)
  if grade_with_judge and judge is not None:
    verdicts = judge.judge_outcomes([OutcomeRequest(t.question, t.final_answer, tuple(t.gold_answers), t.question_id)
                                     for t in trajectories])
    correct = [v.verdict == "YES" for v in verdicts]
  else:
    correct = [answer_correct(t.final_answer, t.gold_answers) for t in trajectories]
  records = [{"question_id": t.question_id, "correct": bool(c), "f1": token_f1(t.final_answer or "", t.gold_answers),
              "steps": len(t.steps), "answered": t.final_answer is not None}
             for t, c in zip(trajectories, correct)]
  if judge is not None:
    verdicts = iter(judge.judge_steps([r for t in trajectories for r in process_requests(t)]))
    for record, t in zip(records, trajectories):
      step_verdicts = [next(verdicts).verdict for _ in t.steps]
      record["good_steps"] = sum(v == "GOOD" for v in step_verdicts)
      record["judged_steps"] = sum(v is not None for v in step_verdicts)
  return records


def report_of(records: list[dict], judged: bool) -> dict:
  """Accuracy, interval, F1, steps and the GOOD-step share of graded records (in a fixed order)."""
  n, k = len(records), sum(r["correct"] for r in records)
  low, high = wilson_interval(k, n)
  report = {
      "questions": n, "correct": k, "accuracy": k / n if n else 0.0, "accuracy_95ci": [low, high],
      "token_f1": sum(r["f1"] for r in records) / max(n, 1),
      "mean_steps": sum(r["steps"] for r in records) / max(n, 1),
      "answered": sum(r["answered"] for r in records) / max(n, 1),
  }
  if judged:
    steps = sum(r["judged_steps"] for r in records)
    report["good_step_share"] = sum(r["good_steps"] for r in records) / steps if steps else None
  return report


def grade(trajectories: Sequence[Trajectory], judge: Judge | None = None, grade_with_judge: bool = False) -> dict:
  """Accuracy, interval, F1, steps and the GOOD-step share of finished trajectories."""
  return report_of(grade_each(trajectories, judge, grade_with_judge), judged=judge is not None)


def evaluate(task: Task, model: Transformer, vocab: Vocabulary, name: str, config: EvalConfig | None = None,
             judge: Judge | None = None, mesh: Mesh | None=None, rules: partitioning.LogicalRules | None=None, model_id: dict | None = None,
             layout: partitioning.SamplingLayout | None = None) -> dict:
  """Runs the tool loop once per held-out question; writes trajectories and the report.

  `model_id` says which model this is (default: the gin-configured policy, with
  no trained checkpoint); the report records it, and trajectories of another
  model, task or setting under `name` are refused, not graded as this model's.
  Collective: every process of a run calls it; each returns the whole run's report. `config`
  defaults to the gin-configured EvalConfig, built at call time (after gin has parsed); `layout`
  (default: gin's SamplingLayout) is where the sampler decodes.
  """
  config = config or EvalConfig()
  layout = layout or partitioning.SamplingLayout()
  directory = os.path.join(config.output_dir, name)
  process, processes = jax.process_index(), jax.process_count()
  check_unique_ids(task)
  model_id = model_id or policy.policy_identity()
  fingerprint = {"stage": "evaluate", "task": provenance.task_identity(task),
                 "config": provenance.config_fields(config, ("output_dir", "rows")), "model": model_id,
                 "sampling": layout.identity()}
  provenance.claim(directory, fingerprint, has_outputs=bool(trajectory_io.shard_files(directory)))
  n_shards = -(-len(task.questions) // config.questions_per_shard)
  mine = [k for k in range(n_shards) if k % processes == process]
  todo = [k for k in mine if not os.path.exists(trajectory_io.shard_path(directory, k))]
  if multihost.any_process(bool(todo)):  # the sampler is collective: all build it, or none
    sampler = Sampler(model, rows=config.rows, capacity=config.capacity, vocab=vocab, mesh=mesh, rules=rules,
                      layout=layout)
    episode = EpisodeConfig(max_steps=task.max_steps, temperature=config.temperature,
                            max_action_tokens=config.max_action_tokens)
    runner = EpisodeRunner(sampler, vocab, task.tools, task.template, episode)
    per_shard = config.questions_per_shard
    run_sharded_episodes(
        runner, {k: [(q, 0) for q in task.questions[k * per_shard:(k + 1) * per_shard]] for k in todo},
        lambda k, done: trajectory_io.write_shard(trajectory_io.shard_path(directory, k), done))
  mine_done, stale = [], None
  for k in mine:
    path = trajectory_io.shard_path(directory, k)
    shard = list(trajectory_io.read_shard(path))
    expected = [q.id for q in task.questions[k * config.questions_per_shard:(k + 1) * config.questions_per_shard]]
    if sorted(t.question_id for t in shard) != sorted(expected):
      stale = stale or (f"{path} holds other questions than shard {k} of {task.name} ({len(expected)} per shard): "
                        f"an older run's output; remove {directory} to evaluate afresh")
    mine_done += shard
  multihost.raise_together(stale)
  records = [r for part in multihost.allgather_json(grade_each(mine_done, judge, config.grade_with_judge))
             for r in part]
  order = {q.id: i for i, q in enumerate(task.questions)}
  records.sort(key=lambda r: order[r["question_id"]])
  report = report_of(records, judged=judge is not None)
  report.update(name=name, task=task.name, model=model_id,
                checkpoint_step=(model_id.get("checkpoint") or {}).get("step"))
  if process == 0:
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
  # comparison.json, not report.json: the directory may be a report's own (run_evaluate's).
  with atomic_io.atomic_open(os.path.join(output_dir, "comparison.json")) as f:
    json.dump(reports, f, indent=1)
  return table
