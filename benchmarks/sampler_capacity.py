"""Decode in a sampler sized for long contexts: the rows' lengths set the cost, not the capacity.

  python benchmarks/sampler_capacity.py --capacity=8192 --context=1000 --states=8 --samples=4

Gemma 3 270M (the embedded weights, fp32). `states` contexts of `context` tokens, each prefilled once
and forked into `samples` rows (as online sampling does), then `new_tokens` greedy tokens a row. Two
samplers over the same weights, run interleaved (the first round compiles and is not timed; then the
median of `repeats`):
- "whole capacity": every layer keeps `capacity` slots and attention reads all of them (the layout
  before ring buffers and spans: `Sampler(spans=(), ring_buffers=False)`);
- "filled span, ring buffers": the default: attention reads the filled span, rounded up to a power of
  two, and sliding-window layers keep a ring of window + decode_steps slots.
Both must produce the same tokens. Prints each one's decode seconds and tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def run_once(sampler, contexts, samples, config):
  """Prefill each context into one row, fork it into its other rows, decode; (tokens, seconds)."""
  sampler.reset()
  sampler.append({s * samples: c for s, c in contexts.items()})
  sampler.fork({s * samples + g: s * samples for s in contexts for g in range(1, samples)})
  rows = range(len(contexts) * samples)
  start = time.perf_counter()
  out = sampler.generate(rows, config)
  seconds = time.perf_counter() - start
  return [out[r].tokens for r in rows], seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--capacity", type=int, default=8192)
  parser.add_argument("--context", type=int, default=1000)
  parser.add_argument("--states", type=int, default=8)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import jax

  from swirl_jax.checkpoints import embedded
  from swirl_jax.sampling.sampler import Sampler, SamplingConfig

  print(f"device: {jax.devices()[0].device_kind}")
  model, vocab = embedded.load_gemma3_270m()
  rng = np.random.default_rng(0)
  contexts = {s: rng.integers(3, vocab.vocab_size - 1, args.context).tolist() for s in range(args.states)}
  config = SamplingConfig(max_new_tokens=args.new_tokens)  # greedy, no stop: every row makes new_tokens
  rows = args.states * args.samples
  common = dict(rows=rows, capacity=args.capacity, buckets=(128, 512, 1024))
  samplers = {"whole capacity": Sampler(model, spans=(), ring_buffers=False, **common),
              "filled span, ring buffers": Sampler(model, **common)}
  seconds = {name: [] for name in samplers}
  tokens = {}
  for repeat in range(args.repeats + 1):
    for name, sampler in samplers.items():
      tokens[name], elapsed = run_once(sampler, contexts, args.samples, config)
      if repeat:
        seconds[name].append(elapsed)
  made = rows * args.new_tokens
  for name, sampler in samplers.items():
    cache_bytes = sum(x.nbytes for x in jax.tree.leaves(sampler._cache))
    median = statistics.median(seconds[name])
    print(json.dumps({"layout": name, "decode_median_s": round(median, 3),
                      "tokens_per_s": round(made / median, 1), "runs_s": [round(x, 3) for x in seconds[name]],
                      "cache_GiB": round(cache_bytes / 2**30, 2),
                      "compiled": sorted(k for k in sampler.compile_seconds if k.startswith("decode"))}))
  old, new = (statistics.median(seconds[n]) for n in samplers)
  same = tokens["whole capacity"] == tokens["filled span, ring buffers"]
  print(json.dumps({"rows": rows, "context": args.context, "capacity": args.capacity, "same_tokens": same,
                    "decode_speedup": round(old / new, 2)}))
  if not same:
    raise SystemExit("the two layouts produced different tokens")


if __name__ == "__main__":
  main()
