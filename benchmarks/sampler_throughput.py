"""Decode tokens/s of the KV-cache sampler against its roofline, no-cache decoding and transformers.

  python benchmarks/sampler_throughput.py --batches=1,8,32 --new_tokens=64

Gemma 3 270M (the embedded GGUF, the same dequantized weights on both sides),
the same prompts, greedy, the same number of new tokens. Prints tokens/s and
the ratios (a) sampler / no-cache decoding and (b) sampler / `transformers`
`generate` (torch CPU), plus the compile time of each shape bucket.

The roofline: the run first measures this machine's fp32 matmul peak (a 2048^3
jitted matmul) and memory bandwidth (a 1 GiB array scaled in place, read and
written once; and summed, read once; the larger counts). A decode step at batch B must read every weight once
(and the keys and values its attention reads) and do 2 x B x (matmul params)
FLOPs plus attention; its bound is the larger of the compute time at the peak
and the read time at the bandwidth. The sampler's decode time per step (its
`generate` call over `new_tokens` steps, prefill excluded) is printed as a
fraction of that bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?",
    "Write a short story about a robot who learns to paint.",
    "The capital of Australia is",
    "List three uses of the calculator tool:",
    "In 1969, the first humans landed on",
    "def fibonacci(n):",
    "Translate to French: good morning, my friend.",
]


def _prompts(vocab, batch):
  bos = vocab.bos_id
  return [[bos] + vocab.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]


def machine_limits() -> tuple[float, dict[str, float]]:
  """(fp32 matmul FLOP/s, memory bytes/s by two measures), measured now on the default device.

  Memory: a 1 GiB fp32 array scaled in place (its buffer donated: no fresh pages to fault in; read
  and written once each), and the same array summed (read once). The roofline takes the larger.
  """
  import jax
  import jax.numpy as jnp

  from swirl_jax.training.peak import best_seconds, xla_matmul_peak
  peak = xla_matmul_peak("float32")
  array = jnp.ones((256 * 2**20,), jnp.float32)
  nbytes = array.nbytes
  scale = jax.jit(lambda a: a * 1.0000001, donate_argnums=0)
  array = jax.block_until_ready(scale(array))
  best = float("inf")
  for _ in range(6):
    start = time.perf_counter()
    array = jax.block_until_ready(scale(array))
    best = min(best, time.perf_counter() - start)
  read = best_seconds(jax.jit(jnp.sum), array, repeats=3, min_seconds=1.0)
  return peak, {"copy_in_place": 2 * nbytes / best, "read": nbytes / read}


def decode_step_cost(model, batch: int, span: int, decode_steps: int) -> tuple[float, float]:
  """(FLOPs, bytes read) of one decode step at `batch` rows, attention reading `span` slots of a
  global layer's cache and min(span, its ring of window + decode_steps) of a sliding-window layer's."""
  import jax
  from flax import nnx
  c = model.config
  d, n, k, h = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim
  per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * c.mlp_dim
  keys = [span if t == "global" else min(span, c.sliding_window + decode_steps) for t in c.layer_types]
  flops = 2 * batch * (c.num_layers * per_layer + d * c.vocab_size) + 4 * batch * n * h * sum(keys)
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  cache_bytes = batch * 2 * k * h * np.dtype(c.dtype).itemsize * sum(keys)
  return flops, weight_bytes + cache_bytes


def sampler_run(model, prompts, new_tokens):
  """(the sampler, a function that prefills the prompts and decodes `new_tokens` greedy tokens a row,
  returning (tokens per row, seconds in all, seconds of decode))."""
  from swirl_jax.sampling.sampler import Sampler, SamplingConfig
  longest = max(map(len, prompts))
  sampler = Sampler(model, rows=len(prompts), capacity=longest + new_tokens, buckets=(32, 64))
  config = SamplingConfig(max_new_tokens=new_tokens)  # no stop: every row makes new_tokens

  def run():
    sampler.reset()
    start = time.perf_counter()
    sampler.append(dict(enumerate(prompts)))
    prefilled = time.perf_counter()
    out = sampler.generate(range(len(prompts)), config)
    end = time.perf_counter()
    return [out[r].tokens for r in range(len(prompts))], end - start, end - prefilled
  return sampler, run


def bench_uncached(model, prompts, new_tokens):
  from swirl_jax.sampling.uncached import greedy_decode_uncached
  greedy_decode_uncached(model, prompts, new_tokens, stop_ids=(-1,))
  start = time.perf_counter()
  out = greedy_decode_uncached(model, prompts, new_tokens, stop_ids=(-1,))
  return sum(map(len, out)) / (time.perf_counter() - start)


def bench_transformers(path, prompts, new_tokens):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  directory, name = os.path.split(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  longest = max(map(len, prompts))
  ids = torch.zeros((len(prompts), longest), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):  # left padding, as generate expects
    ids[i, longest - len(p):] = torch.tensor(p)
    mask[i, longest - len(p):] = 1
  kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=0)
  with torch.inference_mode():
    model.generate(ids, **kwargs)
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    seconds = time.perf_counter() - start
  return len(prompts) * new_tokens / seconds, out[:, longest:].tolist()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--uncached_tokens", type=int, default=16,
                      help="new tokens for the no-cache baseline (it is slow)")
  parser.add_argument("--skip_transformers", action="store_true")
  parser.add_argument("--tunix", action="store_true",
                      help="also time google-tunix 0.1.7's native sampler on the same weights (`make tunix`)")
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median), after one that compiles")
  parser.add_argument("--random_init", action="store_true",
                      help="random 270M weights and synthetic prompts (no tokenizer, no transformers): "
                           "for accelerators without the package set")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()

  import jax
  print(f"device: {jax.devices()[0].device_kind}")
  peak, bandwidths = machine_limits()
  bandwidth = max(bandwidths.values())
  print(json.dumps({"matmul_peak_GFLOPs": round(peak / 1e9, 1),
                    **{f"memory_{k}_GBps": round(v / 1e9, 2) for k, v in bandwidths.items()}}))
  if args.random_init:
    from swirl_jax.models import init_model, model_config
    model = init_model(model_config("gemma3_270m", dtype=args.dtype, param_dtype=args.dtype))
    rng = np.random.default_rng(0)
    make_prompts = lambda batch: [[2] + rng.integers(10, 200_000, 12 + i % 8).tolist() for i in range(batch)]
    args.skip_transformers = True
  else:
    from swirl_jax.checkpoints import embedded
    model, vocab = embedded.load_gemma3_270m(dtype=args.dtype, param_dtype=args.dtype)
    path = embedded.gemma3_270m_gguf_path()
    make_prompts = lambda batch: _prompts(vocab, batch)
  tunix_model = None
  if args.tunix:
    import tunix_baseline
    if not tunix_baseline.available():
      raise SystemExit("--tunix: run `make tunix` first (google-tunix 0.1.7 into .tunix/)")
    tunix_model = tunix_baseline.build_model(model)
  rows = []
  for batch in [int(b) for b in args.batches.split(",")]:
    prompts = make_prompts(batch)
    sampler, ours_run = sampler_run(model, prompts, args.new_tokens)
    runs = {"ours": ours_run}
    if tunix_model is not None:
      prompt_length = 1 << (max(map(len, prompts)) - 1).bit_length()  # tunix pads to a power of two
      theirs = tunix_baseline.TunixSampler(tunix_model, vocab, prompt_length, args.new_tokens)
      runs["tunix"] = lambda: theirs.generate(prompts)
    timings = {name: [] for name in runs}
    made = {}
    for repeat in range(args.repeats + 1):  # interleaved; the first round compiles and is not timed
      for name, run in runs.items():
        made[name], total, decode = run()
        if repeat:
          timings[name].append((total, decode))
    median = lambda name, i: statistics.median(t[i] for t in timings[name])
    our_tokens = made["ours"]
    ours = batch * args.new_tokens / median("ours", 0)
    span = max(int(name.split()[-1].rstrip("]")) for name in sampler.compile_seconds if name.startswith("decode"))
    flops, read_bytes = decode_step_cost(model, batch, span, sampler.decode_steps)
    step = median("ours", 1) / args.new_tokens
    bound = max(flops / peak, read_bytes / bandwidth)
    uncached = bench_uncached(model, prompts, args.uncached_tokens)
    row = {"batch": batch, "new_tokens": args.new_tokens, "sampler_tokens_per_s": round(ours, 1),
           "decode_step_ms": round(step * 1e3, 1), "step_GFLOP": round(flops / 1e9, 2),
           "step_GB_read": round(read_bytes / 1e9, 3), "compute_bound_ms": round(flops / peak * 1e3, 1),
           "memory_bound_ms": round(read_bytes / bandwidth * 1e3, 1), "roofline_fraction": round(bound / step, 2),
           "uncached_tokens_per_s": round(uncached, 1), "ratio_vs_uncached": round(ours / uncached, 2),
           "compile_seconds": {k: round(v, 2) for k, v in sampler.compile_seconds.items()}}
    if "tunix" in runs:
      tunix_rate = batch * args.new_tokens / median("tunix", 0)
      row.update(tunix_tokens_per_s=round(tunix_rate, 1), ratio_vs_tunix=round(ours / tunix_rate, 2),
                 tunix_decode_step_ms=round(median("tunix", 1) / args.new_tokens * 1e3, 1),
                 decode_ratio_vs_tunix=round(median("tunix", 1) / median("ours", 1), 2),
                 same_tokens_as_tunix=made["tunix"] == our_tokens)
    if not args.skip_transformers:
      theirs, their_tokens = bench_transformers(path, prompts, args.new_tokens)
      same = np.mean([a[:8] == b[:8] for a, b in zip(our_tokens, their_tokens)])
      row.update(transformers_tokens_per_s=round(theirs, 1), ratio_vs_transformers=round(ours / theirs, 2),
                 rows_with_same_first_8_tokens=float(same))
    rows.append(row)
    print(json.dumps(row))
  print("\nbatch | decode step ms | roofline bound ms | of bound | sampler tok/s | tunix tok/s | x tunix "
        "| no-cache tok/s | x no-cache | transformers tok/s | x transformers")
  for r in rows:
    bound = max(r["compute_bound_ms"], r["memory_bound_ms"])
    print(f"{r['batch']:5d} | {r['decode_step_ms']:14.1f} | {bound:17.1f} | {r['roofline_fraction']:8.2f} | "
          f"{r['sampler_tokens_per_s']:13.1f} | {r.get('tunix_tokens_per_s', float('nan')):11.1f} | "
          f"{r.get('ratio_vs_tunix', float('nan')):7.2f} | {r['uncached_tokens_per_s']:14.1f} | "
          f"{r['ratio_vs_uncached']:10.2f} | {r.get('transformers_tokens_per_s', float('nan')):18.1f} | "
          f"{r.get('ratio_vs_transformers', float('nan')):.2f}")


if __name__ == "__main__":
  main()
