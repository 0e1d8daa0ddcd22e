"""SeqIO pipeline throughput, and tokens of the expanded versus prefix-shared layouts.

  python benchmarks/data_pipeline.py --trajectories=2000

Writes judged trajectories shaped like Stage 1's on the built-in calculator
task (a 420-token prompt, then 2-6 steps of a ~20-token tool turn and a
~30-token action), registers the SeqIO task, and times (1) examples/s through
`get_dataset` with the packing feature converter, (2) the same without packing.
It then counts the tokens each layout feeds the model: expanded (one example
per state) against prefix-shared (one row per trajectory), and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import seqio  # noqa: E402

from swirl_jax.data import decomposition, seqio_tasks, trajectory_io  # noqa: E402
from swirl_jax.data.features import INPUT_TOKENS  # noqa: E402
from swirl_jax.data.trajectory import Step, Trajectory  # noqa: E402


def synthetic(n: int, seed: int = 0) -> list[Trajectory]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    steps = []
    for k in range(int(rng.integers(2, 7))):
      context = rng.integers(3, 262_000, 420 if k == 0 else int(rng.integers(15, 26))).tolist()
      action = rng.integers(3, 262_000, int(rng.integers(20, 41))).tolist()
      steps.append(Step(k, context, "", action, "", (-rng.random(len(action))).tolist(), "tool", "stop_string",
                        process={"verdict": "GOOD", "score": 1.0, "reasoning": "", "judge": "bench", "error": ""}))
    out.append(Trajectory(f"q{i}#0", f"q{i}", 0, "bench", "", ["1"], steps, "1", "answered",
                          outcome={"verdict": "YES", "score": 1.0, "reasoning": "", "judge": "bench", "error": ""}))
  return out


def examples_per_second(name, pack, lengths, batch):
  converter = seqio_tasks.StepwiseFeatureConverter(pack=pack)
  ds = seqio.get_dataset(name, task_feature_lengths=lengths, dataset_split="train", shuffle=False,
                         feature_converter=converter).batch(batch)
  start, rows = time.perf_counter(), 0
  for b in ds.as_numpy_iterator():
    rows += len(b[INPUT_TOKENS])
  return rows, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trajectories", type=int, default=2000)
  args = parser.parse_args()
  trajectories = synthetic(args.trajectories)
  directory = tempfile.mkdtemp(prefix="swirl_bench_")
  for k in range(0, len(trajectories), 100):
    trajectory_io.write_shard(trajectory_io.shard_path(directory, k // 100), trajectories[k:k + 100])
  name = seqio_tasks.register_task("bench", "none", directory, seqio.PassThroughVocabulary(262_144))
  examples = sum(len(t.steps) for t in trajectories)
  lengths = {"context": 1984, "action": 64}  # rows of 2048 tokens, as the sampler's capacity
  print(f"{len(trajectories)} trajectories, {examples} state examples")
  for pack in (False, True):
    rows, seconds = examples_per_second(name, pack, lengths, batch=32)
    print(f"SeqIO get_dataset + converter (pack={pack}): {examples / seconds:.0f} examples/s "
          f"({rows} rows of {sum(lengths.values())} tokens in {seconds:.1f} s)")
  expanded = sum(len(e.context) + len(e.action) for t in trajectories for e in decomposition.expand(t))
  shared = sum(len(decomposition.prefix_shared(t).tokens) for t in trajectories)
  print(f"tokens: expanded {expanded}, prefix-shared {shared}: expanded / shared = {expanded / shared:.2f} "
        f"(mean {examples / len(trajectories):.2f} steps per trajectory)")


if __name__ == "__main__":
  main()
