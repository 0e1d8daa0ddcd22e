"""What a compiled program moves, read from its optimized HLO text, and the bounds that follow.

On a pod, speed is decided by what moves: bytes between chips (collectives) and bytes between HBM
and the cores. XLA's cost analysis counts a loop's body once, so a decode chunk (a loop over decode
steps, around a loop over scanned layers) would be counted at a fraction of its traffic. Here every
collective of the program is counted with the product of the trip counts of the loops around it:

  traffic = collective_traffic(jax.jit(f).lower(...).compile().as_text())
  traffic.bytes_by_kind  # {"all-gather": ..., "all-reduce": ...}, per chip, per call

A collective's bytes are its result's (what lands on each chip: an all-gather's whole output, a
reduce-scatter's shard); XLA's asynchronous pieces of one collective share a channel id and count
once. `received_by_kind` counts what arrives from other chips instead, from the collective's group
size n: (n - 1) / n of an all-gather's or an all-to-all's result (the chip's own part stays), 2 (n -
1) / n of an all-reduce's (a ring's reduce-scatter and all-gather), n - 1 times a reduce-scatter's
shard, and a permute's result where some chip sends to another. The ICI bound uses those. The roofline figures of `CHIPS` are the public per-chip figures of Cloud TPU
(https://cloud.google.com/tpu/docs/v5p, /v5e, /v4, /v6e); ICI is the one-way half of the
bidirectional figure, since a gathered byte arrives once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%?([^\s(]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*)$")
_COLLECTIVE = re.compile(r"^(.*?) (" + "|".join(KINDS) + r")(-start)?\(")
_CALLS = re.compile(r"\b(?:calls|to_apply|condition|body)=%([^\s,)}]+)")
_CALL_LISTS = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_WHILE = re.compile(r"\bwhile\((%[^\s,)]+)\), condition=%([^\s,]+), body=%([^\s,]+)")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\].*? \{((?:'[^']*',?\s*)*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_LISTED_GROUPS = re.compile(r"replica_groups=\{\{([0-9,\s]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")
_PARTITIONS = re.compile(r"\bnum_partitions=(\d+)")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A chip's public figures: bf16 peak, HBM size and bandwidth, one-way ICI bandwidth."""

  name: str
  bf16_flops: float  # per second
  hbm_bytes: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float


GIB = 1024 ** 3
CHIPS = {  # by jax's device_kind
    "TPU v4": Chip("TPU v4", 275e12, 32 * GIB, 1228e9, 150e9),
    "TPU v5 lite": Chip("TPU v5e", 197e12, 16 * GIB, 819e9, 200e9),
    "TPU v5": Chip("TPU v5p", 459e12, 95 * GIB, 2765e9, 600e9),
    "TPU v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765e9, 600e9),
    "TPU v6 lite": Chip("TPU v6e", 918e12, 32 * GIB, 1640e9, 400e9),
}


