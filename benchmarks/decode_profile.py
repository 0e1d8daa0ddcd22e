"""Where a decode step's time goes: the step and its parts, each jitted and timed alone.

  python benchmarks/decode_profile.py --batches=1,8,32 --span=128

Gemma 3 270M (the embedded weights, fp32), rows holding `span` - 16 tokens (attention reads `span`
slots of a global layer, a sliding-window layer's ring up to the same). Parts: the 18 layers for one
token (`Transformer.extend`), the unembedding against the 262,144 x 640 table (`logits_at`),
choosing the token and its log-prob (`choose_tokens`, greedy); and the whole step as the sampler's
decode loop runs it. Each is the best of several calls (`peak.best_seconds`); the parts' sum against
the step shows what fusing across them gains or loses. Also prints the unembedding's GFLOP/s
against the fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--span", type=int, default=128)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from swirl_jax.checkpoints import embedded
  from swirl_jax.models.transformer import KVCache
  from swirl_jax.sampling.sampler import choose_tokens
  from swirl_jax.training.peak import best_seconds, xla_matmul_peak

  print(f"device: {jax.devices()[0].device_kind}")
  peak = xla_matmul_peak("float32")
  model, _ = embedded.load_gemma3_270m()
  config = model.config
  graphdef, params = nnx.split(model)
  span = args.span

  def layers(params, cache, token_B):
    m = nnx.merge(graphdef, params)
    hidden, cache = m.extend(token_B[:, None], cache, jnp.ones_like(token_B), span)
    return hidden[:, 0], cache

  def logits(params, hidden_BxD):
    return nnx.merge(graphdef, params).logits_at(hidden_BxD)

  def choose(logits_BxV, keys_B):
    return choose_tokens(logits_BxV, keys_B, 0.0, 0, 1.0)

  def step(params, cache, hidden_BxD, keys_B):
    m = nnx.merge(graphdef, params)
    token_B, logprob_B = choose_tokens(m.logits_at(hidden_BxD), keys_B, 0.0, 0, 1.0)
    hidden, cache = m.extend(token_B[:, None], cache, jnp.ones_like(token_B), span)
    return hidden[:, 0], cache, logprob_B

  def zeros_cache(batch):
    cache = KVCache.zeros(config, batch, span, window_slots=config.sliding_window + 16)
    return cache.replace(length_B=jnp.full((batch,), span - 16, jnp.int32))

  def best_in_place(call, cache, repeats: int = 8) -> float:
    """Best time of `cache = call(cache)`: the cache donated, updated in place as in the decode loop
    (each call appends a token; lengths are reset so they stay at span - 16)."""
    cache = jax.block_until_ready(call(cache))
    best = float("inf")
    for _ in range(repeats):
      cache = cache.replace(length_B=jnp.full_like(cache.length_B, span - 16))
      start = time.perf_counter()
      cache = jax.block_until_ready(call(cache))
      best = min(best, time.perf_counter() - start)
    return best

  for batch in [int(b) for b in args.batches.split(",")]:
    token_B = jnp.asarray(np.arange(batch) + 100, jnp.int32)
    hidden_BxD = jnp.asarray(np.random.default_rng(0).normal(size=(batch, config.embed_dim)), jnp.float32)
    keys_B = jax.random.split(jax.random.key(0), batch)
    logits_BxV = jax.jit(logits)(params, hidden_BxD)
    layers_jit = jax.jit(layers, donate_argnums=1)
    step_jit = jax.jit(step, donate_argnums=1)
    seconds = {
        "layers": best_in_place(lambda c: layers_jit(params, c, token_B)[1], zeros_cache(batch)),
        "unembedding": best_seconds(jax.jit(logits), params, hidden_BxD),
        "choose_token": best_seconds(jax.jit(choose), logits_BxV, keys_B),
        "whole_step": best_in_place(lambda c: step_jit(params, c, hidden_BxD, keys_B)[1], zeros_cache(batch)),
    }
    parts = seconds["layers"] + seconds["unembedding"] + seconds["choose_token"]
    unembed_flops = 2 * batch * config.embed_dim * config.vocab_size
    print(json.dumps({"batch": batch, "span": span, **{f"{k}_ms": round(v * 1e3, 2) for k, v in seconds.items()},
                      "parts_sum_ms": round(parts * 1e3, 2),
                      "layers_share": round(seconds["layers"] / seconds["whole_step"], 2),
                      "unembedding_share": round(seconds["unembedding"] / seconds["whole_step"], 2),
                      "unembedding_of_peak": round(unembed_flops / seconds["unembedding"] / peak, 2),
                      "matmul_peak_GFLOPs": round(peak / 1e9, 1)}))


if __name__ == "__main__":
  main()
