"""The launchers' dry runs print the command they would run."""

import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tpu_vm_dry_run():
  out = subprocess.run(
      ["bash", os.path.join(REPO, "launch/tpu_vm.sh"), "--tpu=my-pod", "--zone=us-east5-a", "--project=p1",
       "--dry_run", "--", "--mode=pipeline", "--gin_file=gin/experiments/quickstart.gin",
       "--gin.TrainConfig.steps=500", "--gin.GenerateConfig.output_dir='gs://b/runs'"],
      check=True, capture_output=True, text=True).stdout
  words = shlex.split(out)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
  assert "--worker=all" in words and "--zone=us-east5-a" in words and "--project=p1" in words
  program = next(w for w in words if w.startswith("--command="))[len("--command="):]
  inner = shlex.split(program.split("&&", 1)[1])
  assert inner[:5] == ["JAX_PLATFORMS=tpu", ".venv/bin/python", "-m", "swirl_jax.main", "--distributed_tpu"]
  assert inner[5:] == ["--mode=pipeline", "--gin_file=gin/experiments/quickstart.gin",
                       "--gin.TrainConfig.steps=500", "--gin.GenerateConfig.output_dir='gs://b/runs'"]


def test_tpu_vm_requires_tpu_and_zone():
  result = subprocess.run(["bash", os.path.join(REPO, "launch/tpu_vm.sh"), "--dry_run"], capture_output=True,
                          text=True)
  assert result.returncode == 2 and "--tpu and --zone are required" in result.stderr


def test_xmanager_dry_run():
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch/xm_launch.py"), "--accelerator=v5p", "--topology=4x4x4",
       "--gin_file=gin/experiments/gsm8k_calculator.gin", "--gin.TrainConfig.steps=500", "--dry_run"],
      check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}).stdout
  spec = json.loads(out)
  assert spec["chips"] == 64 and spec["hosts"] == 16 and spec["topology"] == "4x4x4"
  assert spec["command"] == ["python", "-m", "swirl_jax.main", "--mode=pipeline", "--distributed_tpu",
                             "--gin_file=gin/experiments/gsm8k_calculator.gin",
                             "--gin_bindings=TrainConfig.steps = 500"]


@pytest.mark.extras
def test_xmanager_builds_the_job_from_real_objects(extra):
  """The job through xmanager's own JobRequirements, Vertex executor and python_container (the `launch`
  extra; nothing is packaged or sent)."""
  extra("xmanager", "the launch extra (requirements/launch.txt)")
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch/xm_launch.py"), "--accelerator=v5e", "--topology=16x16",
       "--mode=train", "--gin_file=gin/experiments/gsm8k_calculator.gin", "--gin.TrainConfig.steps=500",
       "--gin.run_train.filter_strategy='process'", "--build_only"],
      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
          [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])})
  assert done.returncode == 0, done.stderr[-3000:]
  job = json.loads(done.stdout[done.stdout.index("{"):])
  assert job["accelerator"] == "TPU_V5E" and job["topology"] == "16x16" and job["chips"] == 256
  assert job["replicas"] == 64  # hosts: 4 chips each
  assert job["executor"] == "Vertex" and job["entrypoint"] == "swirl_jax.main"
  assert shlex.split(job["command_line"]) == [
      "--mode=train", "--distributed_tpu", "--gin_file=gin/experiments/gsm8k_calculator.gin",
      "--gin_bindings=TrainConfig.steps = 500", "--gin_bindings=run_train.filter_strategy = 'process'"]
