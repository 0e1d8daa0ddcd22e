"""Decode tokens/s of the KV-cache sampler against no-cache decoding and transformers.

  python benchmarks/sampler_throughput.py --batches=1,8,32 --new_tokens=64

Gemma 3 270M (the embedded GGUF, the same dequantized weights on both sides),
the same prompts, greedy, the same number of new tokens. Prints tokens/s and
the ratios (a) sampler / no-cache decoding and (b) sampler / `transformers`
`generate` (torch CPU), plus the compile time of each shape bucket.
"""

from __future__ import annotations

import argparse
import json
import os
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
  bos = vocab.tokenizer.bos_id()
  return [[bos] + vocab.encode(PROMPTS[i % len(PROMPTS)]) for i in range(batch)]


def bench_sampler(model, prompts, new_tokens):
  from swirl_jax.sampling.sampler import Sampler, SamplingConfig
  longest = max(map(len, prompts))
  sampler = Sampler(model, rows=len(prompts), capacity=longest + new_tokens, buckets=(32, 64))
  config = SamplingConfig(max_new_tokens=new_tokens)  # no stop: every row makes new_tokens
  sampler.append(dict(enumerate(prompts)))
  sampler.generate(range(len(prompts)), config)  # compiles prefill and decode
  compile_seconds = dict(sampler.compile_seconds)
  sampler.reset()
  start = time.perf_counter()
  sampler.append(dict(enumerate(prompts)))
  out = sampler.generate(range(len(prompts)), config)
  seconds = time.perf_counter() - start
  made = sum(len(o.tokens) for o in out.values())
  return made / seconds, compile_seconds, [out[r].tokens for r in range(len(prompts))]


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
  parser.add_argument("--random_init", action="store_true",
                      help="random 270M weights and synthetic prompts (no tokenizer, no transformers): "
                           "for accelerators without the package set")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()

  import jax
  print(f"device: {jax.devices()[0].device_kind}")
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
  rows = []
  for batch in [int(b) for b in args.batches.split(",")]:
    prompts = make_prompts(batch)
    ours, compile_seconds, our_tokens = bench_sampler(model, prompts, args.new_tokens)
    uncached = bench_uncached(model, prompts, args.uncached_tokens)
    row = {"batch": batch, "new_tokens": args.new_tokens, "sampler_tokens_per_s": round(ours, 1),
           "uncached_tokens_per_s": round(uncached, 1), "ratio_vs_uncached": round(ours / uncached, 2),
           "compile_seconds": {k: round(v, 2) for k, v in compile_seconds.items()}}
    if not args.skip_transformers:
      theirs, their_tokens = bench_transformers(path, prompts, args.new_tokens)
      same = np.mean([a[:8] == b[:8] for a, b in zip(our_tokens, their_tokens)])
      row.update(transformers_tokens_per_s=round(theirs, 1), ratio_vs_transformers=round(ours / theirs, 2),
                 rows_with_same_first_8_tokens=float(same))
    rows.append(row)
    print(json.dumps(row))
  print("\nbatch | sampler tok/s | no-cache tok/s | x no-cache | transformers tok/s | x transformers")
  for r in rows:
    print(f"{r['batch']:5d} | {r['sampler_tokens_per_s']:13.1f} | {r['uncached_tokens_per_s']:14.1f} | "
          f"{r['ratio_vs_uncached']:10.2f} | {r.get('transformers_tokens_per_s', float('nan')):18.1f} | "
          f"{r.get('ratio_vs_transformers', float('nan')):.2f}")


if __name__ == "__main__":
  main()
