"""Reading JSON-lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from typing import Any, Iterator


def read_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ("path:line", record) for each non-blank line; a bad line raises ValueError."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object")
      yield f"{path}:{number}", record
