"""Checks that config dataclasses run when built, so a bad value fails before any work, naming the field."""

from __future__ import annotations

from typing import Any, Iterable


def check(ok: bool, owner: Any, message: str) -> None:
  if not ok:
    raise ValueError(f"{type(owner).__name__}: {message}")


def at_least_one(owner: Any, names: Iterable[str]) -> None:
  for name in names:
    value = getattr(owner, name)
    check(value >= 1, owner, f"{name}={value} must be at least 1")


def not_negative(owner: Any, names: Iterable[str]) -> None:
  for name in names:
    value = getattr(owner, name)
    check(value >= 0, owner, f"{name}={value} must not be negative")


def sampling_settings(owner: Any) -> None:
  """temperature >= 0, top_k >= 0, 0 < top_p <= 1 (fields of that name, where present)."""
  not_negative(owner, [n for n in ("temperature", "top_k") if hasattr(owner, n)])
  if hasattr(owner, "top_p"):
    check(0 < owner.top_p <= 1, owner, f"top_p={owner.top_p} must be in (0, 1]")
