"""`python -m swirl_jax.demo`: the embedded Gemma 3 270M on built-in calculator problems in the tool loop.

It loads the real model from its PyPI packages, runs a few built-in arithmetic
questions through the multi-step protocol with the KV-cache sampler and the
calculator, prints one trajectory in full, and reports speed. (`make demo` is
SWiRL itself, from nothing: experiments/miniature/demo.gin.)
"""

from __future__ import annotations

import time

from absl import app, flags

from swirl_jax.checkpoints import embedded
from swirl_jax.models.transformer import Transformer
from swirl_jax.records import Trajectory, format_trajectory
from swirl_jax.environment.episode import EpisodeConfig, EpisodeRunner
from swirl_jax.generation import summarize
from swirl_jax.sampling.interfaces import Vocabulary
from swirl_jax.sampling.sampler import Sampler
from swirl_jax.tasks import build_task

_QUESTIONS = flags.DEFINE_integer("questions", 4, "Built-in calculator questions to run.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")


def main(argv: list[str]) -> None:
  del argv
  start = time.perf_counter()
  model, vocab = embedded.load_gemma3_270m()
  print(f"loaded Gemma 3 270M ({model.config.num_params() / 1e6:.0f}M params) in "
        f"{time.perf_counter() - start:.1f} s from {embedded.gemma3_270m_gguf_path()}")
  show_episodes(model, vocab, _QUESTIONS.value, _TEMPERATURE.value)


def show_episodes(model: Transformer, vocab: Vocabulary, questions: int, temperature: float = 0.0,
                  max_action_tokens: int = 96) -> list[Trajectory]:
  """Runs `questions` built-in calculator questions; prints the fullest trajectory and the speed."""
  task = build_task("builtin_arithmetic", split="test", num_questions=questions, vocab=vocab)
  sampler = Sampler(model, rows=min(4, questions), capacity=1536, vocab=vocab)
  config = EpisodeConfig(max_steps=task.max_steps, temperature=temperature, max_action_tokens=max_action_tokens)
  runner = EpisodeRunner(sampler, vocab, task.tools, task.template, config)
  new_tokens = 0

  def count(n):
    nonlocal new_tokens
    new_tokens += n

  start = time.perf_counter()
  trajectories = list(runner.run([(q, 0) for q in task.questions], on_step=count))
  seconds = time.perf_counter() - start
  print(format_trajectory(max(trajectories, key=lambda t: (t.finish == "answered", len(t.steps)))))
  correct = sum(t.final_answer is not None and t.final_answer.strip() == t.gold_answers[0] for t in trajectories)
  summary = summarize(trajectories, seconds, new_tokens)
  print(f"\n{len(trajectories)} episodes, {summary['steps']} steps, {correct} exactly correct; "
        f"{new_tokens} tokens sampled in {seconds:.1f} s ({summary['tokens_per_second']} tokens/s, "
        f"compile {sum(sampler.compile_seconds.values()):.1f} s over {len(sampler.compile_seconds)} shapes)")
  return trajectories


if __name__ == "__main__":
  app.run(main)
