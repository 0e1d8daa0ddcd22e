"""Online sampling with each state prefilled once and forked G ways, against prefilling it G times.

  python benchmarks/online_sampling.py --states=4 --context=512 --samples=4 --action_tokens=16

Gemma 3 270M (the embedded weights, fp32), `states` contexts of `context` tokens, G = `samples`
actions of `action_tokens` tokens each, at temperature 1 with the same row keys. The two layouts run
interleaved in one process (the first call of each compiles and is not timed; then the median of
`repeats`); both must draw the same tokens. Prints each layout's prefilled tokens and seconds, and
the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def prefill_every_row(sampler, contexts, g_count, config, keys):
  """The layout before the fork: each of a state's G rows prefills the context itself."""
  sampler.reset()
  sampler.append({slot * g_count + g: list(c) for slot, c in contexts.items() for g in range(g_count)})
  rows = [slot * g_count + g for slot in contexts for g in range(g_count)]
  turn = sampler.generate(rows, config, row_keys=keys)
  return {slot: [turn[slot * g_count + g] for g in range(g_count)] for slot in contexts}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--states", type=int, default=4)
  parser.add_argument("--context", type=int, default=512)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--action_tokens", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  from swirl_jax.checkpoints import embedded
  from swirl_jax.sampling.sampler import Sampler, SamplingConfig, row_key
  from swirl_jax.training.online import sample_actions

  model, vocab = embedded.load_gemma3_270m()
  rng = np.random.default_rng(0)
  contexts = {s: rng.integers(3, vocab.vocab_size - 1, args.context).tolist() for s in range(args.states)}
  g = args.samples
  config = SamplingConfig(temperature=1.0, max_new_tokens=args.action_tokens)
  keys = {s * g + i: row_key("online_sampling", s, i) for s in range(args.states) for i in range(g)}
  sampler = Sampler(model, rows=args.states * g, capacity=args.context + args.action_tokens,
                    buckets=(128, 512), decode_steps=args.action_tokens)
  layouts = {
      "prefill G times": lambda: prefill_every_row(sampler, contexts, g, config, keys),
      "prefill once, fork": lambda: sample_actions(sampler, contexts, g, config, key_ids=("online_sampling",)),
  }
  seconds = {name: [] for name in layouts}
  prefilled, tokens = {}, {}
  for repeat in range(args.repeats + 1):
    for name, run in layouts.items():
      before = sampler.prefill_tokens
      start = time.perf_counter()
      out = run()
      elapsed = time.perf_counter() - start
      prefilled[name] = sampler.prefill_tokens - before
      tokens[name] = [[a.tokens for a in out[s]] for s in sorted(out)]
      if repeat:
        seconds[name].append(elapsed)
  same = tokens["prefill G times"] == tokens["prefill once, fork"]
  for name in layouts:
    print(json.dumps({"layout": name, "prefilled_tokens": prefilled[name],
                      "median_s": round(statistics.median(seconds[name]), 3),
                      "runs_s": [round(x, 3) for x in seconds[name]]}))
  old, new = (statistics.median(seconds[n]) for n in layouts)
  print(json.dumps({"same_tokens": same, "prefilled_ratio": prefilled["prefill G times"] / prefilled["prefill once, fork"],
                    "speedup": round(old / new, 2)}))
  if not same:
    raise SystemExit("the two layouts drew different tokens")


if __name__ == "__main__":
  main()
