"""What one process of a multi-host run may read, and the few small things all processes agree on.

On a pod every host runs the same program on globally sharded arrays but
addresses only its own chips. These helpers keep host-side code honest about
that: a process reads only the rows it addresses, builds global arrays from its
own rows, and agrees with the other processes through explicit, small
collectives (`process_allgather` of a few bytes). With one process each helper
is the plain single-host operation and costs nothing.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def spans_processes(mesh: Mesh | None) -> bool:
  """Whether `mesh` holds devices of other processes (then work on it is collective)."""
  return mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat)


# -- rows a process owns ---------------------------------------------------------------------------


def row_holders(sharding: jax.sharding.Sharding, num_rows: int) -> list[set[int]]:
  """The processes holding each row of a [num_rows, ...] array laid out by `sharding`."""
  holders: list[set[int]] = [set() for _ in range(num_rows)]
  for device, index in sharding.devices_indices_map((num_rows,)).items():
    for row in range(num_rows)[index[0]]:
      holders[row].add(device.process_index)
  return holders


def rows_held_alone(sharding: jax.sharding.Sharding, num_rows: int) -> bool:
  """Whether every row of a [num_rows, ...] array laid out by `sharding` lives on one process."""
  return sole_row_owners(sharding, num_rows) is not None


def sole_row_owners(sharding: jax.sharding.Sharding, num_rows: int) -> np.ndarray | None:
  """Each row's process where every row lives on one process; None where some row spans several."""
  holders = row_holders(sharding, num_rows)
  if any(len(h) > 1 for h in holders):
    return None
  return np.array([min(h) for h in holders], np.int64)


def row_owners(sharding: jax.sharding.Sharding, num_rows: int) -> np.ndarray:
  """The process that owns each row of a [num_rows, ...] array laid out by `sharding` (the same
  answer on every process: it reads only the sharding).

  Every row must live on one process only: a row replicated across processes
  would need the same host work done twice, or its copies would drift.
  """
  owners = sole_row_owners(sharding, num_rows)
  if owners is None:
    shared = [row for row, h in enumerate(row_holders(sharding, num_rows)) if len(h) > 1]
    raise ValueError(
        f"{num_rows} rows are not split across the {jax.process_count()} processes (rows {shared[:4]}... live "
        f"on several): make the row count a multiple of the mesh's data x fsdp size and put the axes that "
        f"span hosts on data or fsdp")
  return owners


def process_blocks(devices: Sequence[jax.Device]) -> np.ndarray:
  """`devices` (as a [processes, devices a process] array) grouped by process, in process order,
  each process's in their given order: a mesh over it whose first axis splits rows gives each
  process one block of rows."""
  by_process: dict[int, list] = {}
  for device in devices:
    by_process.setdefault(device.process_index, []).append(device)
  sizes = {len(v) for v in by_process.values()}
  if len(sizes) != 1:
    raise ValueError(f"processes hold different numbers of these devices ({sorted(sizes)})")
  return np.asarray([by_process[p] for p in sorted(by_process)])


def owned_rows(sharding: jax.sharding.Sharding, num_rows: int) -> np.ndarray:
  """The rows of a [num_rows, ...] array laid out by `sharding` whose host work is this process's."""
  if not is_multiprocess():
    return np.arange(num_rows)
  return np.flatnonzero(row_owners(sharding, num_rows) == jax.process_index())


def host_rows(x: jax.Array, required_rows: Sequence[int] | None = None) -> np.ndarray:
  """`x` as a host array of its global shape, filled only where this process addresses it (zeros
  elsewhere): a process never fetches what it cannot address. `required_rows` must be among
  what it addresses (checked)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  out = np.zeros(x.shape, x.dtype)
  covered = np.zeros(x.shape[0], bool)
  for shard in x.addressable_shards:
    out[shard.index] = np.asarray(shard.data)
    covered[shard.index[0]] = True
  if required_rows is not None and not covered[np.asarray(required_rows, np.int64)].all():
    raise RuntimeError(f"rows {np.asarray(required_rows)[~covered[np.asarray(required_rows, np.int64)]][:4]} "
                       "of this process are not addressable here (an output left the batch sharding)")
  return out


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array of the global shape, of which each process reads only the
  parts it addresses (its own rows); no communication."""
  if not is_multiprocess():
    return jax.device_put(host, sharding)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


