"""Step-wise decomposition: a trajectory with K actions becomes K (state, action) examples.

Two layouts of the same data:
- expanded: one example per state s_i: `context` = every token before action i
  (prompt, earlier actions, tool results), `action` = action i's tokens;
- prefix-shared: one row per trajectory, the whole token sequence with weights
  on the tokens of every kept action. One causal pass over it gives the same
  per-action log-probs as the K expanded examples, at about 1/K the tokens.
Token ids come from the trajectory files unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from swirl_jax.records import Step, Trajectory, judge_transcript


@dataclasses.dataclass
class StateExample:
  trajectory_id: str
  step_index: int
  context: list[int]
  action: list[int]
  reward: float  # the process judge's score of the action (0 when unjudged)
  behaviour_logprobs: list[float]
  # What a judge needs to score a fresh action at this state (Stage 2).
  question_id: str = ""
  question: str = ""
  transcript: str = ""  # the question and earlier steps, as judges read them


def step_reward(step: Step) -> float:
  """The process judge's score; 0 where the step has none."""
  score = step.process.score if step.process else None
  return float(score) if score is not None else 0.0


def expand(trajectory: Trajectory) -> list[StateExample]:
  """One example per step, in order."""
  examples, prefix = [], []
  for step in trajectory.steps:
    prefix = prefix + list(step.context_tokens)
    examples.append(StateExample(trajectory.id, step.index, list(prefix), list(step.action_tokens),
                                 step_reward(step), list(step.behaviour_logprobs), trajectory.question_id,
                                 trajectory.question, judge_transcript(trajectory, step.index)))
    prefix = prefix + list(step.action_tokens)
  return examples


@dataclasses.dataclass
class SharedRow:
  trajectory_id: str
  tokens: np.ndarray  # [T] int32: every context and action token
  loss_weights: np.ndarray  # [T] 1.0 on action tokens of kept steps
  rewards: np.ndarray  # [T] the step reward on its action tokens
  behaviour_logprobs: np.ndarray  # [T] on action tokens


def prefix_shared(trajectory: Trajectory) -> SharedRow:
  """The whole trajectory as one row; weights mark every action token."""
  tokens, weights, rewards, logprobs = [], [], [], []
  for step in trajectory.steps:
    n_ctx, n_act = len(step.context_tokens), len(step.action_tokens)
    tokens += list(step.context_tokens) + list(step.action_tokens)
    weights += [0.0] * n_ctx + [1.0] * n_act
    rewards += [0.0] * n_ctx + [step_reward(step)] * n_act
    logprobs += [0.0] * n_ctx + list(step.behaviour_logprobs)
  return SharedRow(trajectory.id, np.asarray(tokens, np.int32), np.asarray(weights, np.float32),
                   np.asarray(rewards, np.float32), np.asarray(logprobs, np.float32))
