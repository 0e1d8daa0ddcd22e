"""Sharded trajectory files: JSON lines, written whole and atomically, read with checks."""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator

from swirl_jax import atomic_io
from swirl_jax.data.jsonl import read_jsonl
from swirl_jax.records import Trajectory

SHARD_PATTERN = "trajectories-s{shard:05d}.jsonl"


def shard_path(directory: str, shard: int) -> str:
  return os.path.join(directory, SHARD_PATTERN.format(shard=shard))


def write_shard(path: str, trajectories: Iterable[Trajectory]) -> None:
  """All or nothing: the file appears complete, or not at all."""
  with atomic_io.atomic_open(path, "w") as f:
    for t in trajectories:
      f.write(t.to_json() + "\n")


def read_shard(path: str) -> Iterator[Trajectory]:
  """The shard's trajectories, each record checked; errors name the file, line and field."""
  for where, record in read_jsonl(path):
    yield Trajectory.from_dict(record, where)


def shard_files(directory: str) -> list[str]:
  return sorted(glob.glob(os.path.join(directory, "trajectories-s*.jsonl")))


def read_all(directory: str) -> Iterator[Trajectory]:
  for path in shard_files(directory):
    yield from read_shard(path)
