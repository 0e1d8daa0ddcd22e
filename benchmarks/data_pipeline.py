"""Stage 2's data path (SeqIO) against the numpy path it replaced, and the two layouts' tokens.

  python benchmarks/data_pipeline.py --trajectories=2000

Makes judged trajectories shaped like Stage 1's on the built-in calculator
task (a 420-token prompt, then 2-6 steps of a ~20-token tool turn and a
~30-token action) and registers them as SeqIO tasks. Then, in one run, times
the rows a trainer gets, 32 per step, rows of 2,048 tokens:
  (1) the trainer's own path: `batches.RowStream` over the `:trajectories`
      task (`seqio.get_dataset`, shuffled by seed, the step-wise converter),
      without and with packing;
  (2) the numpy path of the trainer before SeqIO fed it: a seeded permutation
      of the trajectories in memory and `prefix_shared_batch`;
and prints (1) / (2); then online mode's states through `batches.StateStream`.
Last, the tokens each layout feeds the model: expanded (one example per state)
against prefix-shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from swirl_jax.data import decomposition, seqio_tasks  # noqa: E402
from swirl_jax.records import Step, Trajectory, Verdict  # noqa: E402
from swirl_jax.training import batches  # noqa: E402


def synthetic(n: int, seed: int = 0) -> list[Trajectory]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    steps = []
    for k in range(int(rng.integers(2, 7))):
      context = rng.integers(3, 262_000, 420 if k == 0 else int(rng.integers(15, 26))).tolist()
      action = rng.integers(3, 262_000, int(rng.integers(20, 41))).tolist()
      steps.append(Step(k, context, "", action, "", (-rng.random(len(action))).tolist(), "tool", "stop_string",
                        process=Verdict("GOOD", 1.0, judge="bench")))
    out.append(Trajectory(f"q{i}#0", f"q{i}", 0, "bench", "", ["1"], steps, "1", "answered",
                          outcome=Verdict("YES", 1.0, judge="bench")))
  return out


def timed(produce, steps: int) -> float:
  """Seconds for `steps` calls of `produce` after one warm call (tf.data starts its threads)."""
  produce()
  start = time.perf_counter()
  for _ in range(steps):
    produce()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trajectories", type=int, default=2000)
  parser.add_argument("--steps", type=int, default=40)
  args = parser.parse_args()
  trajectories = synthetic(args.trajectories)
  data = seqio_tasks.register_trajectories("bench", trajectories)
  examples = sum(len(t.steps) for t in trajectories)
  rows_per_step, length = 32, 2048
  print(f"{len(trajectories)} trajectories, {examples} states; {args.steps} steps of {rows_per_step} rows of "
        f"{length} tokens")

  order = np.random.default_rng([0, 0]).permutation(len(trajectories))
  position = [0]

  def numpy_rows():
    picked = [trajectories[order[(position[0] + i) % len(order)]] for i in range(rows_per_step)]
    position[0] += rows_per_step
    return seqio_tasks.prefix_shared_batch(picked, length)

  numpy_seconds = timed(numpy_rows, args.steps)
  print(f"numpy path (permutation + prefix_shared_batch): {rows_per_step * args.steps / numpy_seconds:.0f} rows/s")
  for pack in (False, True):
    stream = batches.RowStream(data.trajectories, length, seed=0, pack=pack)
    seconds = timed(lambda: stream.next_rows(rows_per_step), args.steps)
    print(f"trainer path (SeqIO RowStream, pack={pack}): {rows_per_step * args.steps / seconds:.0f} rows/s: "
          f"{numpy_seconds / seconds:.2f}x the numpy path's speed")

  states = batches.StateStream(data.states, seed=0)
  state_seconds = timed(lambda: states.next_states(rows_per_step), args.steps)
  print(f"online states (SeqIO StateStream): {rows_per_step * args.steps / state_seconds:.0f} states/s")

  expanded_states = [e for t in trajectories for e in decomposition.expand(t)]
  expanded = sum(len(e.context) + len(e.action) for e in expanded_states)
  shared = sum(len(decomposition.prefix_shared(t).tokens) for t in trajectories)
  print(f"tokens: expanded {expanded}, prefix-shared {shared}: expanded / shared = {expanded / shared:.2f} "
        f"(mean {examples / len(trajectories):.2f} steps per trajectory)")


if __name__ == "__main__":
  main()
