"""Every sharding decision of swirl_jax, in one place.

Modules name their parameter and activation axes logically ("embed", "mlp",
"activation_batch", ...). This file owns the device mesh (axes `data`, `fsdp`,
`tensor`) and the one table that maps logical names to mesh axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

def axes_of(entry: str | Sequence[str] | None) -> tuple[str, ...]:
  """The mesh axes named by a PartitionSpec entry or a rule's target: None, one name, or several."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def entry_of(axes: Sequence[str]) -> str | tuple[str, ...] | None:
  """The PartitionSpec entry for mesh axes: None for none, the name for one, the tuple for several."""
  axes = tuple(axes)
  return None if not axes else axes[0] if len(axes) == 1 else axes


# Parameters: fsdp shards the model dimension, tensor shards heads / mlp / vocab.
# Activations: the batch is split over data and fsdp, heads / mlp / vocab over tensor.
DEFAULT_RULES: LogicalRules = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # the stacked axis of scanned layers: every chip holds its shard of each layer
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over (data, fsdp, tensor); one entry may be -1 (the rest)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    dims = [self.data, self.fsdp, self.tensor]
    if dims.count(-1) > 1:
      raise ValueError(f"MeshConfig {dims}: at most one axis may be -1")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
      if num_devices % known:
        raise ValueError(f"MeshConfig {dims}: {num_devices} devices do not divide by {known}")
      dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
      raise ValueError(
          f"MeshConfig (data, fsdp, tensor)={tuple(dims)} needs {math.prod(dims)} "
          f"devices; {num_devices} are available")
    return tuple(dims)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[Any] | None = None, *,
              num_slices: int = 1, granule: str = "slice") -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

  With `num_slices` > 1 the data axis spans the slices (data-center network)
  and everything else stays inside a slice (ICI): a hybrid mesh. `granule`
  names what a slice is: "slice" (TPU slices, by their slice_index) or
  "process" (each process plays one slice, e.g. CPU processes in tests).
  """
  config = config or MeshConfig()
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ValueError(f"MeshConfig data={shape[0]} must be a multiple of num_slices={num_slices} "
                       "(the data axis spans the slices)")
    if granule not in ("slice", "process"):
      raise ValueError(f"make_mesh(granule={granule!r}): use 'slice' or 'process'")
    from jax.experimental import mesh_utils
    per_slice = (shape[0] // num_slices,) + tuple(shape[1:])
    # Splitting a physical axis lets a slice's mesh take any factoring of its chips (fsdp=64,
    # tensor=4 on a 16x16 v5e slice), as the single-slice path does.
    grid = mesh_utils.create_hybrid_device_mesh(per_slice, (num_slices, 1, 1), devices,
                                                process_is_granule=granule == "process",
                                                allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * 3)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingLayout:
  """Where the sampler keeps its params: its own (data, fsdp, tensor) mesh over the training mesh's
  devices, in its own param dtype.

  Decoding reads every weight once per token. In the training layout the params are split over
  fsdp, so every decode step all-gathers them onto every chip (12.6 GiB a step for Gemma 3 27B on
  v5p-128, docs/scaling.md). With `copy_params` the sampler holds a copy laid out here instead,
  usually fsdp=1 (each chip keeps its tensor shard whole, rows split over data), and online RL
  reshards the trainer's params into it once per step. Without it the sampler decodes on the
  trainer's params where they are (small models, or where a copy does not fit).
  """

  copy_params: bool = False
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  param_dtype: str = "bfloat16"

  def mesh_over(self, training_mesh: Mesh | None) -> Mesh:
    """The sampling mesh over the training mesh's devices (one device without a training mesh).

    Each sampling tensor group is made of whole training tensor groups, the training tensor index
    as the major part of the sampling one (or, for a smaller tensor, the sampling index as the
    major part of the training one): a chip's sampling shard of a weight then lies inside its own
    training shard, and the reshard gathers it over the training fsdp chips without moving weights
    between tensor indices (v5e-256's (1, 64, 4) to (16, 1, 16) moved 12% over one copy in
    the plain reshaped order). The rows keep their order across the rest of the devices."""
    if training_mesh is None:
      devices = np.asarray(jax.devices()[:1])
      return Mesh(devices.reshape(MeshConfig(self.data, self.fsdp, self.tensor).shape(1)), MESH_AXES,
                  axis_types=(AxisType.Auto,) * 3)
    devices = np.asarray(training_mesh.devices)
    shape = MeshConfig(self.data, self.fsdp, self.tensor).shape(devices.size)
    grid = devices.reshape(-1)
    if tuple(training_mesh.axis_names) == MESH_AXES:
      trained, sampled = training_mesh.shape["tensor"], shape[2]
      grid = devices.reshape(-1, trained)  # [rows of chips, training tensor]
      if sampled % trained == 0 and grid.shape[0] % (sampled // trained) == 0:
        grid = grid.reshape(-1, sampled // trained, trained).transpose(0, 2, 1)
      elif trained % sampled == 0:
        grid = grid.reshape(-1, sampled, trained // sampled).transpose(0, 2, 1)
    return Mesh(grid.reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)

  def identity(self) -> dict:
    """What changes the numbers sampled (the mesh's shape does not)."""
    return {"copy_params": self.copy_params, "param_dtype": self.param_dtype if self.copy_params else None}


def _strided_view(order: np.ndarray) -> list[list[int]] | None:
  """`order` (the positions, in one order of n devices, of the devices of another order) as a
  transposed reshape of range(n): its dims as [length, stride], from the minor one out; None where
  it is not one."""
  dims, rest = [], np.asarray(order, np.int64)
  while rest.size > 1:
    stride = int(rest[1] - rest[0])
    length = 1
    while length < rest.size and rest[length] == rest[0] + length * stride:
      length += 1
    if stride <= 0 or rest.size % length:
      return None
    block = rest.reshape(-1, length)
    if not (block == block[:, :1] + stride * np.arange(length)).all():
      return None
    dims.append([length, stride])
    rest = block[:, 0]
  expected = 1
  for length, stride in sorted(dims, key=lambda d: d[1]):
    if stride != expected:
      return None
    expected *= length
  return dims if expected == order.size and (rest.size == 0 or rest[0] == 0) else None


def _split_at(dims: list[list[int]], index: int, factor: int) -> None:
  """Splits dims[index] into its `factor` minor part and the rest."""
  length, stride = dims[index]
  dims[index:index + 1] = [[factor, stride], [length // factor, stride * factor]]


def common_mesh(a: Mesh, b: Mesh) -> tuple[Mesh, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] | None:
  """One mesh in which shardings of both `a` and `b` can be written: `a`'s devices, in `a`'s order,
  split into the fewest axes such that every axis of `a` is a run of consecutive ones and every axis
  of `b` a product of some of them, major to minor in `b`'s order (v5e-256's (1, 64, 4) and the
  sampling mesh (16, 1, 16) over it: axes of 16, 4 and 4, `b`'s tensor made of the last and the
  middle one). Returns it and, for each mesh, its axes as tuples of the common one's; None where
  `b`'s order is not a transposed reshape of `a`'s, or no such split exists.

  XLA reshards between two meshes of different shapes by gathering each array whole; on one mesh it
  moves only what changes hands.
  """
  a_flat, b_flat = list(a.devices.flat), list(b.devices.flat)
  position = {d: i for i, d in enumerate(a_flat)}
  if len(a_flat) != len(b_flat) or set(position) != set(b_flat):
    return None
  dims = _strided_view(np.asarray([position[d] for d in b_flat]))  # b's order, minor dim first
  if dims is None:
    return None
  # Each boundary between b's axes must fall between dims (counted in b's order) ...
  bound = 1
  for size in reversed(b.devices.shape[1:]):
    bound *= size
    covered = 1
    for i, (length, _) in enumerate(dims):
      if covered < bound < covered * length:
        if bound % covered:
          return None
        _split_at(dims, i, bound // covered)
        break
      covered *= length
  # ... and each of a's (counted in a's order).
  cut = 1
  for size in reversed(a.devices.shape[1:]):
    cut *= size
    for i, (length, stride) in enumerate(dims):
      if stride < cut < stride * length:
        if cut % stride:
          return None
        _split_at(dims, i, cut // stride)
        break
  by_stride = sorted(dims, key=lambda d: -d[1])  # a's order, major to minor
  names = tuple(f"common{i}" for i in range(len(by_stride))) or ("common0",)
  name_of = {stride: names[i] for i, (_, stride) in enumerate(by_stride)}
  common = Mesh(np.asarray(a_flat).reshape([length for length, _ in by_stride] or [1]), names,
                axis_types=(AxisType.Auto,) * len(names))
  a_runs, stride = {}, 1
  for name, size in zip(reversed(a.axis_names), reversed(a.devices.shape)):
    a_runs[name] = tuple(name_of[s] for _, s in by_stride if stride <= s < stride * size)
    stride *= size
  b_runs, taken = {}, 0
  for name, size in zip(reversed(b.axis_names), reversed(b.devices.shape)):
    parts, covered = [], 1
    while covered < size:
      length, s = dims[taken]
      parts.append(name_of[s])
      covered *= length
      taken += 1
    b_runs[name] = tuple(reversed(parts))
  return common, a_runs, b_runs


def spec_on_common(spec: PartitionSpec, runs: dict[str, tuple[str, ...]]) -> PartitionSpec:
  """`spec` of one of `common_mesh`'s two meshes, written in the common mesh's axes (`runs`: that
  mesh's axes as the common one's)."""
  return PartitionSpec(*(entry_of(n for name in axes_of(e) for n in runs[name]) for e in spec))


def _on_the_way(source: PartitionSpec, target: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """A spec between `source` and `target` (one mesh): the target's, plus the source's axes that the
  target leaves unused, where the source had them. Going there first swaps shards between chips
  at the source's size (an all-to-all); what is left is a gather of the target's own copy. Going
  straight, XLA may gather first and hold far more."""
  ndim = len(shape)
  target_entries = [axes_of(e) for e in tuple(target) + (None,) * (ndim - len(target))]
  source_entries = [axes_of(e) for e in tuple(source) + (None,) * (ndim - len(source))]
  used = {a for e in target_entries for a in e}
  entries = []
  for size, kept, had in zip(shape, target_entries, source_entries):
    extra = tuple(a for a in had if a not in used)
    split = kept + extra
    if extra and size % math.prod(mesh.shape[a] for a in split):
      split = kept
    entries.append(entry_of(split))
  return PartitionSpec(*entries)


class Reshard:
  """One compiled program that casts a tree of floating arrays to `dtype` and moves it from
  `source_shardings` to `target_shardings` (another mesh over the same devices included). The cast
  is pinned to the source layout, so it runs on each chip's own shard and what moves between chips
  is already in `dtype`. Between meshes of other shapes over the same devices it runs on their
  `common_mesh`, so that only what changes hands moves. source_shardings None: arrays on no mesh.
  """

  def __init__(self, source_shardings: Any, target_shardings: Any, dtype: Any):
    self.target_shardings = target_shardings
    dtype = jnp.dtype(dtype)
    is_sharding = lambda x: isinstance(x, NamedSharding)
    meshes = [s.mesh for s in jax.tree.leaves(source_shardings, is_leaf=is_sharding)[:1] +
              jax.tree.leaves(target_shardings, is_leaf=is_sharding)[:1]]
    common = common_mesh(*meshes) if source_shardings is not None and len(meshes) == 2 else None
    pin, out = source_shardings, target_shardings
    if common is not None:
      mesh, source_runs, target_runs = common
      pin = jax.tree.map(lambda s: NamedSharding(mesh, spec_on_common(s.spec, source_runs)), source_shardings,
                         is_leaf=is_sharding)
      out = jax.tree.map(lambda s: NamedSharding(mesh, spec_on_common(s.spec, target_runs)), target_shardings,
                         is_leaf=is_sharding)
    self.on_common_mesh = common is not None

    def cast_then_move(tree):
      cast = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
      if pin is None:
        return cast
      cast = jax.lax.with_sharding_constraint(cast, pin)
      if common is None:
        return cast
      between = jax.tree.map(lambda x, a, b: NamedSharding(common[0], _on_the_way(a.spec, b.spec, x.shape, common[0])),
                             cast, pin, out, is_leaf=is_sharding)
      return jax.lax.with_sharding_constraint(cast, between)
    self.program = jax.jit(cast_then_move, out_shardings=out)

  def lower(self, tree):
    return self.program.lower(tree)

  def __call__(self, tree):
    moved = self.program(tree)
    if not self.on_common_mesh:
      return moved
    # The same shards, named by the target mesh (no data moves).
    return jax.tree.map(lambda x, s: jax.make_array_from_single_device_arrays(
        x.shape, s, [shard.data for shard in x.addressable_shards]), moved, self.target_shardings)


@gin.configurable
def logical_rules(overrides: LogicalRules = ()) -> LogicalRules:
  """The default table with `overrides` replacing entries of the same name."""
  table = dict(DEFAULT_RULES)
  table.update(dict(overrides))
  return tuple(table.items())


_active_rules: list[LogicalRules] = [DEFAULT_RULES]


@contextlib.contextmanager
def activate(mesh: Mesh | None, rules: LogicalRules) -> Iterator[None]:
  """The mesh (if any) and the rules that jitted steps and `constrain` see inside the block."""
  with (jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()), use_rules(rules):
    yield


@contextlib.contextmanager
def use_rules(rules: LogicalRules) -> Iterator[None]:
  """Makes `rules` the table that `constrain` reads inside the block."""
  _active_rules.append(tuple(rules))
  try:
    yield
  finally:
    _active_rules.pop()


def active_rules() -> LogicalRules:
  return _active_rules[-1]


def logical_to_spec(logical_axes: Sequence[str | None], rules: LogicalRules,
                    shape: Sequence[int] | None = None,
                    mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  A mesh axis is used at most once (first come first served). Given `shape` and
  `mesh`, a mesh axis that does not divide its dimension is dropped for that
  dimension, so a 1-kv-head model still runs on a tensor-parallel mesh.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; rules name {sorted(table)}")
    target = table.get(name) if name is not None else None
    axes = axes_of(target)
    kept = []
    for axis in axes:
      if axis in used:
        continue
      if shape is not None and mesh is not None:
        size = mesh.shape[axis] * math.prod(mesh.shape[a] for a in kept)
        if shape[i] % size:
          continue
      kept.append(axis)
      used.add(axis)
    spec.append(entry_of(kept))
  return PartitionSpec(*spec)


def _logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...]:
  axes = variable.get_metadata().get("logical_axes")
  if axes is None:
    raise ValueError(f"variable of shape {variable.shape} carries no logical_axes")
  return tuple(axes)


def state_shardings(state: nnx.State, mesh: Mesh, rules: LogicalRules) -> nnx.State:
  """NamedShardings for every variable of an nnx.State (params, cache, ...)."""
  def one(variable):
    spec = logical_to_spec(_logical_axes_of(variable), rules, variable.shape, mesh)
    return variable.replace(NamedSharding(mesh, spec))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules) -> nnx.Module:
  """Places the model's variables on `mesh` as the rules say (in place).

  Each process builds only its own shards from its (identical) host copy, so
  this works on multi-host meshes too.
  """
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)

  def place(value, sharding):
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  nnx.update(model, jax.tree.map(place, state, shardings))
  return model


def optimizer_state_shardings(tx: optax.GradientTransformation, opt_state_shapes: Any,
                              param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings of an optax state: param-shaped leaves follow their params.

  `opt_state_shapes` is `jax.eval_shape(tx.init, params)`; leaves that are not
  per-parameter (step counts) are replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, opt_state_shapes, param_shardings,
      transform_non_params=lambda _: replicated)


def batch_sharding(mesh: Mesh, rules: LogicalRules, shape: Sequence[int]) -> NamedSharding:
  """Sharding of a [batch, ...] array: batch split over the data axes, the rest whole.

  A batch the data axes do not divide is replicated rather than refused.
  """
  names = ("activation_batch",) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, logical_to_spec(names, rules, shape, mesh))


def cache_sharding(mesh: Mesh, rules: LogicalRules, shape: Sequence[int]) -> NamedSharding:
  """Sharding of one layer's KV cache [batch, slots, kv_heads, head_dim], or of scanned layers'
  stacked caches [layers, batch, slots, kv_heads, head_dim]: rows as the batch, heads as the tensor
  axis says, the layers axis whole."""
  if len(shape) not in (4, 5):
    raise ValueError(f"cache_sharding: a KV cache has 4 or 5 dimensions, not shape {tuple(shape)}")
  names = (None,) * (len(shape) - 4) + ("activation_batch", None, "activation_kv_heads", None)
  return NamedSharding(mesh, logical_to_spec(names, rules, shape, mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation, under the active mesh and rules.

  Without a mesh (`jax.set_mesh`) this is the identity, so models run unchanged
  on one device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  spec = logical_to_spec(logical_axes, active_rules(), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def describe(mesh: Mesh) -> str:
  return ", ".join(f"{n}={s}" for n, s in mesh.shape.items())

