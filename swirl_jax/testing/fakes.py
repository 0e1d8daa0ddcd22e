"""Stand-ins for a vocabulary and a sampler, for tests of the episode loop and of code built on it.

They implement the protocols of `swirl_jax.sampling.interfaces` without a model: `CharVocab` maps
characters to ids, `ScriptedSampler` replays scripted turns per question.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from swirl_jax.sampling.interfaces import TurnOutput


class CharVocab:
  """One id per character (plus the chat markers), enough for the loop's bookkeeping."""

  bos_id = 2
  eos_id = 1
  markers = {"<start_of_turn>": 4, "<end_of_turn>": 5}

  def encode(self, text):
    ids, i = [], 0
    while i < len(text):
      for marker, idx in self.markers.items():
        if text.startswith(marker, i):
          ids.append(idx)
          i += len(marker)
          break
      else:
        ids.append(1000 + ord(text[i]))
        i += 1
    return ids

  def decode(self, ids):
    inverse = {v: k for k, v in self.markers.items()}
    return "".join(inverse.get(i, chr(i - 1000) if i >= 1000 else "") for i in ids)


class ScriptedSampler:
  """Stands in for Sampler: replays scripted turns per question, records what it was fed."""

  def __init__(self, script, rows=2, capacity=100_000):
    self.script, self.rows, self.capacity = script, rows, capacity
    self.local_rows = tuple(range(rows))
    self.collective = False
    self.vocab = CharVocab()
    self.fed = {r: [] for r in range(rows)}
    self.turn = {r: 0 for r in range(rows)}
    self.question_of = {}
    self.max_rows_busy = 0

  def any_process(self, *flags: bool):
    return flags[0] if len(flags) == 1 else flags

  def reset(self, rows: Sequence[int] | None = None) -> None:
    rows = range(self.rows) if rows is None else rows
    for r in rows:
      self.fed[r], self.turn[r] = [], 0

  def lengths(self):
    return np.array([len(self.fed[r]) for r in range(self.rows)])

  def append(self, new):
    for r, tokens in new.items():
      self.fed[r] += list(tokens)

  def generate(self, rows, config, row_keys=None):
    self.max_rows_busy = max(self.max_rows_busy, len(rows))
    out = {}
    for r in rows:
      prompt = self.vocab.decode(self.fed[r])
      key = next(k for k in self.script if k in prompt)
      text = self.script[key][self.turn[r]]
      self.turn[r] += 1
      tokens = self.vocab.encode(text)
      reason = "stop_id" if text.endswith("<end_of_turn>") else "stop_string"
      out[r] = TurnOutput(tokens, [-0.5] * len(tokens), text, reason)
      self.fed[r] += tokens
    return out