def array_bytes(shape: str) -> float:
  """Bytes of every array in an HLO shape string (`bf16[4,64]{1,0}`, or a tuple of them)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += _DTYPE_BYTES.get(dtype, 0) * count
  return total


def _result_bytes(shape: str, kind: str, started: bool) -> float:
  """What lands on the chip: a `-start` op's tuple holds (operand, result) for gathers and
  permutes; its last array is the result."""
  arrays = _ARRAY.findall(shape)
  if started and kind in ("all-gather", "collective-permute") and len(arrays) > 1:
    return array_bytes("{}[{}]".format(*arrays[-1]))
  return array_bytes(shape)


def group_size(line: str, devices: int | None) -> int | None:
  """Chips in each group of a collective's HLO line (`replica_groups` as a mesh and its axes, an iota
  `[groups,size]<=[...]`, listed groups, or `{}`: all `devices`); None where it cannot be read."""
  mesh = _MESH_GROUPS.search(line)
  if mesh:
    sizes = {name.strip().strip("'"): int(size) for name, size in
             (part.split("=") for part in mesh.group(1).split(",") if "=" in part)}
    axes = re.findall(r"'([^']*)'", mesh.group(2))
    n = 1
    for axis in axes or sizes:
      n *= sizes.get(axis, 1)
    return n
  iota = _IOTA_GROUPS.search(line)
  if iota:
    return int(iota.group(1).split(",")[-1])
  listed = _LISTED_GROUPS.search(line)
  if listed:
    return len([v for v in listed.group(1).split(",") if v.strip()])
  if "replica_groups={}" in line:
    return devices
  return None


def received_bytes(kind: str, result: float, line: str, devices: int | None) -> float:
  """Bytes a chip receives from other chips in one collective of `result` bytes (see the module
  docstring); the result's where the group cannot be read."""
  if kind == "collective-permute":
    pairs = _PAIRS.search(line)
    if pairs and all(s == t for s, t in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))):
      return 0.0
    return result
  n = group_size(line, devices)
  if not n:
    return result
  return result * {"all-gather": (n - 1) / n, "all-to-all": (n - 1) / n, "all-reduce": 2 * (n - 1) / n,
                   "reduce-scatter": n - 1}[kind]


@dataclasses.dataclass
class Traffic:
  """Per chip, per call of the program: collective bytes by kind (weighted by loop trips): their
  results' and what arrives from other chips; and how many collectives of each kind the text holds."""

  bytes_by_kind: dict[str, float]
  count_by_kind: dict[str, int]
  unknown_trip_loops: int  # loops whose trip count could not be read (counted once)
  received_by_kind: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def total_bytes(self) -> float:
    return sum(self.bytes_by_kind.values())

  @property
  def received_bytes(self) -> float:
    return sum(self.received_by_kind.values())


