"""benchmarks/aot_tpu.py compiles the trainer's and sampler's real functions for a TPU topology on
this CPU machine (needs the `tpu-aot` extra: libtpu; skipped without it)."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.extras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_aot_benchmark_compiles_every_function_for_a_small_topology(extra):
  extra("libtpu", "the tpu-aot extra (libtpu)")
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "aot_tpu.py"), "--model=tiny",
                         "--topology=v5e:2x2", "--mesh=1,2,2", "--rows=8", "--seq_len=256", "--prefill_chunk=64",
                         "--kl"], env=env, capture_output=True, text=True, cwd=REPO, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "(4 chips, TPU v5 lite, 16 GiB HBM each)" in done.stdout
  figures = {}
  for line in done.stdout.splitlines():
    found = re.match(r"\s*(\w+): arguments .* total ([\d.]+) GiB of 16 GiB .* ([\d.e+]+) FLOPs per chip", line)
    if found:
      figures[found[1]] = (float(found[2]), float(found[3]))
  assert set(figures) == {"offline", "online", "prefill", "decode"}, done.stdout
  assert all(flops > 0 and total < 16 for total, flops in figures.values()), figures
  # The online step with a KL reference runs the reference model's forward too: more work.
  assert figures["online"][1] > figures["offline"][1]
