"""Noisy demonstrations of the built-in tasks: the tool protocol, with unreasonable steps mixed in.

A base policy trained from scratch by SFT on these uses the tools in the right
format but often takes steps a judge would call unreasonable, which is the
starting point SWiRL improves on. An expert follows each question's gold
steps; with probability `step_noise` a step is replaced by one of:
calculator: a wrong operand, a wrong operation, a repeated expression, a
premature answer; search: an off-target query (another entity), a repeated
query, a premature answer. A wrong calculator value is carried into later steps
with probability `carry_error` (the answer is then wrong); otherwise the expert
recovers with the right step. Detours are only taken while the step cap leaves
room to finish.

On top of the random noise, each task has one systematic misconception, taken
with probability `misconception`, so that the base policy errs even when it
decodes greedily (a random mistake loses to the right step at argmax):
calculator: "shares equally among d friends and keeps one share" is computed
as a subtraction of d, and carried on; search: a three-hop question is
answered one hop early, with the entity in hand.

The episodes run through the real episode loop, with `PlanSampler` in the
sampler's place, so token ids, tool results and turn layout are exactly what
the policy sees when it samples.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
from typing import Sequence

import gin
import numpy as np

from swirl_jax.environment import protocol
from swirl_jax.environment.calculator import Calculator
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.records import Question, Trajectory
from swirl_jax.sampling.interfaces import Vocabulary
from swirl_jax.sampling.interfaces import TurnOutput
from swirl_jax.tasks import Task

_OTHER_OPERATIONS = {"+": ("-", "*"), "-": ("+",), "*": ("+",), "/": ("*", "-")}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  step_noise: float = 0.3  # chance that a step is replaced by an unreasonable one
  carry_error: float = 0.5  # chance that a wrong calculator value is built on
  misconception: float = 0.0  # chance of the task's systematic error where it applies


def _plain(output: str) -> str:
  """A calculator value as a person writes it next: 26.0 -> 26."""
  return output[:-2] if output.endswith(".0") else output


def plan_arithmetic(question: Question, rng: random.Random, noise: NoiseConfig, max_steps: int,
                    kinds: collections.Counter | None = None) -> list[str]:
  """The action texts of one noisy demonstration of a built-in arithmetic problem."""
  calculator, kinds = Calculator(), kinds if kinds is not None else collections.Counter()
  numbers = re.findall(r"\d+", question.question)
  gold = [step.split(" ") for step in question.gold_steps]  # [left, op, right]
  actions: list[str] = []
  value = None
  i = 0
  while i < len(gold):
    left, op, right = gold[i]
    left = left if value is None else value
    expected = f"{left} {op} {right}"
    tools_left = max_steps - len(actions)
    if op == "/" and rng.random() < noise.misconception:
      kinds["misconception"] += 1
      expected = f"{left} - {right}"
    elif rng.random() < noise.step_noise and tools_left > len(gold) - i:
      kind = rng.choice(["wrong_operand", "wrong_operation", "premature_answer"]
                        + (["redundant"] if actions else []))
      kinds[kind] += 1
      if kind == "premature_answer":
        return actions + [protocol.tagged("answer", value or rng.choice(numbers))]
      if kind == "redundant":
        actions.append(actions[-1])
        continue
      if kind == "wrong_operand":
        others = [n for n in numbers if n != right] or [str(int(right) + 1)]
        wrong = f"{left} {op} {rng.choice(others)}"
      else:
        wrong = f"{left} {rng.choice(_OTHER_OPERATIONS[op])} {right}"
      actions.append(protocol.tagged("math_exp", wrong))
      if rng.random() < noise.carry_error:
        value = _plain(calculator.run(wrong).output)
        i += 1
      continue
    actions.append(protocol.tagged("math_exp", expected))
    value = _plain(calculator.run(expected).output)
    i += 1
  return actions + [protocol.tagged("answer", value)]


def plan_search(question: Question, rng: random.Random, noise: NoiseConfig, max_steps: int,
                titles: Sequence[str], kinds: collections.Counter | None = None) -> list[str]:
  """The action texts of one noisy demonstration of a built-in encyclopedia question."""
  kinds = kinds if kinds is not None else collections.Counter()
  by_length = sorted(titles, key=len, reverse=True)
  subject = lambda query: next(t for t in by_length if t in query)
  actions: list[str] = []
  k = 0
  while k < len(question.gold_steps):
    query = question.gold_steps[k]
    tools_left = max_steps - len(actions)
    if k == 2 and rng.random() < noise.misconception:
      kinds["misconception"] += 1
      return actions + [protocol.tagged("answer", subject(query))]
    if rng.random() < noise.step_noise and tools_left > len(question.gold_steps) - k:
      kind = rng.choice(["off_target", "premature_answer"] + (["redundant"] if actions else []))
      kinds[kind] += 1
      if kind == "premature_answer":  # the entity in hand, not the one asked for
        return actions + [protocol.tagged("answer", subject(query) if k else rng.choice(titles))]
      if kind == "redundant":
        actions.append(actions[-1])
      else:
        actions.append(protocol.tagged("search_query", query.replace(subject(query), rng.choice(titles))))
      continue
    actions.append(protocol.tagged("search_query", query))
    k += 1
  return actions + [protocol.tagged("answer", question.answers[0])]


class PlanSampler:
  """A `TurnSampler` (no model) whose rows write the planned actions of their questions.

  A row finds its plan by the question in its prompt; plans of one question
  are used in order, one per episode.
  """

  def __init__(self, vocab: Vocabulary, plans: dict[str, list[list[str]]], rows: int = 64, capacity: int = 1 << 16):
    self.vocab, self.rows, self.capacity = vocab, rows, capacity
    self.local_rows = tuple(range(rows))  # one host: every row is this process's
    self.collective = False
    self._plans = {q: collections.deque(p) for q, p in plans.items()}
    # A prompt's questions, each ended by the policy's chat format's turn end.
    self._questions = re.compile(r"Question: (.*?)" + re.escape(protocol.chat_format(vocab).end_turn), re.DOTALL)
    self._tokens: list[list[int]] = [[] for _ in range(rows)]
    self._script: list[collections.deque | None] = [None] * rows

  def any_process(self, *flags: bool):
    return flags[0] if len(flags) == 1 else flags

  def reset(self, rows: Sequence[int] | None = None) -> None:
    for row in range(self.rows) if rows is None else rows:
      self._tokens[row], self._script[row] = [], None

  def lengths(self) -> np.ndarray:
    return np.array([len(t) for t in self._tokens], np.int64)

  def append(self, new_tokens: dict[int, Sequence[int]]) -> None:
    for row, tokens in new_tokens.items():
      self._tokens[row] += list(tokens)

  def generate(self, rows: Sequence[int], config=None, row_keys=None) -> dict[int, TurnOutput]:
    out = {}
    for row in rows:
      if self._script[row] is None:
        found = self._questions.findall(self.vocab.decode(self._tokens[row]))
        if not found or not self._plans.get(found[-1]):
          raise ValueError(f"PlanSampler: no plan left for the question of row {row}: {found[-1:]}")
        self._script[row] = collections.deque(self._plans[found[-1]].popleft())
      if not self._script[row]:
        raise ValueError(f"PlanSampler: row {row} ran past its plan (the step cap forced an extra turn)")
      text = self._script[row].popleft()
      tokens = list(self.vocab.encode(text))
      self._tokens[row] += tokens
      out[row] = TurnOutput(tokens, [0.0] * len(tokens), text, "stop_string")
    return out


def demonstrations(task: Task, vocab: Vocabulary, noise: NoiseConfig | None = None, samples_per_question: int = 1,
                   seed: int = 0) -> tuple[list[Trajectory], dict[str, int]]:
  """Noisy demonstration trajectories of a built-in task, and how often each kind of noise occurred."""
  noise = noise or NoiseConfig()
  rng, kinds = random.Random(seed), collections.Counter()
  titles = task.titles
  plans: dict[str, list[list[str]]] = collections.defaultdict(list)
  for q in task.questions:
    for _ in range(samples_per_question):
      if titles:
        plans[q.question.strip()].append(plan_search(q, rng, noise, task.max_steps, titles, kinds))
      else:
        plans[q.question.strip()].append(plan_arithmetic(q, rng, noise, task.max_steps, kinds))
  runner = EpisodeRunner(PlanSampler(vocab, plans), vocab, task.tools, task.template,
                         EpisodeConfig(max_steps=task.max_steps))
  jobs = [(q, i) for q in task.questions for i in range(samples_per_question)]
  return list(runner.run(jobs)), dict(kinds)
