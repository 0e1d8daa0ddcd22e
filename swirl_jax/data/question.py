"""A question with its gold answers: what every data source yields."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  question: str
  answers: tuple[str, ...]  # the gold answer first, then aliases
  source: str  # "gsm8k", "hotpotqa", "builtin_arithmetic", ...
  # Built-in tasks know a correct solution path: calculator expressions or
  # search sub-queries, one per step (empty for benchmark data).
  gold_steps: tuple[str, ...] = ()
