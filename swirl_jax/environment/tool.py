"""The one small interface every tool implements."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from swirl_jax.environment import protocol


@dataclasses.dataclass(frozen=True)
class ToolResult:
  """What a tool returns: text for the model, and whether it was an error."""

  output: str
  error: bool = False


class Tool(Protocol):
  """A tool the model calls with `<tag> query </tag>`."""

  name: str  # "calculator", "search"
  tag: str   # "math_exp", "search_query"

  def run(self, query: str) -> ToolResult:
    """Runs the call. Never raises for bad input: errors become ToolResult(error=True)."""
    ...


def format_tool_result(query: str, result: ToolResult) -> str:
  """The user-turn text the paper feeds back: `QUERY -> RESULT`."""
  return protocol.tool_result(query, result.output)
