"""The records every stage exchanges: questions, passages, trajectories and their steps, verdicts.

They sit below every other layer, so that data sources, tools, the episode loop,
judges and trainers all speak of the same things without importing each other.
Token ids are the source of truth: each step keeps the ids the model consumed
(`context_tokens`, the delta since the previous action) and produced
(`action_tokens`); the texts are for people. Trajectories are JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

GOOD, BAD, YES, NO = "GOOD", "BAD", "YES", "NO"
PROCESS_LABELS = (GOOD, BAD)
OUTCOME_LABELS = (YES, NO)


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  question: str
  answers: tuple[str, ...]  # the gold answer first, then aliases
  source: str  # "gsm8k", "hotpotqa", "builtin_arithmetic", ...
  # Built-in tasks know a correct solution path: calculator expressions or
  # search sub-queries, one per step (empty for benchmark data).
  gold_steps: tuple[str, ...] = ()

@dataclasses.dataclass(frozen=True)
class Passage:
  """One searchable paragraph of a corpus."""

  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge's verdict on a step (process) or a final answer (outcome).

  When a judge's output cannot be read, `verdict` and `score` are None with
  the reason in `error`: nothing is guessed.
  """

  verdict: str | None  # GOOD / BAD (process), YES / NO (outcome); None: no verdict
  score: float | None  # in [0, 1]
  reasoning: str = ""
  judge: str = ""
  error: str = ""


@dataclasses.dataclass
class Step:
  index: int
  context_tokens: list[int]  # new context before this action (prompt, or tool result turn)
  context_text: str
  action_tokens: list[int]
  action_text: str
  behaviour_logprobs: list[float]  # of action_tokens, under the sampling model
  kind: str  # "tool" | "answer" | "malformed"
  finish_reason: str  # the sampler's: stop_string | stop_id | max_new_tokens | capacity
  tool: str = ""  # tag of the tool called
  tool_query: str = ""
  tool_output: str = ""
  tool_error: bool = False
  malformed_reason: str = ""
  forced_answer: bool = False  # this step followed the step-cap prompt
  process: Verdict | None = None  # the process judge's (judged files only)


@dataclasses.dataclass
class Trajectory:
  id: str
  question_id: str
  sample_index: int
  source: str
  question: str
  gold_answers: list[str]
  steps: list[Step]
  final_answer: str | None
  finish: str  # "answered" | "step_cap" | "malformed" | "capacity"
  outcome: Verdict | None = None  # the outcome judge's (judged files only)

  @property
  def num_tokens(self) -> int:
    """Every context and action token: the length of its prefix-shared row."""
    return sum(len(s.context_tokens) + len(s.action_tokens) for s in self.steps)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

  @classmethod
  def from_dict(cls, record: dict[str, Any], where: str = "") -> "Trajectory":
    """A record read back, checked field by field: a file edited by hand or written by another
    tool must not misalign tokens and log-probs, or turn a string into characters."""
    check_record(record, where)
    steps = [Step(**{**s, "process": _verdict(s.get("process"))}) for s in record["steps"]]
    return cls(**{**record, "steps": steps, "outcome": _verdict(record.get("outcome"))})

  @property
  def process_labels(self) -> list[str | None]:
    """Each step's process label (None where unjudged or unreadable)."""
    return [s.process.verdict if s.process else None for s in self.steps]

  @property
  def outcome_label(self) -> str | None:
    return self.outcome.verdict if self.outcome else None


def _verdict(record: dict | None) -> Verdict | None:
  return None if record is None else Verdict(**record)


FINISHES = ("answered", "step_cap", "malformed", "capacity")
STEP_KINDS = ("tool", "answer", "malformed")
_TRAJECTORY_FIELDS = {f.name: f for f in dataclasses.fields(Trajectory)}
_STEP_FIELDS = {f.name: f for f in dataclasses.fields(Step)}


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fail(where: str, field: str, problem: str):
  raise ValueError(f"{where}: field {field!r} {problem}")


def _check_fields(record, fields: dict, where: str, prefix: str) -> None:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: {prefix or 'the record'} is not a JSON object")
  unknown = sorted(set(record) - set(fields))
  if unknown:
    _fail(where, prefix + unknown[0], "is not a field of a trajectory record")
  missing = [n for n, f in fields.items() if n not in record and f.default is dataclasses.MISSING]
  if missing:
    _fail(where, prefix + missing[0], "is missing")


_VERDICT_FIELDS = {f.name: f for f in dataclasses.fields(Verdict)}