def _computations(hlo_text: str) -> dict[str, list[str]]:
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and current is None:
      current = header.group(1)
      computations[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None:
      computations[current].append(line)
  return computations


def _entry(hlo_text: str) -> str:
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY "):
      return _HEADER.match(line).group(1)
  raise ValueError("HLO text without an ENTRY computation")


def _trip_count(loop_line: str, loop_init: str, condition: list[str], computations: dict[str, list[str]],
                definitions: dict[str, str]) -> int | None:
  """Trips of a counted loop: XLA's own `known_trip_count` where it records one (XLA:CPU does),
  else `i < N` at the condition's root (a compare, or a fusion around one) from i's initial value
  (a constant element of the loop's initial tuple; 0 where it is not a literal)."""
  known = _KNOWN_TRIPS.search(loop_line)
  if known:
    return int(known.group(1))
  root = next((line for line in condition if line.lstrip().startswith("ROOT ")), "")
  compare = root
  if " fusion(" in root:
    called = _CALLS.search(root)
    inner = computations.get(called.group(1), []) if called else []
    compare = next((line for line in inner if line.lstrip().startswith("ROOT ")), "")
  if " compare(" not in compare or "direction=LT" not in compare:
    return None
  operands = re.findall(r"%([^\s,)]+)", root.split("(", 1)[1] if "(" in root else "")
  limits = [int(v.group(1)) for v in (re.search(r" constant\((-?\d+)\)", definitions.get(o, "")) for o in operands) if v]
  if not limits:
    return None
  start = 0
  init = definitions.get(loop_init.lstrip("%"), "")
  first = re.search(r" tuple\(%([^\s,)]+)", init)
  if first:
    value = re.search(r" constant\((-?\d+)\)", definitions.get(first.group(1), ""))
    start = int(value.group(1)) if value else 0
  return max(limits[-1] - start, 0)


def collective_traffic(hlo_text: str) -> Traffic:
  """Every collective of a compiled program's HLO text, its bytes multiplied by the trip counts of
  the loops it runs in."""
  computations = _computations(hlo_text)
  definitions = {}
  for lines in computations.values():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if match:
        definitions[match.group(1)] = match.group(2)
  unknown = 0
  callees: dict[str, list[tuple[str, int]]] = {name: [] for name in computations}
  for name, lines in computations.items():
    for line in lines:
      loop = _WHILE.search(line)
      if loop:
        trips = _trip_count(line, loop.group(1), computations.get(loop.group(2), []), computations, definitions)
        unknown += trips is None
        callees[name] += [(loop.group(2), 1 if trips is None else trips + 1),
                          (loop.group(3), 1 if trips is None else trips)]
        continue
      callees[name] += [(c, 1) for c in _CALLS.findall(line)]
      for listed in _CALL_LISTS.findall(line):
        callees[name] += [(c.strip().lstrip("%"), 1) for c in listed.split(",") if c.strip()]
  weights: dict[str, int] = {}
  order: list[str] = []
  seen: set[str] = set()

  def visit(name: str) -> None:  # callers before callees (the call graph has no cycles)
    if name in seen:
      return
    seen.add(name)
    for callee, _ in callees.get(name, []):
      visit(callee)
    order.append(name)
  entry = _entry(hlo_text)
  visit(entry)
  weights[entry] = 1
  for name in reversed(order):
    for callee, times in callees.get(name, []):
      weights[callee] = weights.get(callee, 0) + weights.get(name, 0) * times
  partitions = _PARTITIONS.search(hlo_text)
  devices = int(partitions.group(1)) if partitions else None
  found: dict[str, tuple[str, float, int, float]] = {}
  for name, lines in computations.items():
    for line in lines:
      match = _INSTRUCTION.match(line)
      collective = match and _COLLECTIVE.match(match.group(2))
      if not collective:
        continue
      shape, kind, started = collective.group(1), collective.group(2), bool(collective.group(3))
      channel = _CHANNEL.search(line)
      key = f"channel {channel.group(1)} in {weights.get(name, 0)}" if channel else match.group(1)
      size = _result_bytes(shape, kind, started)
      received = received_bytes(kind, size, line, devices)
      old = found.get(key)
      found[key] = (kind, max(size, old[1] if old else 0.0), max(weights.get(name, 0), old[2] if old else 0),
                    max(received, old[3] if old else 0.0))
  bytes_by_kind = {kind: 0.0 for kind in KINDS}
  received_by_kind = {kind: 0.0 for kind in KINDS}
  count_by_kind = {kind: 0 for kind in KINDS}
  for kind, size, weight, received in found.values():
    bytes_by_kind[kind] += size * weight
    received_by_kind[kind] += received * weight
    count_by_kind[kind] += 1
  return Traffic(bytes_by_kind, count_by_kind, unknown, received_by_kind)


@dataclasses.dataclass(frozen=True)
class Bounds:
  """Lower bounds on a program's time on one chip: each resource at its peak, alone."""

  compute_s: float
  hbm_s: float
  ici_s: float

  @property
  def lower_bound_s(self) -> float:
    return max(self.compute_s, self.hbm_s, self.ici_s)

  @property
  def limited_by(self) -> str:
    return max((self.compute_s, "compute"), (self.hbm_s, "HBM"), (self.ici_s, "ICI"))[1]


def bounds(chip: Chip, flops: float, hbm_bytes: float, ici_bytes: float) -> Bounds:
  """Per-chip FLOPs (bf16), bytes read or written in HBM, bytes arriving over ICI."""
  return Bounds(flops / chip.bf16_flops, hbm_bytes / chip.hbm_bytes_per_s, ici_bytes / chip.ici_bytes_per_s)


def describe_traffic(traffic: Traffic, per: float = 1.0, unit: str = "call") -> str:
  parts: Iterable[str] = (f"{kind} {traffic.bytes_by_kind[kind] / per / GIB:.4g} GiB"
                          for kind in KINDS if traffic.count_by_kind[kind])
  received = f"; {traffic.received_bytes / per / GIB:.4g} GiB received" if traffic.received_by_kind else ""
  return f"{', '.join(parts) or 'none'} per {unit}{received}"
