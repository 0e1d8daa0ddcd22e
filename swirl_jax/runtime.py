"""One set-up for every mode: join the multi-process run, build the mesh and the rules.

Every stage (generate, judge, train, evaluate, pipeline) and the miniature
experiment start here, so a run on a pod, on a CPU test with several processes,
and on a laptop differ only in configuration:

  # Cloud TPU VM slice (the runtime names the coordinator):
  RuntimeConfig.auto_detect = True
  # CPU processes on one machine (tests):
  RuntimeConfig.coordinator_address = '127.0.0.1:12345'
  RuntimeConfig.num_processes = 2
  RuntimeConfig.process_id = 0      # 1 in the other process
  # several slices, data parallel across them (a hybrid mesh):
  RuntimeConfig.num_slices = 2
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator

import gin
import jax
from absl import flags, logging
from jax.sharding import Mesh

from swirl_jax import partitioning
from swirl_jax.loopback import is_loopback


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How this process joins a run, and the mesh every stage shares.

  auto_detect: call `jax.distributed.initialize()` with no arguments (Cloud TPU
  VMs, where the runtime knows the slice). coordinator_address, num_processes,
  process_id: an explicit multi-process run (process 0 serves the coordinator;
  on a loopback address it binds only there). cpu_collectives: the CPU backend's
  cross-process collectives. num_slices, slice_granule: see
  `partitioning.make_mesh`. mesh_on_one_device: build a 1-device mesh too (the
  default runs without a mesh there, the fastest path).
  """

  auto_detect: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  cpu_collectives: str = "gloo"
  num_slices: int = 1
  slice_granule: str = "slice"
  mesh_on_one_device: bool = False

  def __post_init__(self):
    explicit = (self.coordinator_address, self.num_processes, self.process_id)
    if any(v is not None for v in explicit) and None in explicit:
      raise ValueError("RuntimeConfig: coordinator_address, num_processes and process_id go together "
                       f"(got {explicit})")
    if self.auto_detect and self.coordinator_address is not None:
      raise ValueError("RuntimeConfig: auto_detect and coordinator_address exclude each other")
    if self.num_slices < 1:
      raise ValueError(f"RuntimeConfig.num_slices={self.num_slices} must be at least 1")


@dataclasses.dataclass(frozen=True)
class Runtime:
  """What the stages need: the mesh (None on one device) and the logical-axis rules."""

  mesh: Mesh | None
  rules: partitioning.LogicalRules

  @property
  def process_index(self) -> int:
    return jax.process_index()

  @property
  def process_count(self) -> int:
    return jax.process_count()

  @property
  def is_main_process(self) -> bool:
    return jax.process_index() == 0

  @contextlib.contextmanager
  def activate(self) -> Iterator[None]:
    with partitioning.activate(self.mesh, self.rules):
      yield

  def describe(self) -> str:
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if self.mesh is None:
      return f"{where}, one device, no mesh"
    return f"{where}, mesh {partitioning.describe(self.mesh)} over {jax.device_count()} devices"


def _is_loopback(address: str) -> bool:
  return is_loopback(address.rsplit(":", 1)[0])


def _initialize_distributed(config: RuntimeConfig) -> None:
  from jax._src import distributed  # the public API has no "already initialized?" query
  if distributed.global_state.client is not None:
    return  # a second set-up in the same process (the miniature runs several stages)
  if config.auto_detect:
    jax.distributed.initialize()
    return
  if config.coordinator_address is None:
    return
  jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
  # jax binds the coordinator to every address by default; a loopback run stays on loopback.
  bind = config.coordinator_address if _is_loopback(config.coordinator_address) else None
  jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id,
                             coordinator_bind_address=bind)


def setup_runtime(config: RuntimeConfig | None = None) -> Runtime:
  """Initializes multi-process JAX if configured, then builds the mesh (gin's MeshConfig) and rules.

  Call it before anything touches a device.
  """
  config = config or RuntimeConfig()
  _initialize_distributed(config)
  rules = partitioning.logical_rules()
  mesh = None
  if jax.device_count() > 1 or config.num_slices > 1 or config.mesh_on_one_device:
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), num_slices=config.num_slices,
                                  granule=config.slice_granule)
  runtime = Runtime(mesh, rules)
  logging.info("runtime: %s", runtime.describe())
  return runtime


def log_to_directory(directory: str) -> str:
  """Sends library logs (absl and Python `logging`: orbax, jax, httpx, ours; INFO and up) to a file in
  `directory`, and keeps only warnings and errors on the terminal. Returns the directory."""
  os.makedirs(directory, exist_ok=True)
  logging.get_absl_handler().use_absl_log_file(program_name="swirl_jax", log_dir=directory)
  flags.FLAGS.stderrthreshold = "warning"
  logging.set_verbosity(logging.INFO)
  return directory
