"""Online step-wise RL data: G fresh actions per logged state, sampled and scored, never executed.

At each recorded state s_i the *current* policy samples G actions in the
training mesh (the sampler runs on the trainer's params); a scorer (the
judge) rates each; advantages become token-aligned features for the loss.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from swirl_jax.data.decomposition import StateExample
from swirl_jax.environment.protocol import parse_action
from swirl_jax.rewards.judge import Judge, ProcessRequest
from swirl_jax.sampling.sampler import Sampler, SamplingConfig, TurnOutput
from swirl_jax.training.losses import advantages


class Scorer(Protocol):
  def score(self, states: Sequence[StateExample], actions: Sequence[TurnOutput]) -> np.ndarray:
    """A reward in [0, 1] for each (state, action) pair."""
    ...


class JudgeScorer:
  """Scores actions with a process judge, in the state's transcript (as Stage 1 steps are judged);
  an action the judge cannot read scores 0."""

  def __init__(self, judge: Judge, tags: Sequence[str] = ("math_exp", "search_query")):
    self.judge, self.tags = judge, list(tags)

  def score(self, states, actions):
    requests = []
    for state, action in zip(states, actions):
      parsed = parse_action(action.text, self.tags)
      tool = parsed.tag if parsed.kind != "malformed" else ""
      requests.append(ProcessRequest(state.question, state.transcript, action.text.strip(), tool,
                                     state.question_id, state.step_index))
    return np.array([v.score if v.score is not None else 0.0 for v in self.judge.judge_steps(requests)],
                    np.float32)


def sample_actions(sampler: Sampler, contexts: Sequence[Sequence[int]], samples_per_state: int,
                   config: SamplingConfig) -> list[TurnOutput]:
  """G actions for each context, state-major ([s0 g0, s0 g1, ..., s1 g0, ...])."""
  jobs = [c for c in contexts for _ in range(samples_per_state)]
  outputs: list[TurnOutput] = []
  for start in range(0, len(jobs), sampler.rows):
    chunk = jobs[start:start + sampler.rows]
    sampler.reset()
    sampler.append({row: list(c) for row, c in enumerate(chunk)})
    turn = sampler.generate(range(len(chunk)), config)
    outputs += [turn[row] for row in range(len(chunk))]
  return outputs


def online_features(contexts: Sequence[Sequence[int]], actions: Sequence[TurnOutput], advantage_per_action,
                    length: int) -> dict[str, np.ndarray]:
  """One row per (state, sample): context + action, loss on the action, its advantage per token.

  Rows are `length` long at most; shorter batches are padded only to the next
  multiple of 128, so a step does not pay for padding (a few shapes compile).
  """
  n = len(actions)
  per_state = n // len(contexts)
  longest = max(len(contexts[i // per_state]) + len(a.tokens) for i, a in enumerate(actions))
  if longest > length:
    raise ValueError(f"a state and its action need {longest} tokens; rows hold {length} "
                     "(raise TrainConfig.sequence_length)")
  length = min(length, -(-longest // 128) * 128)
  feats = {k: np.zeros((n, length), np.int32) for k in
           ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")}
  feats.update({k: np.zeros((n, length), np.float32) for k in
                ("decoder_loss_weights", "decoder_rewards", "decoder_behaviour_logprobs")})
  for i, action in enumerate(actions):
    context = list(contexts[i // per_state])
    tokens = context + list(action.tokens)
    t = len(tokens)
    feats["decoder_input_tokens"][i, :t] = tokens
    feats["decoder_target_tokens"][i, :t - 1] = tokens[1:]
    feats["decoder_segment_ids"][i, :t] = 1
    feats["decoder_positions"][i, :t] = np.arange(t)
    # Position p predicts token p + 1: the action's tokens are predicted from len(context) - 1 on.
    span = slice(len(context) - 1, t - 1)
    feats["decoder_loss_weights"][i, span] = 1.0
    feats["decoder_rewards"][i, span] = advantage_per_action[i]
    feats["decoder_behaviour_logprobs"][i, span] = action.logprobs
  return feats


def online_batch(sampler: Sampler, scorer: Scorer, states: Sequence[StateExample], samples_per_state: int,
                 config: SamplingConfig, length: int, baseline: str = "rloo"):
  """Samples, scores and lays out one online batch; returns (features, rewards [S, G], actions)."""
  contexts = [s.context for s in states]
  actions = sample_actions(sampler, contexts, samples_per_state, config)
  expanded_states = [s for s in states for _ in range(samples_per_state)]
  rewards = scorer.score(expanded_states, actions).reshape(len(states), samples_per_state)
  adv = advantages(rewards, baseline).reshape(-1)
  return online_features(contexts, actions, adv, length), rewards, actions