# -- agreement ---------------------------------------------------------------------------------------


def allgather_json(value: Any) -> list[Any]:
  """`value` (anything JSON can hold) from every process, in process order."""
  if not is_multiprocess():
    return [value]
  payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([payload.size], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:payload.size] = payload
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(row[:size]).decode()) for row, size in zip(gathered, sizes)]


def allgather_ints(values: Sequence[int]) -> np.ndarray:
  """[processes, len(values)] int64: each process's `values`."""
  local = np.asarray(values, np.int64).reshape(-1)
  if not is_multiprocess():
    return local[None]
  # int32 travels without jax_enable_x64; the counts here are far below 2**31.
  if np.abs(local).max(initial=0) >= 2**31:
    raise OverflowError(f"allgather_ints: {local} does not fit int32")
  return np.asarray(multihost_utils.process_allgather(local.astype(np.int32))).reshape(-1, local.size)


def raise_together(error: str | None, across: bool = True) -> None:
  """Raises on every process if any process has an error (one raising alone would leave the
  others waiting in the next collective). across=False: this process's error only."""
  messages = allgather_json(error) if across and is_multiprocess() else [error]
  failed = [(i, m) for i, m in enumerate(messages) if m]
  if failed:
    raise ValueError("; ".join(m if i == jax.process_index() else f"process {i}: {m}" for i, m in failed))


def any_process(*flags: bool, across: bool = True) -> tuple[bool, ...] | bool:
  """Whether any process has each flag set (one collective for all flags). across=False: this
  process's flags, no collective (work on devices of this process only)."""
  out = tuple(bool(v) for v in maxima(*(int(bool(f)) for f in flags), across=across))
  return out[0] if len(out) == 1 else out


def maxima(*values: int, across: bool = True) -> tuple[int, ...]:
  """Each value's maximum over processes (one collective for all); across=False: the values."""
  merged = allgather_ints(values).max(axis=0) if across else np.asarray(values)
  return tuple(int(v) for v in merged)


def max_over_processes(value: int) -> int:
  return int(allgather_ints([value]).max())


def sum_over_processes(values: Sequence[int]) -> np.ndarray:
  return allgather_ints(values).sum(axis=0)


def barrier(name: str) -> None:
  """Waits until every process gets here (files one process wrote are then there for all)."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


def merge_counts(parts: Sequence[dict]) -> dict:
  """Sums nested dicts of numbers key by key (counts reported by each process)."""
  out: dict = {}
  for part in parts:
    for key, value in part.items():
      if isinstance(value, dict):
        out[key] = merge_counts([out.get(key, {}), value])
      else:
        out[key] = out.get(key, 0) + value
  return out


# -- preemption ----------------------------------------------------------------------------------------


class PreemptionWatch:
  """Says, at the same step on every process, that a preemption notice (SIGTERM) came and the run
  should save and stop.

  Several processes: JAX's preemption sync point (the coordination service
  hears the notice on any host and picks the first step all hosts can still
  reach). One process: a SIGTERM handler that sets a flag, installed only while
  the watch is open. Call `reached(step)` at every step on every process.
  """

  def __init__(self):
    self._notice = threading.Event()
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    # With several processes JAX's own handler owns SIGTERM; replacing it would hide the notice.
    if not is_multiprocess() and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._notice.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def reached(self, step: int) -> bool:
    if is_multiprocess():
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._notice.is_set()


class Preempted(Exception):
  """The run saved at `step` after a preemption notice and stopped; run it again to resume."""

  def __init__(self, step: int, where: str):
    super().__init__(f"preempted: saved step {step} in {where}; run the same command again to resume")
    self.step, self.where = step, where
