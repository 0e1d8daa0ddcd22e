"""The `pipeline` mode: evaluate the base model, generate, judge, filter, train, evaluate again.

Each stage skips what its outputs already hold (finished shards, judged shards,
the last checkpoint, evaluation files), so a killed pipeline run again resumes
where it stopped; each output records a fingerprint of what made it, and a run
with other settings, data or model refuses to reuse it. Everything lands under
one run directory.

Every process of a multi-host run runs the pipeline together (the set-up is
`runtime.setup_runtime`): each generates, judges and evaluates its own shards
and samples for its own states; process 0 writes the run's summary and report.
The run directory must be one that every host sees (a shared file system).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import gin
import jax

from swirl_jax import atomic_io, evaluation, generation, judging, multihost, provenance, runtime, tasks
from swirl_jax.checkpoints import policy
from swirl_jax.checkpoints.policy import load_policy
from swirl_jax.data import filters, seqio_tasks, trajectory_io
from swirl_jax.environment import protocol
from swirl_jax.models.transformer import Transformer
from swirl_jax.records import Trajectory, format_trajectory
from swirl_jax.rewards.judge import Judge
from swirl_jax.sampling.interfaces import Vocabulary
from swirl_jax.training.online import JudgeScorer
from swirl_jax.training.trainer import TrainConfig, Trainer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  run_dir: str = "runs/default"
  filter_strategy: str = "process"
  eval_questions: int = 64

  def __post_init__(self):
    if self.filter_strategy not in filters.STRATEGIES:
      raise ValueError(f"PipelineConfig.filter_strategy={self.filter_strategy!r}; use one of {filters.STRATEGIES}")
    if self.eval_questions < 1:
      raise ValueError(f"PipelineConfig.eval_questions={self.eval_questions} must be at least 1")


def run_pipeline(rt: runtime.Runtime | None = None, config: PipelineConfig | None = None) -> dict:
  """All stages in order, resumably; returns the summary (the same on every process)."""
  start = time.perf_counter()
  config = config or PipelineConfig()
  rt = rt or runtime.setup_runtime()
  main = rt.is_main_process
  say = (lambda message: print(message, flush=True)) if main else (lambda message: None)
  paths = {name: os.path.join(config.run_dir, name) for name in
           ("trajectories", "judged", "checkpoints", "eval", "metrics")}
  say(f"runtime: {rt.describe()}")
  mesh, rules = rt.mesh, rt.rules
  # The data and the judge are checked before the policy loads (minutes for a large model).
  train_task = tasks.build_task(split="train")
  eval_task = tasks.build_task(split="test", num_questions=config.eval_questions)
  tasks.check_held_out(train_task, eval_task)
  judge = judging.make_judge(questions=train_task.questions + eval_task.questions, task=train_task)
  model, vocab = load_policy(mesh=mesh, rules=rules)
  train_task.use_vocabulary(vocab)
  eval_task.use_vocabulary(vocab)
  eval_config = dataclasses.replace(evaluation.EvalConfig(), output_dir=paths["eval"])

  say(f"[1/5] evaluating the base model on {len(eval_task.questions)} held-out questions")
  base_id = policy.policy_identity()
  base = evaluation.evaluate(eval_task, model, vocab, "base", eval_config, judge, mesh=mesh, rules=rules,
                             model_id=base_id)
  say("[2/5] Stage 1: generating trajectories")
  generation.generate(train_task, model, vocab,
                      dataclasses.replace(generation.GenerateConfig(), output_dir=paths["trajectories"]),
                      mesh=mesh, rules=rules, model_id=base_id)
  say("[3/5] judging every step and outcome")
  judged = judging.judge_directory(paths["trajectories"], paths["judged"], judge)
  train_config = dataclasses.replace(TrainConfig(), checkpoint_dir=paths["checkpoints"])
  data = seqio_tasks.register_judged(train_task.name, config.filter_strategy, paths["judged"])
  kept = seqio_tasks.info(data.trajectories).examples
  say(f"[4/5] Stage 2: training on {kept} trajectories kept by the {config.filter_strategy!r} filter "
      f"(SeqIO task {data.states})")
  trainer = build_trainer(model, vocab, data.for_mode(train_config.mode, train_config.share_prefixes), train_task,
                          judge, train_config,
                          metrics_dir=paths["metrics"], mesh=mesh, rules=rules, model_id=base_id,
                          training_questions=[q.question for q in train_task.questions])
  last_metrics = trainer.train()
  say("[5/5] evaluating the trained model")
  trained_id = policy.policy_identity(trainer.identity())
  trained = evaluation.evaluate(eval_task, model, vocab, "trained", eval_config, judge, mesh=mesh, rules=rules,
                                model_id=trained_id)
  summary = {
      "base_accuracy": base["accuracy"], "base_accuracy_95ci": base["accuracy_95ci"],
      "trained_accuracy": trained["accuracy"], "trained_accuracy_95ci": trained["accuracy_95ci"],
      "filter_survival": judged["filter_survival"], "good_step_share": judged["good_step_share"],
      "train_steps": trainer.step, "last_train_metrics": last_metrics, "processes": rt.process_count,
      "paths": {**paths, "tensorboard": paths["metrics"], "report": os.path.join(paths["eval"], "report.md")},
      "seconds": round(time.perf_counter() - start, 1),
  }
  if not main:
    multihost.barrier("pipeline_done")
    return summary
  table = evaluation.write_comparison([base, trained], paths["eval"])
  with atomic_io.atomic_open(os.path.join(config.run_dir, "summary.json")) as f:
    json.dump(summary, f, indent=1)
  shown = max(trajectory_io.read_shard(trajectory_io.shard_path(os.path.join(paths["eval"], "trained"), 0)),
              key=lambda t: (t.final_answer is not None, len(t.steps)))
  print("\nOne held-out episode of the trained model:\n" + format_trajectory(shown))
  print("\n" + table)
  print(f"base accuracy {base['accuracy']:.3f} {fmt(base)} -> trained {trained['accuracy']:.3f} {fmt(trained)}")
  print(f"filter survival: {json.dumps(judged['filter_survival'])}")
  if last_metrics:
    print(f"training: {trainer.step} steps; last step: loss {last_metrics['loss']:.4f}"
          + (f", mean reward of sampled actions {last_metrics['mean_reward']:.3f}"
             if "mean_reward" in last_metrics else ""))
  where = {"trajectories": paths["trajectories"], "judged": paths["judged"], "checkpoints": paths["checkpoints"],
           "tensorboard": paths["metrics"], "report": os.path.join(paths["eval"], "report.md")}
  for name, path in where.items():
    print(f"{name:>12}: {path}")
  multihost.barrier("pipeline_done")
  return summary


def build_trainer(model: Transformer, vocab: Vocabulary, data: str | Sequence[Trajectory], task: tasks.Task,
                  judge: Judge | None, config: TrainConfig, **kwargs) -> Trainer:
  """A Trainer on `data` (a SeqIO task's name, or trajectories) whose online samples stop like the
  task's turns and are scored by `judge`."""
  scorer = JudgeScorer(judge, [t.tag for t in task.tools]) if config.mode == "online" else None
  return Trainer(model, data, config, scorer=scorer, vocab=vocab, stop_ids=protocol.turn_end_ids(vocab),
                 stop_strings=protocol.stop_strings([t.tag for t in task.tools]), **kwargs)


def fmt(report: dict) -> str:
  low, high = report["accuracy_95ci"]
  return f"[{low:.3f}, {high:.3f}]"
