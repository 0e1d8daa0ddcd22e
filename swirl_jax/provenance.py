"""Fingerprints of what produced a stage's outputs, so that a re-run reuses only its own results.

Every resumable output (Stage 1 shards, judged shards, trainer checkpoints,
evaluations) records a fingerprint: the settings that change its content, a
digest of its inputs, and the model (the policy's source and any trained
checkpoint step). A stage that finds outputs made with another fingerprint
refuses, naming what changed, instead of mixing them with new ones or
reporting an older model's numbers as this one's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

import jax

from swirl_jax import atomic_io, multihost

FILE_NAME = "fingerprint.json"


def digest(value: Any) -> str:
  """A short stable hash of a JSON-able value."""
  text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def config_fields(config, leave_out: tuple[str, ...] = ()) -> dict:
  """A config dataclass's fields, less those that do not change results (where files go, rows)."""
  return {k: v for k, v in dataclasses.asdict(config).items() if k not in leave_out}


def task_identity(task) -> dict:
  """The task's questions, tools, prompt and step cap (what an episode's text depends on)."""
  tools = []
  for tool in task.tools:
    facts = {"class": type(tool).__name__, "tag": tool.tag}
    if dataclasses.is_dataclass(tool):
      facts.update(dataclasses.asdict(tool))
    for name in ("top_k", "max_result_tokens"):
      if hasattr(tool, name):
        facts[name] = getattr(tool, name)
    if hasattr(tool, "url"):  # without a query string or user info, which may carry a key
      parts = urlsplit(tool.url)
      facts["url"] = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
    if hasattr(tool, "passages"):
      facts["corpus"] = digest([(p.title, p.text) for p in tool.passages])
    tools.append(facts)
  return {"name": task.name, "questions": len(task.questions),
          "question_digest": digest([(q.id, q.question, list(q.answers)) for q in task.questions]),
          "tools": tools, "template": digest(dataclasses.asdict(task.template)), "max_steps": task.max_steps}


def judge_identity(judge) -> dict:
  """What a judge says it is (`identity`), or its name."""
  return dict(getattr(judge, "identity", None) or {"name": getattr(judge, "name", type(judge).__name__)})


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted paths whose values differ, with both values (shortened)."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new), key=str):
      out += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
    return out
  if old == new:
    return []

  def short(value):
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."

  return [f"{prefix.rstrip('.')}: {short(old)} -> {short(new)}"]


def mismatch_message(where: str, old: dict, new: dict, fresh: str) -> str:
  changed = differences(old, new)
  shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
  return f"{where} was made with other settings, data or model ({shown}); {fresh}"


def recorded(directory: str) -> dict | None:
  """The fingerprint recorded in `directory` (None if there is none); ValueError if unreadable."""
  path = os.path.join(directory, FILE_NAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable fingerprint ({e})") from None


def claim(directory: str, fingerprint: dict, has_outputs: bool) -> None:
  """Checks `directory`'s recorded fingerprint against this run's, or records it.

  Refuses (ValueError naming the changed settings) when the directory holds
  another fingerprint, or outputs with none. Collective in a multi-host run:
  every process checks, process 0 writes, and all fail or go on together.
  """
  path = os.path.join(directory, FILE_NAME)
  fresh = f"remove {directory} (or choose another directory) to start afresh"
  error = None
  if os.path.exists(path):
    try:
      found = recorded(directory)
    except ValueError as e:
      found, error = None, f"{e}; {fresh}"
    if found is not None and found != json.loads(json.dumps(fingerprint, default=str)):
      error = mismatch_message(directory, found, fingerprint, fresh)
  elif has_outputs:
    error = f"{directory} holds outputs without a {FILE_NAME} (an older version's or another run's); {fresh}"
  multihost.raise_together(error)
  if not os.path.exists(path) and jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with atomic_io.atomic_open(path) as f:
      json.dump(fingerprint, f, indent=1, sort_keys=True, default=str)
  multihost.barrier(f"fingerprint:{directory}")


def question_digests(texts) -> list[str]:
  """Digests of question texts, whitespace and case normalized (8 bytes each, hex, sorted): what a
  checkpoint records of the questions it was trained on, without the texts."""
  normalized = (re.sub(r"\s+", " ", str(t)).strip().lower() for t in texts)
  return sorted({hashlib.blake2b(t.encode(), digest_size=8).hexdigest() for t in normalized})
