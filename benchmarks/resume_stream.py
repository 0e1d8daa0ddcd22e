"""Resuming Stage 2's data stream: seeking to a position against replaying up to it.

  python benchmarks/resume_stream.py --positions=1000,100000

The trajectories of `data_pipeline.py` (2,000, shaped like Stage 1's on the calculator task),
registered as the library's tasks. For each stream the trainer reads (padded rows and packed rows
of 2,048 tokens from the `:trajectories` task, 32 per step; online states, 32 per step) and each
position, one run times the first batch after a resume:
  (1) seek: `batches.RowStream` / `StateStream` `.seek(position)`, as the trainer resumes now;
  (2) replay: the stream as it resumed before, `seqio.get_dataset` through the converter with the
      first `position` rows (or states) skipped by `ds.skip`;
and prints (2) / (1), and the first batch of a fresh stream (position 0) beside them. A position
counts examples (trajectories, states). For packed rows, the seek goes to the first row boundary at
or after the position (found by reading one packer's chunk, not timed), and the replay skips as
many rows as hold about that many trajectories (the mean of that chunk's rows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import seqio  # noqa: E402

from data_pipeline import synthetic  # noqa: E402
from swirl_jax.data import features, seqio_tasks  # noqa: E402
from swirl_jax.training import batches  # noqa: E402

PER_STEP, LENGTH, SEED = 32, 2048, 0


def first_batch(make) -> float:
  """Seconds from building a resumed stream to holding its first batch."""
  start = time.perf_counter()
  make()
  return time.perf_counter() - start


def replayed(task: str, kind: str, skipped: int) -> None:
  """The resume as it was: the whole converted stream from the start, `skipped` items dropped."""
  if kind == "states":
    ds = seqio.get_dataset(task, task_feature_lengths={k: None for k in seqio_tasks.TOKEN_ALIGNED},
                           feature_converter=seqio.PassThroughFeatureConverter(), dataset_split="train",
                           shuffle=True, seed=SEED, num_epochs=None, shard_info=batches.process_shard(),
                           verbose=False, trim_output_features=False)
    iterator = ds.skip(skipped).as_numpy_iterator()
    [seqio_tasks.example_state(next(iterator)) for _ in range(PER_STEP)]
    return
  converter = seqio_tasks.StepwiseFeatureConverter(pack=kind == "packed rows")
  ds = seqio.get_dataset(task, task_feature_lengths=seqio_tasks.row_lengths(LENGTH), feature_converter=converter,
                         dataset_split="train", shuffle=True, seed=SEED, num_epochs=None,
                         shard_info=batches.process_shard(), verbose=False, trim_output_features=False)
  next(ds.skip(skipped).batch(PER_STEP, drop_remainder=True).as_numpy_iterator())


def row_boundary(task: str, position: int) -> tuple[int, float]:
  """The first end of a packed row at or after `position`, and the chunk's trajectories per row."""
  stream = batches.RowStream(task, LENGTH, seed=SEED, pack=True)
  stream.seek(position - position % LENGTH)
  held = []
  while stream.position < position:
    rows = stream.next_rows(1)
    held.append(int(rows[features.SEGMENT_IDS].max()))
  return stream.position, float(np.mean(held)) if held else 1.0


def seek(task: str, kind: str, position: int) -> None:
  if kind == "states":
    stream = batches.StateStream(task, seed=SEED)
    stream.seek(position)
    stream.next_states(PER_STEP)
  else:
    stream = batches.RowStream(task, LENGTH, seed=SEED, pack=kind == "packed rows")
    stream.seek(position)
    stream.next_rows(PER_STEP)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trajectories", type=int, default=2000)
  parser.add_argument("--positions", default="1000,100000")
  args = parser.parse_args()
  data = seqio_tasks.register_trajectories("bench", synthetic(args.trajectories))
  print(f"{args.trajectories} trajectories; batches of {PER_STEP} (rows of {LENGTH} tokens, or states)")
  for kind, task in (("padded rows", data.trajectories), ("packed rows", data.trajectories),
                     ("states", data.states)):
    seek(task, kind, 0)  # tf.data traces its functions once per process
    fresh = first_batch(lambda: seek(task, kind, 0))
    print(f"{kind}: first batch of a fresh stream {fresh:.2f} s")
    for position in (int(p) for p in args.positions.split(",")):
      skipped = position
      if kind == "packed rows":
        position, per_row = row_boundary(task, position)
        skipped = round(position / per_row)
      sought = first_batch(lambda: seek(task, kind, position))
      replay = first_batch(lambda: replayed(task, kind, skipped))
      what = f"{skipped} rows (about {position} trajectories)" if kind == "packed rows" else f"{position}"
      print(f"  position {position}: seek {sought:.2f} s, replay of {what} {replay:.2f} s: "
            f"replay / seek = {replay / sought:.1f}x")


if __name__ == "__main__":
  main()
