"""Stage 1: sample N trajectories per question with the tools in the loop.

Work is cut into shards of whole questions. A shard's file is written at once
(temp file + rename) when all its trajectories are done, and a re-run skips
shards whose file exists: a run killed at any moment, then restarted, ends
with every trajectory exactly once and no partial file. Each turn's sampling
key depends only on the run seed, the question, the sample index and the turn,
so a resumed run writes what an uninterrupted one would, and N processes write
what one does. Shard k belongs to process k % process_count; each process
writes its own shards and its own summary-pNNN.json, and every process then
holds the run's summary (summary.json), aggregated exactly over processes.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Sequence

import gin
import jax
from jax.sharding import Mesh
from tqdm import tqdm

from swirl_jax import atomic_io, multihost, partitioning, provenance, validation
from swirl_jax.checkpoints import policy
from swirl_jax.data import trajectory_io
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.models.transformer import Transformer
from swirl_jax.records import Trajectory
from swirl_jax.sampling.interfaces import Vocabulary
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

  def __post_init__(self):
    validation.at_least_one(self, ("samples_per_question", "rows", "capacity", "questions_per_shard"))


def _counts(trajectories) -> dict:
  """Counts that add up across processes."""
  finishes: dict[str, int] = {}
  steps = [s for t in trajectories for s in t.steps]
  for t in trajectories:
    finishes[t.finish] = finishes.get(t.finish, 0) + 1
  return {"trajectories": len(trajectories), "steps": len(steps),
          "malformed": sum(s.kind == "malformed" for s in steps),
          "tool_calls": sum(s.kind == "tool" for s in steps), "tool_errors": sum(s.tool_error for s in steps),
          "finish": finishes}


def _summary_of(counts: dict) -> dict:
  n, steps = counts.get("trajectories", 0), counts.get("steps", 0)
  return {
      "trajectories": n,
      "steps": steps,
      "steps_per_trajectory": round(steps / max(n, 1), 3),
      "malformed_rate": round(counts.get("malformed", 0) / max(steps, 1), 4),
      "tool_calls": counts.get("tool_calls", 0),
      "tool_errors": counts.get("tool_errors", 0),
      "finish": dict(sorted(counts.get("finish", {}).items())),
  }


def summarize(trajectories: Sequence[Trajectory], seconds: float | None = None, new_tokens: int | None = None) -> dict:
  summary = _summary_of(_counts(list(trajectories)))
  if seconds:
    summary.update(seconds=round(seconds, 2), new_tokens=new_tokens,
                   tokens_per_second=round((new_tokens or 0) / seconds, 1))
  return summary


def run_sharded_episodes(runner: EpisodeRunner, shard_jobs: dict[int, list], write_shard,
                         on_trajectory=None, on_step=None) -> None:
  """Runs the jobs of several shards through one episode loop (rows stay full across shard
  boundaries) and hands each shard's trajectories to `write_shard(k, trajectories)` as soon as its
  last one is done. Collective: every process calls it, with its own shards (or none)."""
  shard_of = {}
  for k, jobs in shard_jobs.items():
    for question, sample in jobs:
      shard_of[(question.id, sample)] = k
  pending = {k: len(jobs) for k, jobs in shard_jobs.items()}
  done: dict[int, list] = {k: [] for k in shard_jobs}
  for k in [k for k, n in pending.items() if n == 0]:
    write_shard(k, [])
  all_jobs = [job for k in sorted(shard_jobs) for job in shard_jobs[k]]
  for trajectory in runner.run(all_jobs, on_step=on_step):
    k = shard_of[(trajectory.question_id, trajectory.sample_index)]
    done[k].append(trajectory)
    pending[k] -= 1
    if on_trajectory is not None:
      on_trajectory(trajectory)
    if pending[k] == 0:
      write_shard(k, sorted(done.pop(k), key=lambda t: (t.question_id, t.sample_index)))


def check_unique_ids(task: Task) -> None:
  """Trajectories, shards and judge caches are keyed by question id: refuse duplicates (every
  process sees the same task, so every process refuses)."""
  seen: dict[str, int] = {}
  for index, question in enumerate(task.questions):
    if question.id in seen:
      raise ValueError(f"task {task.name}: questions {seen[question.id]} and {index} share the id {question.id!r}")
    seen[question.id] = index


def generate(task: Task, model: Transformer, vocab: Vocabulary, config: GenerateConfig | None = None,
             episode: EpisodeConfig | None = None, mesh: Mesh | None=None, rules: partitioning.LogicalRules | None=None, model_id: dict | None = None,
             layout: partitioning.SamplingLayout | None = None) -> dict:
  """Writes this process's shards of `task` to config.output_dir; returns the run's summary (all
  processes). Collective: every process of a run calls it.

  `model_id` says which model this is (default: the gin-configured policy); with
  the task, the settings and the episode settings it is the fingerprint that an
  existing output directory must match to be resumed. `layout` (default: gin's SamplingLayout) is
  where the sampler decodes; `main` loads the policy straight into it.
  """
  config, episode = config or GenerateConfig(), episode or EpisodeConfig()
  layout = layout or partitioning.SamplingLayout()
  if episode.max_steps is None:
    episode = dataclasses.replace(episode, max_steps=task.max_steps)
  process, processes = jax.process_index(), jax.process_count()
  check_unique_ids(task)
  fingerprint = {"stage": "generate", "task": provenance.task_identity(task),
                 "config": provenance.config_fields(config, ("output_dir", "rows")),
                 "episode": dataclasses.asdict(episode), "model": model_id or policy.policy_identity(),
                 "sampling": layout.identity()}
  provenance.claim(config.output_dir, fingerprint, has_outputs=bool(trajectory_io.shard_files(config.output_dir)))
  questions = task.questions
  n_shards = -(-len(questions) // config.questions_per_shard)
  mine = [k for k in range(n_shards) if k % processes == process]
  todo = [k for k in mine if not os.path.exists(trajectory_io.shard_path(config.output_dir, k))]
  os.makedirs(config.output_dir, exist_ok=True)
  for k in todo:  # temp files of shards a killed run was writing
    for stale in glob.glob(trajectory_io.shard_path(config.output_dir, k).replace(
        "trajectories-", ".trajectories-") + ".*.tmp"):
      os.unlink(stale)
  sampler = Sampler(model, rows=config.rows, capacity=config.capacity, vocab=vocab, mesh=mesh, rules=rules,
                    layout=layout)
  runner = EpisodeRunner(sampler, vocab, task.tools, task.template, episode, seed=config.seed)
  shard_jobs = {k: [(q, s) for q in questions[k * config.questions_per_shard:(k + 1) * config.questions_per_shard]
                    for s in range(config.samples_per_question)] for k in todo}
  new_tokens, start = 0, time.perf_counter()

  def count(tokens):
    nonlocal new_tokens
    new_tokens += tokens

  total = sum(len(jobs) for jobs in shard_jobs.values())
  with tqdm(total=total, desc=f"generate {task.name} (process {process})", unit="traj", disable=None) as bar:
    run_sharded_episodes(runner, shard_jobs,
                         lambda k, done: trajectory_io.write_shard(trajectory_io.shard_path(config.output_dir, k), done),
                         on_trajectory=lambda _: bar.update(1), on_step=count)
  seconds = time.perf_counter() - start
  written = [t for k in mine for t in trajectory_io.read_shard(trajectory_io.shard_path(config.output_dir, k))]
  summary = summarize(written, seconds if todo else None, new_tokens if todo else None)
  summary.update(task=task.name, shards=len(mine), shards_generated_now=len(todo),
                 compile_seconds={k: round(v, 2) for k, v in sampler.compile_seconds.items()})
  with atomic_io.atomic_open(os.path.join(config.output_dir, f"summary-p{process:03d}.json")) as f:
    json.dump(summary, f, indent=1)
  # The run's summary: counts from every process, added up (the same on every process).
  parts = multihost.allgather_json({"counts": _counts(written), "shards": len(mine), "new_shards": len(todo)})
  run_summary = _summary_of(multihost.merge_counts([p["counts"] for p in parts]))
  run_summary.update(task=task.name, shards=sum(p["shards"] for p in parts), processes=processes)
  if process == 0:
    with atomic_io.atomic_open(os.path.join(config.output_dir, "summary.json")) as f:
      json.dump(run_summary, f, indent=1)
  return {**summary, "run": run_summary}
