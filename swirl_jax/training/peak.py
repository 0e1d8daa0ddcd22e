"""The device's own matmul peak, measured in-process: the denominator of MFU."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def best_seconds(fn, *args, repeats: int = 5, min_seconds: float = 0.5) -> float:
  """Best wall time of one call of `fn(*args)` (compiled and warmed up first)."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    calls, start = 0, time.perf_counter()
    while True:
      jax.block_until_ready(fn(*args))
      calls += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds / repeats:
        break
    best = min(best, elapsed / calls)
  return best


def xla_matmul_peak(dtype: str = "float32", size: int | None = None) -> float:
  """FLOP/s of a jitted size^3 matmul in `dtype` (2048 on CPU, 8192 on accelerators)."""
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
  return 2 * size**3 / best_seconds(jax.jit(jnp.matmul), a, b)
