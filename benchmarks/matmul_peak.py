"""The machine's own matmul peak, measured in-process: the denominator of every ratio."""

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


def xla_matmul_peak(dtype: str = "float32", size: int = 2048) -> float:
  """FLOP/s of a jitted size x size x size matmul in `dtype` on the default device."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
  seconds = best_seconds(jax.jit(jnp.matmul), a, b)
  return 2 * size**3 / seconds


def torch_matmul_peak(dtype: str = "float32", size: int = 2048) -> float | None:
  """The same matmul through torch (often faster on CPU); None without torch."""
  try:
    import torch
  except ImportError:
    return None
  a = torch.randn(size, size).to(getattr(torch, dtype))
  b = torch.randn(size, size).to(getattr(torch, dtype))
  a @ b
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best
