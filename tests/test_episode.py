"""The episode loop: protocol, tools, malformed actions, step cap, row reuse, token bookkeeping."""

import numpy as np
import pytest

from swirl_jax.records import Question
from swirl_jax.environment import protocol
from swirl_jax.environment.calculator import Calculator
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.environment.search import BM25Search
from swirl_jax.records import Passage
from swirl_jax.testing.fakes import ScriptedSampler


def _runner(script, rows=2, **config):
  sampler = ScriptedSampler(script, rows)
  tools = [Calculator(), BM25Search([Passage("Zorba", "Zorba lives in Quill.")])]
  template = protocol.PromptTemplate("Use tools.", ())
  config = EpisodeConfig(**{"max_steps": 3, **config})
  return EpisodeRunner(sampler, sampler.vocab, tools, template, config), sampler


def _q(name, answer="x"):
  return Question(name, f"question {name}?", (answer,), "test")


def test_tool_steps_then_answer_with_exact_token_bookkeeping():
  script = {"question A": ["Add. <math_exp>2 + 3</math_exp>", "Search. <search_query>Zorba</search_query>",
                           "Done. <answer>5</answer>"]}
  runner, sampler = _runner(script)
  [t] = list(runner.run([(_q("A"), 0)]))
  assert t.finish == "answered" and t.final_answer == "5" and t.id == "A#0"
  assert [s.kind for s in t.steps] == ["tool", "tool", "answer"]
  assert t.steps[0].tool_output == "5.0"
  assert t.steps[1].tool_output == "Zorba: Zorba lives in Quill."
  assert t.steps[1].context_text == protocol.user_turn("2 + 3 -> 5.0", model_turn_closed=False)
  # Every token the sampler consumed or produced is in the record, in order.
  record = [tok for s in t.steps for tok in s.context_tokens + s.action_tokens]
  assert record == sampler.fed[0]
  assert record[0] == 2  # BOS
  assert t.steps[2].behaviour_logprobs == [-0.5] * len(t.steps[2].action_tokens)


def test_malformed_end_or_feedback():
  script = {"question M": ["no tags at all", "<answer>7</answer>"]}
  runner, _ = _runner(script)
  [t] = list(runner.run([(_q("M"), 0)]))
  assert t.finish == "malformed" and t.steps[0].malformed_reason.startswith("no <search_query>")
  runner, sampler = _runner(script, on_malformed="feedback")
  [t] = list(runner.run([(_q("M"), 0)]))
  assert t.finish == "answered" and t.final_answer == "7"
  assert "not valid" in t.steps[1].context_text


@pytest.mark.parametrize("at_cap,finish,steps", [("force_answer", "answered", 4), ("end", "step_cap", 3)])
def test_step_cap(at_cap, finish, steps):
  script = {"question C": ["<math_exp>1+1</math_exp>"] * 3 + ["<answer>2</answer>"]}
  runner, _ = _runner(script, at_step_cap=at_cap)
  [t] = list(runner.run([(_q("C"), 0)]))
  assert t.finish == finish and len(t.steps) == steps
  if at_cap == "force_answer":
    assert protocol.FORCE_ANSWER in t.steps[3].context_text and t.steps[3].forced_answer


def test_rows_are_reused_and_every_job_finishes_once():
  script = {f"question {i}": ["<math_exp>1+1</math_exp>"] * (i % 3) + ["<answer>2</answer>"] for i in range(7)}
  runner, sampler = _runner(script, rows=3)
  jobs = [(_q(str(i)), s) for i in range(7) for s in range(2)]
  done = list(runner.run(jobs))
  assert sorted(t.id for t in done) == sorted(f"{i}#{s}" for i in range(7) for s in range(2))
  assert sampler.max_rows_busy == 3
  assert all(t.finish == "answered" for t in done)


@pytest.mark.parametrize("text,kind,detail", [
    ("think <math_exp> 3*4 </math_exp>", "tool", "3*4"),
    ("<answer>Paris</answer><end_of_turn>", "answer", "Paris"),
    ("<math_exp>1</math_exp> and <answer>1</answer>", "malformed", "2 tags in one step; write exactly one"),
    ("<math_exp>1+1", "malformed", "unclosed <math_exp>"),
    ("<search_query>x</search_query>", "malformed", "the <search_query> tool is not available here"),
    ("<math_exp>  </math_exp>", "malformed", "empty <math_exp>"),
])
def test_parse_action(text, kind, detail):
  action = protocol.parse_action(text, ["math_exp"])
  assert action.kind == kind
  assert (action.query if kind != "malformed" else action.malformed_reason) == detail
