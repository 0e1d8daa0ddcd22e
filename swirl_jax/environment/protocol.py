"""The multi-step protocol: chat turns (each family's markers), the three tags, and action parsing.

Each model turn is one *action*: optional reasoning, then exactly one of
`<search_query>…</search_query>`, `<math_exp>…</math_exp>` or
`<answer>…</answer>`. A tool's result comes back as a user turn
`QUERY -> RESULT`. The instructions below are our own wording of the paper's
protocol; few-shot examples are part of the template (a small base model
needs them to follow the format at all).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import gin

from swirl_jax.checkpoints.chat_formats import (CHAT_FORMATS, CHATML, GEMMA, LLAMA3, ChatFormat,  # noqa: F401
                                                chat_format, turn_end_ids)

# Gemma's markers, as the SentencePiece vocabularies (the embedded model, the miniature's) use them.
START_USER, START_MODEL, END_TURN = GEMMA.start_user, GEMMA.start_model, GEMMA.end_turn
ANSWER_TAG = "answer"

_TAG_RE = re.compile(r"<(search_query|math_exp|answer)>(.*?)</\1>", re.DOTALL)
_OPEN_RE = re.compile(r"<(search_query|math_exp|answer)>")

SEARCH_INSTRUCTIONS = (
    "Answer the question by working in steps. In each step, think briefly, then either look "
    "something up by writing a query between <search_query> and </search_query>, or give the "
    "final answer between <answer> and </answer>. Write exactly one of these per step. After a "
    "query you will see the query, an arrow and the best matching document. Keep the final answer "
    "short: a name, a number or a few words.")

MATH_INSTRUCTIONS = (
    "Solve the problem by working in steps. In each step, think briefly, then either compute "
    "something by writing an arithmetic expression between <math_exp> and </math_exp>, or give "
    "the final answer between <answer> and </answer>. Write exactly one of these per step. After "
    "an expression you will see the expression, an arrow and its value. The final answer is a "
    "number only.")

FORCE_ANSWER = "You have used all your steps. Give your final answer now, between <answer> and </answer>."


@dataclasses.dataclass(frozen=True)
class Action:
  """A parsed model turn."""

  kind: str  # "tool" | "answer" | "malformed"
  tag: str = ""
  query: str = ""  # the tool query, or the answer text
  reasoning: str = ""
  malformed_reason: str = ""


def parse_action(text: str, allowed_tags: Sequence[str]) -> Action:
  """Exactly one complete tool call or answer; anything else is malformed, with its reason."""
  body = text
  for fmt in CHAT_FORMATS.values():  # a turn's end marker, whichever family wrote it
    body = body.replace(fmt.end_turn, "")
  found = list(_TAG_RE.finditer(body))
  if not found:
    opened = _OPEN_RE.search(body)
    reason = f"unclosed <{opened.group(1)}>" if opened else "no <search_query>, <math_exp> or <answer> tag"
    return Action("malformed", malformed_reason=reason)
  if len(found) > 1:
    return Action("malformed", malformed_reason=f"{len(found)} tags in one step; write exactly one")
  match = found[0]
  tag, content = match.group(1), match.group(2).strip()
  reasoning = body[:match.start()].strip()
  if tag != ANSWER_TAG and tag not in allowed_tags:
    return Action("malformed", tag=tag, malformed_reason=f"the <{tag}> tool is not available here")
  if not content:
    return Action("malformed", tag=tag, malformed_reason=f"empty <{tag}>")
  return Action(ANSWER_TAG if tag == ANSWER_TAG else "tool", tag, content, reasoning)


@dataclasses.dataclass(frozen=True)
class WorkedExample:
  """A solved question, shown to the model as real chat turns before the task."""

  question: str
  steps: tuple[tuple[str, str, str, str], ...]  # (reasoning, tag, query, result)
  answer_reasoning: str
  answer: str

  def turns(self, fmt: ChatFormat = GEMMA) -> str:
    text = fmt.closed(f"Question: {self.question}") + fmt.start_model
    for reasoning, tag, query, result in self.steps:
      text += (fmt.closed(f"{reasoning} {tagged(tag, query)}") + fmt.start_user +
               fmt.closed(tool_result(query, result)) + fmt.start_model)
    return text + fmt.closed(f"{self.answer_reasoning} {tagged(ANSWER_TAG, self.answer)}") + fmt.start_user


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """How a question becomes the opening turns: instructions, worked examples, the question.

  A field left None takes the task's default (`with_defaults`; `build_task` fills in its tool's
  instructions and worked examples), so a gin binding of either field reaches every task.
  """

  instructions: str | None = None
  examples: tuple[WorkedExample, ...] | None = None

  def with_defaults(self, instructions: str, examples: tuple[WorkedExample, ...]) -> "PromptTemplate":
    return PromptTemplate(instructions if self.instructions is None else self.instructions,
                          examples if self.examples is None else tuple(self.examples))

  def prompt(self, question: str, fmt: ChatFormat = GEMMA) -> str:
    """The opening turns in the policy's chat format (`chat_format(vocab)`)."""
    if self.instructions is None or self.examples is None:
      raise ValueError("PromptTemplate: instructions or examples are unset; fill them with with_defaults() "
                       "(build_task does)")
    text = fmt.start_user + self.instructions + "\n\n"
    for example in self.examples:
      text += example.turns(fmt)
    return text + fmt.closed(f"Question: {question.strip()}") + fmt.start_model


def tagged(tag: str, text: str) -> str:
  """A tool call or an answer as the model writes it: `<tag>text</tag>`."""
  return f"<{tag}>{text}</{tag}>"


def tool_result(query: str, output: str) -> str:
  """The user-turn text the paper feeds back after a tool call: `QUERY -> RESULT`."""
  return f"{query.strip()} -> {output}"


def user_turn(text: str, model_turn_closed: bool, fmt: ChatFormat = GEMMA) -> str:
  """What follows a model action: close its turn, a user turn (a tool result `QUERY -> RESULT`,
  or feedback), then reopen the model's turn."""
  close = fmt.between if model_turn_closed else fmt.closed()
  return close + fmt.start_user + fmt.closed(text) + fmt.start_model


def stop_strings(tags: Sequence[str]) -> tuple[str, ...]:
  """Closing tags end a model turn (the answer's always does)."""
  return tuple(f"</{t}>" for t in (*tags, ANSWER_TAG))
