"""Reading record files (JSON lines, or one JSON list) with errors that name the file and the line."""

from __future__ import annotations

import json
from typing import Any, Iterator

_WHITESPACE = " \t\n\r"


def read_text(path: str) -> str:
  """The file as text; bytes that are not UTF-8 raise ValueError naming the line and byte offset."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not content
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                     f"convert the file to UTF-8") from None


def read_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ("path:line", record) for each non-blank line; a bad line raises ValueError."""
  # Lines end at "\n" only: JSON strings written with ensure_ascii=False may hold U+2028 or U+0085,
  # which str.splitlines() would also split at.
  for number, line in enumerate(read_text(path).split("\n"), 1):
    line = line.removesuffix("\r")
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{number}: expected a JSON object")
    yield f"{path}:{number}", record


def read_records(path: str) -> list[tuple[str, dict[str, Any]]]:
  """("path:line", record) pairs of a file in either layout: JSON lines, or one JSON list of objects.

  The layout is read from the first character ('[' is a list). An empty file is
  an error, not zero records.
  """
  text = read_text(path)
  start = len(text) - len(text.lstrip(_WHITESPACE))
  if start == len(text):
    raise ValueError(f"{path}: the file is empty (expected JSON lines or a JSON list of records)")
  records = _json_list(path, text, start) if text[start] == "[" else list(read_jsonl(path))
  if not records:
    raise ValueError(f"{path}: holds no records")
  return records


def _json_list(path: str, text: str, start: int) -> list[tuple[str, dict[str, Any]]]:
  """The elements of a top-level JSON list, each with the line it starts on."""
  decoder = json.JSONDecoder()
  counted = {"position": 0, "line": 1}

  def line_of(position: int) -> int:
    """Counts on from the last position asked (callers ask in growing order): linear in the file."""
    counted["line"] += text.count("\n", counted["position"], position)
    counted["position"] = position
    return counted["line"]

  def skip(position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
      position += 1
    return position

  records, position = [], skip(start + 1)
  while position < len(text) and text[position] != "]":
    try:
      record, end = decoder.raw_decode(text, position)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg}, column {e.colno})") from None
    where = f"{path}:{line_of(position)} (record {len(records)})"
    if not isinstance(record, dict):
      raise ValueError(f"{where}: list element {len(records)} is not a JSON object")
    records.append((where, record))
    position = skip(end)
    if position < len(text) and text[position] == ",":
      position = skip(position + 1)
      if position < len(text) and text[position] == "]":
        raise ValueError(f"{path}:{line_of(position)}: not JSON (a ',' before the closing ']')")
    elif position >= len(text) or text[position] != "]":
      raise ValueError(f"{path}:{line_of(position)}: not JSON (expected ',' or ']' after list element "
                       f"{len(records) - 1})")
  if position >= len(text):
    raise ValueError(f"{path}:{line_of(len(text))}: not JSON (the list is not closed with ']')")
  if skip(position + 1) != len(text):
    raise ValueError(f"{path}:{line_of(skip(position + 1))}: not JSON (text after the closing ']')")
  return records


def read_json(path: str) -> Any:
  """One JSON document, with decoding and syntax errors naming file and line."""
  try:
    return json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg}, column {e.colno})") from None
