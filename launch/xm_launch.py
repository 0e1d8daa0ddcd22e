"""Launches swirl_jax on Cloud TPU with XManager: one job, all hosts of the slice.

  python launch/xm_launch.py --accelerator=v5p --topology=4x4x4 \
      --gin_file=gin/experiments/gsm8k_calculator.gin --gin.TrainConfig.steps=500 [--dry_run]

Gin files and `--gin.NAME=VALUE` overrides pass through to `swirl_jax.main`.
With --dry_run the job is printed (as JSON) and nothing is launched; without
it, the `launch` extra must be installed (pinned: `pip install -r requirements/lock.txt
-r requirements/launch.txt`) and xmanager configured for your GCP project.
"""

from __future__ import annotations

import json
import shlex
import sys

from absl import app, flags

_ACCELERATOR = flags.DEFINE_string("accelerator", "v5p", "TPU generation: v4, v5e (v5litepod), v5p, v6e.")
_TOPOLOGY = flags.DEFINE_string("topology", "2x2x1", "TPU topology, e.g. 4x4x4 for a v5p-128 slice.")
_MODE = flags.DEFINE_string("mode", "pipeline", "swirl_jax.main --mode.")
_GIN_FILES = flags.DEFINE_multi_string("gin_file", [], "gin files, passed through.")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, passed through.")
_NAME = flags.DEFINE_string("name", "swirl_jax", "Experiment title.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the job instead of launching it.")
_BUILD_ONLY = flags.DEFINE_bool("build_only", False, "Build the job as xmanager objects (the `launch` extra), "
                                "print what they hold, and launch nothing.")

_CHIPS_PER_HOST = {"v4": 4, "v5e": 4, "v5litepod": 4, "v5p": 4, "v6e": 4}
# xm.ResourceType names (xmanager 0.8.5: TPU_V4, TPU_V5E, TPU_V5P, TPU_V6E; case-insensitive).
_RESOURCE = {"v4": "tpu_v4", "v5e": "tpu_v5e", "v5litepod": "tpu_v5e", "v5p": "tpu_v5p", "v6e": "tpu_v6e"}


def rewrite_gin_args(argv: list[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE`, as swirl_jax.main does."""
  out = []
  for arg in argv:
    if arg.startswith("--gin."):
      name, _, value = arg[len("--gin."):].partition("=")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def job_spec(accelerator: str, topology: str, mode: str, gin_files: list[str], gin_bindings: list[str],
             name: str) -> dict:
  """What the launcher runs: the program, its arguments, and the slice it needs."""
  if accelerator not in _CHIPS_PER_HOST:
    raise app.UsageError(f"--accelerator={accelerator}: use one of {sorted(_CHIPS_PER_HOST)}")
  try:
    chips = 1
    for d in topology.split("x"):
      chips *= int(d)
  except ValueError:
    raise app.UsageError(f"--topology={topology}: expected dimensions like 4x4x4") from None
  hosts = max(1, chips // _CHIPS_PER_HOST[accelerator])
  args = [f"--mode={mode}", "--distributed_tpu"] + [f"--gin_file={f}" for f in gin_files]
  args += [f"--gin_bindings={b}" for b in gin_bindings]
  return {"name": name, "accelerator": accelerator, "topology": topology, "chips": chips, "hosts": hosts,
          "command": ["python", "-m", "swirl_jax.main", *args],
          "shell": "python -m swirl_jax.main " + " ".join(shlex.quote(a) for a in args)}


def build_job(spec: dict):
  """The job as xmanager objects: (requirements, executor, packageable); nothing is contacted.

  Needs the `launch` extra (xmanager). One replica per host of the slice: every host runs the same
  SPMD program (`--distributed_tpu` makes each one join the others).
  """
  from xmanager import xm, xm_local  # the `launch` extra
  requirements = xm.JobRequirements(**{_RESOURCE[spec["accelerator"]]: spec["topology"]}, replicas=spec["hosts"])
  executor = xm_local.Vertex(requirements=requirements)
  packageable = xm.python_container(executor_spec=executor.Spec(), path=".",
                                    entrypoint=xm.ModuleName("swirl_jax.main"), args=spec["command"][3:])
  return requirements, executor, packageable


def describe_job(requirements, executor, packageable) -> dict:
  """What the xmanager objects hold, as JSON-able values (read back from the objects)."""
  return {"accelerator": requirements.accelerator.name, "topology": requirements.topology.name,
          "chips": requirements.topology.chip_count, "replicas": requirements.replicas,
          "executor": type(executor).__name__, "entrypoint": packageable.executable_spec.entrypoint.module_name,
          "command_line": " ".join(packageable.args.to_list())}  # shell-quoted, as the container runs it


def launch(spec: dict) -> None:
  """Packages the repository (docker) and adds the job to a new experiment."""
  from xmanager import xm, xm_local
  _, executor, packageable = build_job(spec)
  with xm_local.create_experiment(experiment_title=spec["name"]) as experiment:
    [executable] = experiment.package([packageable])
    experiment.add(xm.Job(executable, executor))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  spec = job_spec(_ACCELERATOR.value, _TOPOLOGY.value, _MODE.value, _GIN_FILES.value, _GIN_BINDINGS.value,
                  _NAME.value)
  if _DRY_RUN.value:
    print(json.dumps(spec, indent=1))
    return
  if _BUILD_ONLY.value:
    print(json.dumps(describe_job(*build_job(spec)), indent=1))
    return
  launch(spec)


if __name__ == "__main__":
  app.run(main, argv=rewrite_gin_args(sys.argv))
