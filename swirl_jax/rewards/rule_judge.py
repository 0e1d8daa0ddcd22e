"""A judge for the built-in tasks, where the true quality of each step is known.

Process, calculator task: a step is GOOD when its expression evaluates without
error to one of the gold chain's intermediate values not reached before (as
often as the chain passes it); an
answer is GOOD when it is correct. Search task: a query is GOOD when it names a
gold hop's subject whose passage was not retrieved before (BM25 ranks that
passage first for such queries, see the search test). Outcome:
the rule matchers of answers.py.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from swirl_jax.records import Question
from swirl_jax.environment.calculator import Calculator, CalculatorError
from swirl_jax.environment.protocol import parse_action
from swirl_jax.rewards.answers import answer_correct
from swirl_jax.records import BAD, GOOD, NO, YES, Verdict
from swirl_jax.rewards.judge import OutcomeRequest, ProcessRequest

_MATH_EXP = re.compile(r"<math_exp>(.*?)</math_exp>", re.DOTALL)


class RuleJudge:
  name = "rule"

  def __init__(self, questions: Sequence[Question], search_titles: Sequence[str] = ()):
    self.questions: Mapping[str, Question] = {q.id: q for q in questions}
    self.titles = sorted(search_titles, key=len, reverse=True)
    self.calculator = Calculator()

  def _verdict(self, good: bool, reasoning: str) -> Verdict:
    return Verdict(GOOD if good else BAD, 1.0 if good else 0.0, reasoning, self.name)

  def _value(self, expression: str):
    try:
      return self.calculator.evaluate(expression)
    except CalculatorError:
      return None

  def _subject(self, text: str) -> str | None:
    return next((t for t in self.titles if t in text), None)

  def judge_step(self, request: ProcessRequest) -> Verdict:
    question = self.questions.get(request.question_id)
    if question is None or not question.gold_steps:
      return Verdict(None, None, "", self.name, f"no gold steps for question {request.question_id!r}")
    action = parse_action(request.action, ["math_exp", "search_query"])
    if action.kind == "malformed":
      return self._verdict(False, f"malformed: {action.malformed_reason}")
    if action.kind == "answer":
      good = answer_correct(action.query, question.answers)
      return self._verdict(good, "correct answer" if good else "wrong or premature answer")
    if action.tag == "math_exp":
      gold_values = [self._value(e) for e in question.gold_steps]
      earlier = [self._value(e) for e in _MATH_EXP.findall(request.context)]
      value = self._value(action.query)
      if value is None:
        return self._verdict(False, "the expression does not evaluate")
      good = gold_values.count(value) > earlier.count(value)  # a chain may pass a value twice
      return self._verdict(good, f"value {value} {'advances' if good else 'does not advance'} the solution")
    # Search: the query must name a gold hop's subject whose passage was not retrieved yet.
    subjects = {self._subject(step) for step in question.gold_steps} - {None}
    target = self._subject(action.query)
    seen = target is not None and f"-> {target}:" in request.context
    good = target in subjects and not seen
    return self._verdict(good, f"query names {target!r}; gold subjects {sorted(subjects)}"
                               + ("; already retrieved" if seen else ""))

  def judge_steps(self, requests: Sequence[ProcessRequest]) -> list[Verdict]:
    return [self.judge_step(r) for r in requests]

  def judge_outcomes(self, requests: Sequence[OutcomeRequest]) -> list[Verdict]:
    out = []
    for r in requests:
      good = answer_correct(r.answer, r.gold_answers)
      out.append(Verdict(YES if good else NO, 1.0 if good else 0.0, "rule match", self.name))
    return out
