"""Noisy demonstrations and the small trained vocabulary of the miniature reproduction."""

import collections
import random

import pytest

from swirl_jax import tasks
from swirl_jax.environment import protocol
from swirl_jax.checkpoints.vocabulary_training import train_vocabulary
from swirl_jax import scripted_demonstrations as demonstrations
from swirl_jax.judging import judge_trajectories
from swirl_jax.rewards.answers import answer_correct
from swirl_jax.rewards.rule_judge import RuleJudge


@pytest.fixture(scope="module")
def small_tasks():
  arithmetic = tasks.build_task("builtin_arithmetic", split="demo", num_questions=60,
                                template=protocol.PromptTemplate("Use the calculator.", ()))
  encyclopedia = tasks.build_task("builtin_encyclopedia", split="train", num_questions=60,
                                  template=protocol.PromptTemplate("Use the search tool.", ()), encyclopedia_organizations=60)
  return arithmetic, encyclopedia


@pytest.fixture(scope="module")
def vocab(small_tasks, tmp_path_factory):
  texts = []
  for task in small_tasks:
    texts += [task.template.prompt(q.question) for q in task.questions]
    texts += [f"<math_exp>{s}</math_exp> {s} -> 1.5" for q in task.questions for s in q.gold_steps]
    texts += [f"{p.title}: {p.text}" for p in task.passages]
  return train_vocabulary(texts, str(tmp_path_factory.mktemp("vocab") / "v.model"), vocab_size=700)


def _judge(task):
  return RuleJudge(task.questions, task.titles)


def test_vocabulary_keeps_protocol_text_exact(vocab):
  assert vocab.vocab_size == 700 and vocab.eos_id == 1 and vocab.bos_id == 2
  text = "<start_of_turn>user\n  Ada has 12 apples.<end_of_turn>\n<start_of_turn>model\n<math_exp>12 * 3</math_exp>"
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text
  for symbol in ("<start_of_turn>", "<end_of_turn>", "<math_exp>", "</math_exp>", "</answer>"):
    assert len(vocab.encode(symbol)) == 1, symbol
  assert [vocab.decode([i]) for i in vocab.encode("1234")] == ["1", "2", "3", "4"]  # digits split


@pytest.mark.parametrize("which", [0, 1])
def test_noise_free_demonstrations_are_gold_and_judged_good(small_tasks, vocab, which):
  task = small_tasks[which]
  made, kinds = demonstrations.demonstrations(task, vocab, demonstrations.NoiseConfig(step_noise=0.0))
  assert kinds == {} and len(made) == len(task.questions)
  judge_trajectories(made, _judge(task))
  for t in made:
    assert t.finish == "answered" and answer_correct(t.final_answer, t.gold_answers), t.id
    assert all(s.process.verdict == "GOOD" for s in t.steps), t.id
    # Token ids are exactly what the episode loop feeds and what the vocabulary makes of the action.
    end_of_turn = vocab.encode("<end_of_turn>")
    for s in t.steps:
      assert s.action_tokens == list(vocab.encode(s.action_text))
      # The prompt opens with BOS; every later context is the tool turn after the action's end.
      opening = [vocab.bos_id] if s.index == 0 else end_of_turn
      assert s.context_tokens[:len(opening)] == opening, (t.id, s.index)
      assert vocab.decode(s.context_tokens[1:] if s.index == 0 else s.context_tokens) == s.context_text


@pytest.mark.parametrize("which", [0, 1])
def test_noisy_demonstrations_mix_in_bad_steps_of_every_kind(small_tasks, vocab, which):
  task = small_tasks[which]
  noise = demonstrations.NoiseConfig(step_noise=0.5, carry_error=0.5, misconception=1.0)
  made, kinds = demonstrations.demonstrations(task, vocab, noise, samples_per_question=3, seed=1)
  expected = ({"wrong_operand", "wrong_operation", "redundant", "premature_answer", "misconception"} if which == 0
              else {"off_target", "redundant", "premature_answer", "misconception"})
  assert set(kinds) == expected
  judge_trajectories(made, _judge(task))
  verdicts = collections.Counter(s.process.verdict for t in made for s in t.steps)
  assert verdicts["GOOD"] > 0 and verdicts["BAD"] > 0
  assert all(t.finish == "answered" and len([s for s in t.steps if s.kind == "tool"]) <= task.max_steps
             for t in made)
  correct = sum(answer_correct(t.final_answer, t.gold_answers) for t in made)
  assert 0 < correct < len(made)


def test_misconception_is_systematic(small_tasks):
  """Division steps become subtractions (arithmetic); 3-hop questions stop one hop early (search)."""
  arithmetic, encyclopedia = small_tasks
  rng, noise = random.Random(0), demonstrations.NoiseConfig(step_noise=0.0, misconception=1.0)
  division = next(q for q in arithmetic.questions if any(" / " in s for s in q.gold_steps))
  plan = demonstrations.plan_arithmetic(division, rng, noise, 10)
  assert not any(" / " in a for a in plan) and len(plan) == len(division.gold_steps) + 1
  three_hops = next(q for q in encyclopedia.questions if len(q.gold_steps) == 3)
  titles = encyclopedia.titles
  plan = demonstrations.plan_search(three_hops, rng, noise, 5, titles)
  assert len(plan) == 3 and plan[-1].startswith("<answer>") and plan[-1] != f"<answer>{three_hops.answers[0]}</answer>"


def test_demonstrations_run_in_a_qwen3_vocabulary_s_chat_format(small_tasks, tmp_path):
  """The scripted sampler finds each prompt's question by the policy's own turn end (ChatML's here)."""
  from swirl_jax.checkpoints.hf_tokenizer import HFTokenizerVocabulary
  from swirl_jax.testing.tiny_hf_tokenizer import write_tiny_hf_tokenizer
  qwen = HFTokenizerVocabulary(write_tiny_hf_tokenizer(str(tmp_path), "qwen3"))
  task = small_tasks[0]
  made, _ = demonstrations.demonstrations(task, qwen, demonstrations.NoiseConfig(step_noise=0.0))
  assert len(made) == len(task.questions)
  assert all(t.finish == "answered" and answer_correct(t.final_answer, t.gold_answers) for t in made)
  assert "<|im_start|>assistant\n" in made[0].steps[0].context_text and "<start_of_turn>" not in made[0].steps[0].context_text
