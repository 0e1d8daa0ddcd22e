"""benchmarks/aot_tpu.py compiles the trainer's and sampler's real functions for a TPU topology on
this CPU machine (needs the `tpu-aot` extra: libtpu; skipped without it)."""

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.extras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_aot(*flags: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("XLA_FLAGS", None)
  done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "aot_tpu.py"), "--model=tiny", *flags],
                        env=env, capture_output=True, text=True, cwd=REPO, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def test_the_aot_benchmark_compiles_every_function_for_a_small_topology(extra, tmp_path):
  extra("libtpu", "the tpu-aot extra (libtpu)")
  json_path = tmp_path / "figures.json"
  done = _run_aot("--topology=v5e:2x2", "--mesh=1,2,2", "--rows=8", "--seq_len=256", "--prefill_chunk=64",
                  "--kl", "--functions=offline,online,prefill,decode,fork,reshard", "--sampling_mesh=2,1,2",
                  "--samples=2", "--context=128", f"--json={json_path}")
  assert "(4 chips, TPU v5 lite, 16 GiB HBM each)" in done.stdout
  figures = {}
  for line in done.stdout.splitlines():
    found = re.match(r"\s*(\w+): arguments .* total ([\d.]+) GiB of 16 GiB .* ([\d.e+]+) FLOPs per chip", line)
    if found:
      figures[found[1]] = (float(found[2]), float(found[3]))
  assert set(figures) == {"offline", "online", "prefill", "decode", "fork", "reshard"}, done.stdout
  assert all(total < 16 for total, _ in figures.values()), figures
  assert all(flops > 0 for name, (_, flops) in figures.items() if name != "reshard"), figures  # a cast, a move
  # The online step with a KL reference runs the reference model's forward too: more work.
  assert figures["online"][1] > figures["offline"][1]
  # The sampling layout: the decode chunk no longer gathers the weights at every step (the training
  # layout gathers the tensor shard of every weight, twice the chip's own fsdp shard here), the
  # reshard moves one copy of them, and both online-step bounds are reported.
  rows = {row["key"]: row for row in json.loads(json_path.read_text())}
  assert rows["decode/training"]["gathered_share"] > 1.5
  assert rows["decode/sampling"]["gathered_share"] < 0.01, rows["decode/sampling"]
  assert rows["decode/sampling"]["lower_bound_s"] < rows["decode/training"]["lower_bound_s"]
  # A chip keeps its fsdp half of its tensor shard and receives the other half.
  assert 0.45 < rows["reshard"]["copies_moved"] <= 0.55, rows["reshard"]
  assert rows["decode/sampling"]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
  assert {"online step/training", "online step/sampling"} <= set(rows)
  assert "all-gathered per decode step" in done.stdout and "lower bounds per decode step on TPU v5e" in done.stdout


def test_a_reshard_to_a_wider_tensor_axis_moves_no_weights_between_tensor_indices(extra, tmp_path):
  """(1, 8, 2) to (2, 1, 8) on v5e:4x4, the shape of Gemma 3 27B's (1, 64, 4) to (16, 1, 16) on
  v5e-256: the sampling mesh takes the training tensor index as the major part of its own, so a
  chip's sampling shard lies in its training shard; the reshard receives under one copy of the
  weights and permutes nothing (the plain reshaped order received 1.25x at result size, with a
  permute). The decode chunk compiles there too, with what its rows' inputs cost to move."""
  extra("libtpu", "the tpu-aot extra (libtpu)")
  json_path = tmp_path / "reshard.json"
  _run_aot("--topology=v5e:4x4", "--mesh=1,8,2", "--rows=16", "--seq_len=128", "--prefill_chunk=64",
           "--functions=decode,reshard", "--sampling_mesh=2,1,8", "--param_dtype=float32", f"--json={json_path}")
  rows = {row["key"]: row for row in json.loads(json_path.read_text())}
  reshard = rows["reshard"]
  assert reshard["copies_moved"] <= 1.0, reshard
  assert reshard["collective_bytes"]["collective-permute"] == 0, reshard
  # Its shard of rows spans 2 hosts of 4 chips: the rows' tokens travel from their owners on device.
  decode = rows["decode/sampling"]
  assert not decode["rows_on_one_host"] and 0 < decode["staging_bytes_per_append_chunk"] < 2**14, decode
