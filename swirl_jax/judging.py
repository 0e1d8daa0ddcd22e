"""The `judge` stage: a process verdict on every step, an outcome verdict on every trajectory.

Reads Stage 1 shards, writes judged shards of the same names, each written
whole and atomically. A re-run skips judged shards that are complete and
redoes those with unjudged entries (a judge server that failed); a caching
judge (HttpJudge) then pays only for what is missing.

Multi-host: shard k is judged by process k % process_count (the process that
generated it), so no request is sent twice; the summary adds up every
process's counts.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import gin
import jax
from tqdm import tqdm

from swirl_jax import atomic_io, multihost, provenance
from swirl_jax.checkpoints import policy
from swirl_jax.data import filters, trajectory_io
from swirl_jax.records import Question, Trajectory, judge_transcript
from swirl_jax.rewards import prompts
from swirl_jax.rewards.http_judge import HttpJudge
from swirl_jax.rewards.judge import Judge, OutcomeRequest, ProcessRequest
from swirl_jax.rewards.model_judge import ModelJudge
from swirl_jax.rewards.request_log import RequestLog
from swirl_jax.rewards.rule_judge import RuleJudge
from swirl_jax.tasks import Task, build_task


def process_requests(trajectory: Trajectory) -> list[ProcessRequest]:
  return [ProcessRequest(trajectory.question, judge_transcript(trajectory, s.index), s.action_text.strip(),
                         s.tool or ("answer" if s.kind == "answer" else ""), trajectory.question_id, s.index)
          for s in trajectory.steps]


def judge_trajectories(trajectories: list[Trajectory], judge: Judge) -> list[Trajectory]:
  """Sets `process` on every step and `outcome` on every trajectory (in place); returns them."""
  verdicts = iter(judge.judge_steps([r for t in trajectories for r in process_requests(t)]))
  outcomes = judge.judge_outcomes([OutcomeRequest(t.question, t.final_answer, tuple(t.gold_answers),
                                                  t.question_id) for t in trajectories])
  for t, outcome in zip(trajectories, outcomes):
    t.outcome = outcome
    for step in t.steps:
      step.process = next(verdicts)
  return trajectories


def _complete(trajectories: list[Trajectory]) -> bool:
  return all(t.outcome_label is not None and None not in t.process_labels for t in trajectories)


def _unparseable_only(trajectories: list[Trajectory]) -> bool:
  """Unjudged entries whose judge answered but could not be read stay as they are."""
  verdicts = [t.outcome for t in trajectories] + [s.process for t in trajectories for s in t.steps]
  return all(v and (v.verdict is not None or v.error == "unparseable judge output") for v in verdicts)


@gin.configurable
def make_judge(kind: str = "rule", model_source: str | None = None, model_path: str | None = None,
               mode: str = "score", http_base_url: str | None = None, http_model: str | None = None,
               cache_dir: str = "runs/judge_cache", request_log_dir: str | None = None,
               questions: Sequence[Question] | None = None, task: Task | None = None) -> Judge:
  """The configured judge: rule (built-in tasks), model (any loadable checkpoint) or http.

  The rule judge knows the gold steps of `questions` (default: the gin task's)
  and the search titles of `task`'s corpus. With `request_log_dir`, every
  request is logged there (`rewards.request_log.RequestLog`).
  """
  judge = _make_judge(kind, model_source, model_path, mode, http_base_url, http_model, cache_dir, questions, task)
  judge = RequestLog(judge, request_log_dir) if request_log_dir else judge
  judge.identity = _identity(kind, model_source, model_path, mode, http_base_url, http_model, judge)
  return judge


def _identity(kind, model_source, model_path, mode, http_base_url, http_model, judge) -> dict:
  """What decides this judge's verdicts: recorded in the fingerprint of judged outputs."""
  if kind == "rule":
    # Its verdict on a step depends on the step's own question (named by the input's ids) and titles.
    return {"kind": "rule", "titles": provenance.digest(sorted(judge.titles))}
  prompts_digest = provenance.digest([prompts.process_prompt("{context}", "{action}", tool)
                                      for tool in ("math_exp", "search_query", "answer", "")]
                                     + [prompts.outcome_prompt("{question}", "{answer}", "{gold}")])
  if kind == "model":
    model = ({"source": model_source, "path": model_path} if model_source
             else policy.policy_identity())
    return {"kind": "model", "mode": mode, "model": model, "max_new_tokens": judge.max_new_tokens,
            "prompts": prompts_digest}
  return {"kind": "http", "url": judge.url, "model": http_model, "temperature": judge.temperature,
          "max_tokens": judge.max_tokens, "prompts": prompts_digest}


def _make_judge(kind, model_source, model_path, mode, http_base_url, http_model, cache_dir, questions, task):
  if kind == "rule":
    task = task or build_task()
    questions = questions if questions is not None else task.questions
    without = [q.id for q in questions if not q.gold_steps]
    if without:  # it would give no verdict on any step of these: refuse before any work
      raise ValueError(f"make_judge(kind='rule'): the rule judge knows only the built-in tasks' gold steps, and "
                       f"{len(without)} of {len(questions)} questions ({without[0]!r}, ...) have none; use "
                       "make_judge.kind='model' or 'http' for this task")
    return RuleJudge(questions, task.titles)
  if kind == "model":
    # A judge of its own source is that model as it is: no trainer checkpoint of the policy's.
    model, vocab = (policy.load_policy(source=model_source, path=model_path, checkpoint_dir=None) if model_source
                    else policy.load_policy())
    return ModelJudge(model, vocab, mode=mode)
  if kind == "http":
    if not (http_base_url and http_model):
      raise ValueError("make_judge(kind='http') needs http_base_url= and http_model=")
    return HttpJudge(http_base_url, http_model, cache_dir)
  raise ValueError(f"make_judge(kind={kind!r}): use rule, model or http")


def _shard_number(path: str) -> int:
  match = re.search(r"-s(\d+)\.jsonl$", path)
  if match is None:
    raise ValueError(f"{path}: not a trajectory shard name (trajectories-sNNNNN.jsonl)")
  return int(match.group(1))


@gin.configurable
def judge_directory(input_dir: str, output_dir: str, judge: Judge) -> dict:
  """Judges this process's shards of input_dir into output_dir; returns counts of each verdict over
  every process's shards (the same on every process)."""
  os.makedirs(output_dir, exist_ok=True)
  process, processes = jax.process_index(), jax.process_count()
  inputs = trajectory_io.shard_files(input_dir)
  if not inputs:
    raise FileNotFoundError(f"{input_dir}: no trajectory shards (trajectories-sNNNNN.jsonl) to judge")
  fingerprint = {"stage": "judge", "judge": provenance.judge_identity(judge),
                 "input": {"shards": provenance.digest({os.path.basename(p): os.path.getsize(p) for p in inputs}),
                           "fingerprint": provenance.digest(provenance.recorded(input_dir))}}
  provenance.claim(output_dir, fingerprint, has_outputs=bool(trajectory_io.shard_files(output_dir)))
  mine = [p for p in inputs if _shard_number(p) % processes == process]
  verdicts = {"verdicts": 0, "failed": 0}
  bar = tqdm(mine, desc=f"judge shards (process {process})", unit="shard", disable=None)
  for path in bar:
    out = os.path.join(output_dir, os.path.basename(path))
    if os.path.exists(out):
      done = list(trajectory_io.read_shard(out))
      if _complete(done) or _unparseable_only(done):
        continue
    trajectories = judge_trajectories(list(trajectory_io.read_shard(path)), judge)
    trajectory_io.write_shard(out, trajectories)
    labels = [t.outcome_label for t in trajectories] + [label for t in trajectories for label in t.process_labels]
    verdicts["verdicts"] += len(labels)
    verdicts["failed"] += sum(label is None for label in labels)
    bar.set_postfix(verdicts)
  judged = [t for p in mine for t in trajectory_io.read_shard(os.path.join(output_dir, os.path.basename(p)))]
  summary = _with_share(multihost.merge_counts(multihost.allgather_json(_judged_counts(judged))))
  if process == 0:
    with atomic_io.atomic_open(os.path.join(output_dir, "judge_summary.json")) as f:
      json.dump(summary, f, indent=1)
  multihost.barrier("judge_directory")  # every judged shard is written before anyone reads them
  return summary


def _judged_counts(trajectories) -> dict:
  counts = {"steps": {}, "outcomes": {}, "filter_survival": filters.survival(trajectories)}
  for t in trajectories:
    key = str(t.outcome_label)
    counts["outcomes"][key] = counts["outcomes"].get(key, 0) + 1
    for label in t.process_labels:
      key = str(label)
      counts["steps"][key] = counts["steps"].get(key, 0) + 1
  return counts


def _with_share(counts: dict) -> dict:
  counts = {**counts, "steps": dict(sorted(counts["steps"].items())),
            "outcomes": dict(sorted(counts["outcomes"].items()))}
  good = counts["steps"].get("GOOD", 0)
  judged = sum(v for k, v in counts["steps"].items() if k != "None")
  counts["good_step_share"] = round(good / judged, 4) if judged else None
  return counts


def judged_summary(trajectories: Sequence[Trajectory]) -> dict:
  """Verdict counts, the share of GOOD steps, and how many trajectories each filter keeps."""
  return _with_share(_judged_counts(list(trajectories)))
