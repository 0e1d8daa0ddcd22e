"""The paper's four filtering strategies over judged trajectories.

process: keep a trajectory only if every step is GOOD (an unjudged step does
not count as GOOD); outcome: keep it if the outcome verdict is YES;
process_and_outcome: both; none: keep all.
"""

from __future__ import annotations

from typing import Iterable

from swirl_jax.records import GOOD, YES, Trajectory

STRATEGIES = ("none", "process", "outcome", "process_and_outcome")


def all_steps_good(t: Trajectory) -> bool:
  return bool(t.steps) and all(label == GOOD for label in t.process_labels)


def outcome_correct(t: Trajectory) -> bool:
  return t.outcome_label == YES


def keep(t: Trajectory, strategy: str) -> bool:
  if strategy == "none":
    return True
  if strategy == "process":
    return all_steps_good(t)
  if strategy == "outcome":
    return outcome_correct(t)
  if strategy == "process_and_outcome":
    return all_steps_good(t) and outcome_correct(t)
  raise ValueError(f"unknown filter {strategy!r}; use one of {STRATEGIES}")


def filter_trajectories(trajectories: Iterable[Trajectory], strategy: str) -> list[Trajectory]:
  return [t for t in trajectories if keep(t, strategy)]


def survival(trajectories: Iterable[Trajectory]) -> dict[str, int]:
  """How many trajectories each strategy keeps (and the total)."""
  trajectories = list(trajectories)
  counts = {s: sum(keep(t, s) for t in trajectories) for s in STRATEGIES}
  counts["total"] = len(trajectories)
  return counts
