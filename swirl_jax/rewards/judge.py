"""The judge interface: process verdicts on steps, outcome verdicts on final answers.

A verdict carries a label, a score in [0, 1] and the judge's reasoning. When a
judge's output cannot be read, the verdict is None with the reason in `error`:
nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol, Sequence

from swirl_jax.records import OUTCOME_LABELS, PROCESS_LABELS, Verdict
from swirl_jax.rewards import prompts


@dataclasses.dataclass(frozen=True)
class ProcessRequest:
  """Is `action` a reasonable next step given `context`? The gold answer is never shown."""

  question: str
  context: str  # the transcript before the action: question, earlier actions, tool results
  action: str
  tool: str  # "math_exp", "search_query", "answer" or "" for a malformed step
  question_id: str = ""
  step_index: int = 0


@dataclasses.dataclass(frozen=True)
class OutcomeRequest:
  question: str
  answer: str | None
  gold_answers: tuple[str, ...]
  question_id: str = ""


class Judge(Protocol):
  name: str

  def judge_steps(self, requests: Sequence[ProcessRequest]) -> list[Verdict]:
    ...

  def judge_outcomes(self, requests: Sequence[OutcomeRequest]) -> list[Verdict]:
    ...


_LABEL = re.compile(r"\b(GOOD|BAD|YES|NO)\b")


def parse_label(text: str, allowed: tuple[str, str]) -> str | None:
  """The judge's final label: `VERDICT: X` if present, else the last allowed label, else None."""
  explicit = re.findall(r"VERDICT\s*:\s*\**\s*(GOOD|BAD|YES|NO)\b", text, flags=re.IGNORECASE)
  labels = [l.upper() for l in explicit] or [l for l in _LABEL.findall(text)]
  labels = [l for l in labels if l in allowed]
  return labels[-1] if labels else None


def verdict_from_text(text: str, labels: tuple[str, str], judge: str) -> Verdict:
  """A generated judgement read into a Verdict: score 1 for labels[0], 0 for labels[1], none if unreadable."""
  label = parse_label(text, labels)
  if label is None:
    return Verdict(None, None, text, judge, "unparseable judge output")
  return Verdict(label, 1.0 if label == labels[0] else 0.0, text, judge)


class PromptJudge:
  """A judge that asks a language model: the process and outcome prompts of `prompts.py` in, one of
  two labels out. `ModelJudge` and `HttpJudge` differ only in how a prompt is answered."""

  name = "prompt"

  def answer_prompts(self, prompts_: Sequence[str], labels: tuple[str, str], what: str) -> list[Verdict]:
    """One verdict per prompt, labelled from `labels`; `what` names the work in progress bars."""
    raise NotImplementedError

  def judge_steps(self, requests: Sequence[ProcessRequest]) -> list[Verdict]:
    return self.answer_prompts([prompts.process_prompt(r.context, r.action, r.tool) for r in requests],
                               PROCESS_LABELS, "process judge")

  def judge_outcomes(self, requests: Sequence[OutcomeRequest]) -> list[Verdict]:
    return self.answer_prompts([prompts.outcome_prompt(r.question, r.answer or "(no answer)", r.gold_answers[0])
                                for r in requests], OUTCOME_LABELS, "outcome judge")