def _check_verdict(verdict, where: str, field: str, labels: tuple[str, str]) -> None:
  if verdict is None:
    return
  if not isinstance(verdict, dict):
    _fail(where, field, "is not an object or null")
  _check_fields(verdict, _VERDICT_FIELDS, where, field + ".")
  for name in ("reasoning", "judge", "error"):
    if name in verdict and not isinstance(verdict[name], str):
      _fail(where, f"{field}.{name}", "is not a string")
  if verdict.get("verdict") not in (*labels, None):
    _fail(where, f"{field}.verdict", f"is {verdict.get('verdict')!r}, not one of {labels} or null")
  score = verdict.get("score")
  if score is not None and not (_is_number(score) and 0.0 <= score <= 1.0):
    _fail(where, f"{field}.score", f"is {score!r}, not a number in [0, 1] or null")


def check_record(record: dict[str, Any], where: str = "") -> None:
  """Raises ValueError naming `where` and the field when a trajectory record is malformed."""
  _check_fields(record, _TRAJECTORY_FIELDS, where, "")
  for name in ("id", "question_id", "source", "question"):
    if not isinstance(record[name], str):
      _fail(where, name, "is not a string")
  if not _is_int(record["sample_index"]) or record["sample_index"] < 0:
    _fail(where, "sample_index", "is not a whole number >= 0")
  if not (isinstance(record["gold_answers"], list) and all(isinstance(a, str) for a in record["gold_answers"])):
    _fail(where, "gold_answers", "is not a list of strings")
  if record["final_answer"] is not None and not isinstance(record["final_answer"], str):
    _fail(where, "final_answer", "is not a string or null")
  if record["finish"] not in FINISHES:
    _fail(where, "finish", f"is {record['finish']!r}, not one of {FINISHES}")
  _check_verdict(record.get("outcome"), where, "outcome", OUTCOME_LABELS)
  if not isinstance(record["steps"], list):
    _fail(where, "steps", "is not a list")
  for i, step in enumerate(record["steps"]):
    at = f"steps[{i}]."
    _check_fields(step, _STEP_FIELDS, where, at)
    if step["index"] != i or not _is_int(step["index"]):
      _fail(where, at + "index", f"is {step['index']!r}, not {i}")
    for name in ("context_tokens", "action_tokens"):
      tokens = step[name]
      if not (isinstance(tokens, list) and all(_is_int(t) and t >= 0 for t in tokens)):
        _fail(where, at + name, "is not a list of token ids (whole numbers >= 0)")
    logprobs = step["behaviour_logprobs"]
    if not (isinstance(logprobs, list) and all(_is_number(x) and x <= 1e-6 for x in logprobs)):
      _fail(where, at + "behaviour_logprobs", "is not a list of finite log-probabilities (<= 0)")
    if len(logprobs) != len(step["action_tokens"]):
      _fail(where, at + "behaviour_logprobs", f"has {len(logprobs)} entries for "
            f"{len(step['action_tokens'])} action tokens")
    if step["kind"] not in STEP_KINDS:
      _fail(where, at + "kind", f"is {step['kind']!r}, not one of {STEP_KINDS}")
    for name in ("context_text", "action_text", "finish_reason", "tool", "tool_query", "tool_output",
                 "malformed_reason"):
      if name in step and not isinstance(step[name], str):
        _fail(where, at + name, "is not a string")
    for name in ("tool_error", "forced_answer"):
      if name in step and not isinstance(step[name], bool):
        _fail(where, at + name, "is not true or false")
    _check_verdict(step.get("process"), where, at + "process", PROCESS_LABELS)


def trajectory_id(question_id: str, sample_index: int) -> str:
  return f"{question_id}#{sample_index}"


def judge_transcript(trajectory: Trajectory, upto: int) -> str:
  """The question and steps before step `upto`, as a judge reads them (no instructions)."""
  lines = [f"Question: {trajectory.question}"]
  for step in trajectory.steps[:upto]:
    lines.append(f"Step {step.index + 1}: {step.action_text.strip()}")
    if step.kind == "tool":
      lines.append(f"Result: {step.tool_query} -> {step.tool_output}")
    elif step.kind == "malformed":
      lines.append(f"(invalid step: {step.malformed_reason})")
  return "\n".join(lines)


def format_trajectory(trajectory: Trajectory, prompt_chars: int = 400) -> str:
  """A trajectory for people: every context delta and action, the tool calls, the outcome."""
  lines = [f"=== trajectory {trajectory.id} (gold {trajectory.gold_answers[0] if trajectory.gold_answers else '-'}, "
           f"final {trajectory.final_answer!r}, {trajectory.finish}) ==="]
  for step in trajectory.steps:
    context = step.context_text if step.index else "..." + step.context_text[-prompt_chars:]
    lines.append(f"--- step {step.index}: context ({len(step.context_tokens)} tokens) ---\n{context}")
    lines.append(f"--- step {step.index}: action ({len(step.action_tokens)} tokens, {step.kind}, "
                 f"{step.finish_reason}) ---\n{step.action_text}")
    if step.kind == "tool":
      lines.append(f"    tool {step.tool}: {step.tool_query!r} -> {step.tool_output!r}")
    elif step.kind == "malformed":
      lines.append(f"    malformed: {step.malformed_reason}")
  return "\n".join(lines)
