"""Stage 1: sample N trajectories per question with the tools in the loop.

Work is cut into shards of whole questions. A shard's file is written at once
(temp file + rename) when all its trajectories are done, and a re-run skips
shards whose file exists: a run killed at any moment, then restarted, ends
with every trajectory exactly once and no partial file. Each shard's sampling
seed depends only on the run seed and the shard, so a resumed run writes what
an uninterrupted one would. Shard k belongs to process k % process_count.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time

import gin
import jax
from tqdm import tqdm

from swirl_jax import atomic_io
from swirl_jax.data import trajectory_io
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.sampling.sampler import Sampler
from swirl_jax.tasks import Task


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  output_dir: str = "runs/default/trajectories"
  samples_per_question: int = 5
  rows: int = 16  # episodes sampled side by side
  capacity: int = 2048  # tokens per episode (prompt, actions, tool results)
  questions_per_shard: int = 32
  seed: int = 0


def summarize(trajectories, seconds: float | None = None, new_tokens: int | None = None) -> dict:
  trajectories = list(trajectories)
  steps = [s for t in trajectories for s in t.steps]
  finishes: dict[str, int] = {}
  for t in trajectories:
    finishes[t.finish] = finishes.get(t.finish, 0) + 1
  summary = {
      "trajectories": len(trajectories),
      "steps": len(steps),
      "steps_per_trajectory": round(len(steps) / max(len(trajectories), 1), 3),
      "malformed_rate": round(sum(s.kind == "malformed" for s in steps) / max(len(steps), 1), 4),
      "tool_calls": sum(s.kind == "tool" for s in steps),
      "tool_errors": sum(s.tool_error for s in steps),
      "finish": finishes,
  }
  if seconds:
    summary.update(seconds=round(seconds, 2), new_tokens=new_tokens,
                   tokens_per_second=round((new_tokens or 0) / seconds, 1))
  return summary


def generate(task: Task, model, vocab, config: GenerateConfig = GenerateConfig(),
             episode: EpisodeConfig | None = None, mesh=None) -> dict:
  """Writes this process's shards of `task` to config.output_dir; returns the summary."""
  episode = episode or EpisodeConfig()
  if episode.max_steps is None:
    episode = dataclasses.replace(episode, max_steps=task.max_steps)
  process, processes = jax.process_index(), jax.process_count()
  questions = task.questions
  n_shards = -(-len(questions) // config.questions_per_shard)
  mine = [k for k in range(n_shards) if k % processes == process]
  todo = [k for k in mine if not os.path.exists(trajectory_io.shard_path(config.output_dir, k))]
  os.makedirs(config.output_dir, exist_ok=True)
  for k in todo:  # temp files of shards a killed run was writing
    for stale in glob.glob(trajectory_io.shard_path(config.output_dir, k).replace(
        "trajectories-", ".trajectories-") + ".*.tmp"):
      os.unlink(stale)
  sampler = Sampler(model, rows=config.rows, capacity=config.capacity, vocab=vocab, mesh=mesh)
  runner = EpisodeRunner(sampler, vocab, task.tools, task.template, episode)
  total = len(todo) * config.questions_per_shard * config.samples_per_question
  new_tokens, start = 0, time.perf_counter()

  def count(tokens):
    nonlocal new_tokens
    new_tokens += tokens

  with tqdm(total=total, desc=f"generate {task.name}", unit="traj", disable=None) as bar:
    for k in todo:
      shard_questions = questions[k * config.questions_per_shard:(k + 1) * config.questions_per_shard]
      jobs = [(q, s) for q in shard_questions for s in range(config.samples_per_question)]
      sampler.set_rng(jax.random.fold_in(jax.random.key(config.seed), k))
      done = []
      for trajectory in runner.run(jobs, on_step=count):
        done.append(trajectory)
        bar.update(1)
      done.sort(key=lambda t: (t.question_id, t.sample_index))
      trajectory_io.write_shard(trajectory_io.shard_path(config.output_dir, k), done)
  seconds = time.perf_counter() - start
  written = [t for k in mine for t in trajectory_io.read_shard(trajectory_io.shard_path(config.output_dir, k))]
  summary = summarize(written, seconds if todo else None, new_tokens if todo else None)
  summary.update(task=task.name, shards=len(mine), shards_generated_now=len(todo),
                 compile_seconds={k: round(v, 2) for k, v in sampler.compile_seconds.items()})
  with atomic_io.atomic_open(os.path.join(config.output_dir, f"summary-p{process:03d}.json")) as f:
    json.dump(summary, f, indent=1)
  return summary
