"""The demo's base SFT step (tiny_2m, packed rows), under each allocator and row layout.

  python benchmarks/demo_sft.py [--steps=10] [--layouts=8x512,16x256]

Each variant runs in its own process (an allocator is chosen when a process starts): glibc as it
comes, glibc told to keep freed memory (MALLOC_ARENA_MAX and the MALLOC_* thresholds), and
tcmalloc (Debian's libtcmalloc-minimal4, where installed; `make demo` preloads it). Each times
`--steps` jitted SFT steps of `make demo`'s model on random packed rows (documents of 120-220
tokens: a guess at the demonstrations' lengths, not measured from them), and reads XLA's FLOP
count of the compiled step and the minor page faults of the timed steps. Prints ms per step, achieved FLOP/s over the fp32 matmul peak measured in the
same process, faults per step, and each variant's time over plain glibc's with the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GLIBC_KEEP = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "268435456"}
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def measure(rows: int, length: int, steps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from swirl_jax.data.features import INPUT_TOKENS, LOSS_WEIGHTS, POSITIONS, REWARDS, SEGMENT_IDS, TARGET_TOKENS
  from swirl_jax.models import init_model, model_config
  from swirl_jax.training import objectives
  from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
  from swirl_jax.training.peak import xla_matmul_peak
  from swirl_jax.training.step import jit_train_step, train_step_fn

  model = init_model(model_config("tiny_2m", vocab_size=512), seed=0)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1), 100, 1)
  step = jit_train_step(train_step_fn(graphdef, objectives.RewardWeightedLikelihood(), tx, 1))
  rng = np.random.default_rng(0)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  for r in range(rows):  # documents of 120-220 tokens, packed whole; the rest of a row is padding
    start, segment = 0, 1
    while True:
      size = int(rng.integers(120, 221))
      if start + size > length:
        break
      segments[r, start:start + size], positions[r, start:start + size] = segment, np.arange(size)
      start, segment = start + size, segment + 1
  tokens = rng.integers(2, 512, (rows, length)).astype(np.int32)
  batch = {INPUT_TOKENS: tokens, TARGET_TOKENS: np.roll(tokens, -1, axis=1), POSITIONS: positions,
           SEGMENT_IDS: segments, LOSS_WEIGHTS: (segments > 0).astype(np.float32),
           REWARDS: np.ones((rows, length), np.float32)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  opt_state = tx.init(params)
  slots = rows * length
  cost = step.lower(params, opt_state, batch, None, slots).compile().cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  for _ in range(2):
    params, opt_state, metrics = step(params, opt_state, batch, None, slots)
  float(metrics["loss"])
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, metrics = step(params, opt_state, batch, None, slots)
    float(metrics["loss"])
  seconds = (time.perf_counter() - start) / steps
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
  peak = xla_matmul_peak("float32")
  return {"seconds": seconds, "flops": flops, "peak": peak, "faults": faults,
          "tokens": int((segments > 0).sum()), "device": jax.devices()[0].device_kind}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--layouts", default="8x512,16x256", help="rows x tokens per row, comma-separated")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    rows, length = (int(v) for v in args.child.split("x"))
    print(json.dumps(measure(rows, length, args.steps)))
    return

  allocators = {"glibc": {}, "glibc-keep": GLIBC_KEEP}
  if os.path.exists(TCMALLOC):
    allocators["tcmalloc"] = {"LD_PRELOAD": TCMALLOC}
  else:
    print(f"(no {TCMALLOC}: apt-get install libtcmalloc-minimal4 to compare tcmalloc)")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LD_PRELOAD") and not k.startswith("MALLOC_")}
  print(f"{'layout':>8} {'allocator':>10} {'ms/step':>8} {'tokens':>7} {'GFLOP':>6} {'of peak':>8} "
        f"{'faults/step':>11} {'vs glibc':>8}")
  for layout in args.layouts.split(","):
    plain = None
    for name, extra in allocators.items():
      done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={layout}", f"--steps={args.steps}"],
                            env={**env, **extra}, capture_output=True, text=True, check=True)
      r = json.loads(done.stdout.strip().splitlines()[-1])
      plain = plain or r["seconds"]
      print(f"{layout:>8} {name:>10} {r['seconds'] * 1e3:8.0f} {r['tokens']:7d} {r['flops'] / 1e9:6.1f} "
            f"{r['flops'] / r['seconds'] / r['peak']:8.1%} {r['faults']:11.0f} {plain / r['seconds']:7.2f}x")
  print(f"device {r['device']}; fp32 matmul peak (XLA, 2048^2) {r['peak'] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
  main()
