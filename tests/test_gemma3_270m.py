"""The embedded Gemma 3 270M: tokenizer, perplexity, greedy continuations, reference parity, and
the model judge run by it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swirl_jax.models import init_model
from swirl_jax.rewards import judge

SENTENCES = [
    "The cat sat on the mat and looked out of the window.",
    "Paris is the capital and most populous city of France.",
    "She opened the door, took off her coat and sat down to read the newspaper.",
    "Water boils at one hundred degrees Celsius at sea level.",
]

ROUND_TRIP = [
    "plain ascii text.",
    "Hello  world\n\n  two spaces, two newlines",
    "   leading spaces\t\ttabs and trailing   ",
    "digits 0123456789 3.14159 -42 1,000,000 x**2",
    "unicode: ünïcödé, 日本語, emoji 🙂, € and Ωμέγα",
    "\n\n\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "",
]


def _bos(vocab, text):
  return [vocab.bos_id] + list(vocab.encode(text))


def test_tokenizer_round_trips_and_specials(gemma3_270m_vocabulary):
  vocab = gemma3_270m_vocabulary
  for text in ROUND_TRIP:
    assert vocab.decode(vocab.encode(text)) == text, repr(text)
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id) == (0, 1, 3, 2)
  assert vocab.vocab_size == 262_144
  assert vocab.encode("<start_of_turn>") == [105]
  assert vocab.encode("<end_of_turn>") == [106]
  # No dummy prefix: a word at the start has no leading-space piece.
  assert vocab.decode(vocab.encode("Hello")[:1]) == "Hello"
  # The TF path of seqio (used by seqio tasks) agrees with the Python path.
  text = ROUND_TRIP[4]
  assert list(vocab.encode_tf(text).numpy()) == vocab.encode(text)


def _mean_perplexity(model, vocab):
  perplexities = []
  for sentence in SENTENCES:
    ids = np.array([_bos(vocab, sentence)])
    logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(ids))[0, :-1]))
    nll = -logp[np.arange(len(ids[0]) - 1), ids[0, 1:]].mean()
    with np.errstate(over="ignore"):  # a random model's perplexity may be inf
      perplexities.append(np.exp(np.float64(nll)))
  return float(np.mean(perplexities))


@pytest.mark.slow
def test_perplexity_real_vs_random(gemma3_270m):
  model, vocab = gemma3_270m
  real = _mean_perplexity(model, vocab)
  random = _mean_perplexity(init_model(model.config, seed=0), vocab)
  assert real < 100, real
  assert random > 10_000, random


def _greedy(model, vocab, prompt, steps):
  ids = _bos(vocab, prompt)
  for _ in range(steps):
    logits = model(jnp.asarray([ids]))
    ids.append(int(jnp.argmax(logits[0, -1])))
  return vocab.decode(ids[len(_bos(vocab, prompt)):])


@pytest.mark.slow
@pytest.mark.parametrize("prompt,expected", [
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("One, two, three, four,", " five"),
])
def test_greedy_continuations(gemma3_270m, prompt, expected):
  model, vocab = gemma3_270m
  assert _greedy(model, vocab, prompt, 3).startswith(expected)


@pytest.mark.slow
def test_logits_and_tokens_match_transformers_gguf(gemma3_270m):
  """transformers reads the same GGUF file: same token ids, same logits."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  from swirl_jax.checkpoints import embedded
  import os
  path = embedded.gemma3_270m_gguf_path()
  model, vocab = gemma3_270m
  directory, name = os.path.split(path)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  for text in ROUND_TRIP + SENTENCES:
    assert tokenizer.encode(text, add_special_tokens=False) == vocab.encode(text), repr(text)
  reference = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  ids = _bos(vocab, " ".join(SENTENCES))
  with torch.no_grad():
    expected = reference(torch.tensor([ids])).logits[0].numpy()
  ours = np.asarray(model(jnp.asarray([ids])))[0]
  np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4)


# The model judge on the embedded model: here, so that one worker loads the model for all of them.
_JUDGED_STEPS = [
    judge.ProcessRequest("What is 3 * 4?", "Question: What is 3 * 4?", "<math_exp>3 * 4</math_exp>", "math_exp"),
    judge.ProcessRequest("What is 3 * 4?", "Question: What is 3 * 4?", "<answer>banana</answer>", "answer")]


@pytest.mark.slow
def test_model_judge_scores_on_the_embedded_model(gemma3_270m):
  """Score mode is a proper probability that prefers the right step."""
  from swirl_jax.rewards.model_judge import ModelJudge
  model, vocab = gemma3_270m
  scored = ModelJudge(model, vocab, mode="score", batch_size=2).judge_steps(_JUDGED_STEPS)
  assert all(0.0 <= v.score <= 1.0 and v.verdict in ("GOOD", "BAD") for v in scored)
  # The model's preference, not the code's threshold: the right calculator call beats "banana".
  assert scored[0].score > scored[1].score, [v.score for v in scored]
  # (Its outcome scores do not separate "Paris" from "banana" as the capital of France: 0.81 and
  # 0.82, measured; a 270M model is no outcome judge, so only their range is checked.)
  outcome = ModelJudge(model, vocab, mode="score", batch_size=2).judge_outcomes(
      [judge.OutcomeRequest("Capital of France?", "Paris", ("Paris",))])[0]
  assert outcome.verdict in ("YES", "NO") and np.isfinite(outcome.score) and 0.0 <= outcome.score <= 1.0


@pytest.mark.slow
def test_model_judge_generates_on_the_embedded_model(gemma3_270m):
  """Generate mode reads a verdict or records none (a sampler over the 270M model: slow)."""
  from swirl_jax.rewards.model_judge import ModelJudge
  model, vocab = gemma3_270m
  generated = ModelJudge(model, vocab, mode="generate", batch_size=2, max_new_tokens=48,
                         capacity=1024).judge_steps(_JUDGED_STEPS)
  for v in generated:
    assert (v.verdict in ("GOOD", "BAD")) != (v.error == "unparseable judge output")
    assert v.reasoning


@pytest.mark.slow
def test_python_m_swirl_jax_demo_shows_an_episode_of_the_embedded_model(gemma3_270m, capsys):
  from swirl_jax import demo
  model, vocab = gemma3_270m
  trajectories = demo.show_episodes(model, vocab, questions=1, max_action_tokens=24)
  printed = capsys.readouterr().out
  assert len(trajectories) == 1 and trajectories[0].steps
  assert "1 episodes" in printed and "tokens sampled" in printed and f"=== trajectory {trajectories[0].id}" in printed
