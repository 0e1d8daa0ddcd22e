"""The typed boundaries of sampling: what the episode loop and the judges need of a vocabulary and
of a sampler, and how a turn ends.

`Sampler` and `checkpoints.tokenizer.SentencePieceVocabulary` implement these; so do the
scripted stand-ins of `swirl_jax.testing` and any a user writes (a replay of logged turns, a
remote model).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Vocabulary(Protocol):
  """Text <-> token ids, and the ids that open and end a sequence."""

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  def encode(self, text: str) -> Sequence[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class Finish(enum.IntEnum):
  """Why a turn ended. The integers are what the compiled decode loop writes (0: still running)."""

  RUNNING = 0
  STOP_ID = 1
  MAX_NEW_TOKENS = 2
  CAPACITY = 3
  STOP_STRING = 4

  @property
  def reason(self) -> str:
    """The name a trajectory records ("stop_id", "stop_string", "max_new_tokens", "capacity")."""
    return self.name.lower()


FINISH_REASONS = tuple(f.reason for f in Finish if f is not Finish.RUNNING)


@dataclasses.dataclass
class TurnOutput:
  """One row's sampled turn. logprobs are under the model (temperature 1)."""

  tokens: list[int]
  logprobs: list[float]
  text: str
  finish_reason: str  # one of FINISH_REASONS


@runtime_checkable
class TurnSampler(Protocol):
  """Rows of persistent contexts that the episode loop fills and samples turns from.

  `append`, `generate` and `any_process` are collective on a multi-host mesh: every process
  calls them, each with its own rows (`local_rows`).
  """

  rows: int
  capacity: int
  local_rows: tuple[int, ...]
  collective: bool

  def reset(self, rows: Sequence[int] | None = None) -> None: ...

  def lengths(self) -> np.ndarray: ...

  def append(self, new_tokens: Mapping[int, Sequence[int]]) -> None: ...

  def generate(self, rows: Sequence[int], config, row_keys: Mapping[int, np.ndarray] | None = None
               ) -> dict[int, TurnOutput]: ...

  def any_process(self, *flags: bool): ...
