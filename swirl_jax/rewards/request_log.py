"""A judge wrapper that logs every request it forwards: an audit of what a run asked its judge.

Judge calls cost money (an HTTP judge) or accelerator time (a model judge), and
a multi-host run must send each request once, from the process that owns it.
`RequestLog` appends one JSON line per request to `requests-pNNN.jsonl` (one
file per process) with what identifies it: kind, question id, step index, the
tool, a digest of the context, and the action or answer text.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Sequence

import jax

from swirl_jax.records import Verdict
from swirl_jax.rewards.judge import Judge, OutcomeRequest, ProcessRequest


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class RequestLog:
  """Forwards to `judge` and logs each request (see the module docstring)."""

  def __init__(self, judge: Judge, directory: str):
    self.judge, self.directory = judge, directory
    self.name = judge.name
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, f"requests-p{jax.process_index():03d}.jsonl")
    self._lock = threading.Lock()

  def __getattr__(self, name):  # what else the wrapped judge offers (e.g. the rule judge's titles)
    return getattr(self.judge, name)

  def _log(self, records: list[dict]) -> None:
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    with self._lock, open(self.path, "a", encoding="utf-8") as f:  # an online trainer judges on several threads
      f.write(text)

  def judge_steps(self, requests: Sequence[ProcessRequest]) -> list[Verdict]:
    self._log([{"kind": "process", "question_id": r.question_id, "step_index": r.step_index, "tool": r.tool,
                "context": _digest(r.context), "action": r.action} for r in requests])
    return self.judge.judge_steps(requests)

  def judge_outcomes(self, requests: Sequence[OutcomeRequest]) -> list[Verdict]:
    self._log([{"kind": "outcome", "question_id": r.question_id, "answer": r.answer} for r in requests])
    return self.judge.judge_outcomes(requests)


def read_request_logs(directory: str) -> list[dict]:
  """Every logged request of every process, with the process that sent it."""
  records = []
  for name in sorted(os.listdir(directory)):
    if name.startswith("requests-p") and name.endswith(".jsonl"):
      process = int(name[len("requests-p"):-len(".jsonl")])
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          try:
            records.append({**json.loads(line), "process": process})
          except json.JSONDecodeError as e:
            raise ValueError(f"{os.path.join(directory, name)}:{number}: not JSON ({e.msg})") from None
  return records

