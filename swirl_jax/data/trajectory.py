"""The trajectory record: what Stage 1 writes and every later stage reads.

Token ids are the source of truth: each step keeps the ids the model consumed
(`context_tokens`, the delta since the previous action) and produced
(`action_tokens`); the texts are for people. Records are JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


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
  process: dict | None = None  # the process judge's Verdict (judged files only)


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
  outcome: dict | None = None  # the outcome judge's Verdict (judged files only)

  @property
  def num_tokens(self) -> int:
    """Every context and action token: the length of its prefix-shared row."""
    return sum(len(s.context_tokens) + len(s.action_tokens) for s in self.steps)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

  @classmethod
  def from_dict(cls, record: dict[str, Any], where: str = "") -> "Trajectory":
    try:
      steps = [Step(**s) for s in record["steps"]]
      return cls(**{**record, "steps": steps})
    except (KeyError, TypeError) as e:
      raise ValueError(f"{where}: not a trajectory record ({e})") from None


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
