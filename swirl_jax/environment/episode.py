"""The multi-step episode loop: sample an action, run its tool, feed the result back.

Many (question, sample) jobs share the sampler's rows; when an episode ends its
row takes the next waiting job at once, so the batch stays full. Every context
delta and action is kept as token ids, exactly as the sampler consumed and
produced them.

Multi-host: each process runs its own jobs in its own rows of the sampler, and
keeps calling the (collective) sampler until every process is done. A turn's
sampling key comes from (seed, question id, sample index, turn), so a job
samples the same trajectory whichever process, row or batch runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import gin

from swirl_jax import validation
from swirl_jax.environment import protocol
from swirl_jax.environment.tool import Tool, format_tool_result
from swirl_jax.records import Question, Step, Trajectory, trajectory_id
from swirl_jax.sampling.interfaces import TurnOutput, TurnSampler, Vocabulary
from swirl_jax.sampling.sampler import SamplingConfig, row_key


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
  """Step cap (paper: 5 for search, 10 for the calculator) and what to do at the edges."""

  max_steps: int | None = None  # None: the task's cap
  on_malformed: str = "end"  # "end" the episode, or "feedback": tell the model and go on
  at_step_cap: str = "force_answer"  # one more turn that must answer, or "end" unanswered
  max_action_tokens: int = 192
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    validation.sampling_settings(self)
    validation.at_least_one(self, ("max_action_tokens",) + (("max_steps",) if self.max_steps is not None else ()))
    if self.on_malformed not in ("end", "feedback"):
      raise ValueError(f"EpisodeConfig.on_malformed={self.on_malformed!r}; use 'end' or 'feedback'")
    if self.at_step_cap not in ("force_answer", "end"):
      raise ValueError(f"EpisodeConfig.at_step_cap={self.at_step_cap!r}; use 'force_answer' or 'end'")


@dataclasses.dataclass
class _Episode:
  question: Question
  sample_index: int
  steps: list[Step]
  pending_tokens: list[int]  # context delta not yet shown to the model
  pending_text: str
  forced: bool = False


class EpisodeRunner:
  """Runs episodes of a prompt template and tools on a sampler."""

  def __init__(self, sampler: TurnSampler, vocab: Vocabulary, tools: Sequence[Tool],
               template: protocol.PromptTemplate, config: EpisodeConfig | None = None, seed: int = 0):
    config = config or EpisodeConfig()
    if config.max_steps is None:
      raise ValueError("EpisodeConfig.max_steps is not set (generate() fills in the task's cap)")
    self.sampler = sampler
    self.vocab = vocab
    self.tools = {t.tag: t for t in tools}
    self.template = template
    self.chat = protocol.chat_format(vocab)  # the policy family's turn markers
    self.config = config
    self.seed = seed
    self.sampling = SamplingConfig(
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        max_new_tokens=config.max_action_tokens, stop_strings=protocol.stop_strings(list(self.tools)),
        stop_ids=protocol.turn_end_ids(vocab))

  def _encode(self, text: str, bos: bool = False) -> list[int]:
    # (Qwen's tokenizer has no BOS: bos_id None.)
    return ([self.vocab.bos_id] if bos and self.vocab.bos_id is not None else []) + list(self.vocab.encode(text))

  def run(self, jobs: Iterable[tuple[Question, int]],
          on_step: Callable[[int], None] | None = None) -> Iterator[Trajectory]:
    """Yields one finished trajectory per (question, sample index) job, as they finish.

    Every process calls it (with its own jobs, possibly none) and iterates it to the end.
    """
    waiting = iter(jobs)
    episodes: dict[int, _Episode] = {}
    free = list(self.sampler.local_rows)[::-1]
    exhausted = False
    while True:
      ended_at_capacity = True
      while ended_at_capacity:  # host work only: fill free rows, end contexts that cannot fit
        while free and not exhausted:
          job = next(waiting, None)
          if job is None:
            exhausted = True
            break
          question, sample_index = job
          row = free.pop()
          self.sampler.reset([row])
          text = self.template.prompt(question.question, self.chat)
          episodes[row] = _Episode(question, sample_index, [], self._encode(text, bos=True), text)
        ended_at_capacity = False
        for row, episode in list(episodes.items()):
          room = self.sampler.capacity - self.sampler.lengths()[row]
          if len(episode.pending_tokens) + self.config.max_action_tokens > room:
            del episodes[row]
            free.append(row)
            ended_at_capacity = True
            yield self._finish(episode, "capacity", None)
      if not self.sampler.any_process(bool(episodes)):
        return
      self.sampler.append({row: e.pending_tokens for row, e in episodes.items()})
      keys = {row: row_key(self.seed, e.question.id, e.sample_index, len(e.steps)) for row, e in episodes.items()}
      outputs = self.sampler.generate(list(episodes), self.sampling, row_keys=keys)
      if on_step is not None:
        on_step(sum(len(o.tokens) for o in outputs.values()))
      for row, output in outputs.items():
        trajectory = self._advance(episodes[row], output)
        if trajectory is not None:
          del episodes[row]
          free.append(row)
          yield trajectory

  def _advance(self, episode: _Episode, output: TurnOutput) -> Trajectory | None:
    """Records the step; returns the trajectory if the episode ended, else sets the next delta."""
    action = protocol.parse_action(output.text, list(self.tools))
    closed = output.finish_reason == "stop_id"
    step = Step(
        index=len(episode.steps), context_tokens=episode.pending_tokens,
        context_text=episode.pending_text, action_tokens=output.tokens, action_text=output.text,
        behaviour_logprobs=output.logprobs, kind=action.kind, finish_reason=output.finish_reason,
        tool=action.tag, tool_query=action.query if action.kind == "tool" else "",
        malformed_reason=action.malformed_reason, forced_answer=episode.forced)
    episode.steps.append(step)
    if action.kind == "answer":
      return self._finish(episode, "answered", action.query)
    if episode.forced:
      return self._finish(episode, "step_cap", None)
    if output.finish_reason == "capacity":
      return self._finish(episode, "capacity", None)
    if action.kind == "malformed":
      if self.config.on_malformed == "end":
        return self._finish(episode, "malformed", None)
      message = f"That step was not valid ({action.malformed_reason}). Write exactly one tag per step."
    else:
      result = self.tools[action.tag].run(action.query)
      step.tool_output, step.tool_error = result.output, result.error
      message = format_tool_result(action.query, result)
    if len(episode.steps) >= self.config.max_steps:
      if self.config.at_step_cap == "end":
        return self._finish(episode, "step_cap", None)
      message += "\n\n" + protocol.FORCE_ANSWER
      episode.forced = True
    episode.pending_text = protocol.user_turn(message, closed, self.chat)
    episode.pending_tokens = self._encode(episode.pending_text)
    return None

  def _finish(self, episode: _Episode, finish: str, answer: str | None) -> Trajectory:
    q = episode.question
    return Trajectory(
        id=trajectory_id(q.id, episode.sample_index), question_id=q.id,
        sample_index=episode.sample_index, source=q.source, question=q.question,
        gold_answers=list(q.answers), steps=episode.steps, final_answer=answer, finish=finish)
