"""The machine's own matmul peak, measured in-process: the denominator of every ratio."""

from __future__ import annotations

import time

from swirl_jax.training.peak import best_seconds, xla_matmul_peak  # noqa: F401  (re-exported)


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
