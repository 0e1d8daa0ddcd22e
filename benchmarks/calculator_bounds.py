"""The calculator's worst case on hostile input against ordinary arithmetic, in one run.

  python benchmarks/calculator_bounds.py

Times every hostile input of tests/test_calculator.py (best of 5 each) and a
set of ordinary expressions, and prints the slowest hostile call, its ratio to
the mean ordinary call, and whether every hostile call stayed under 100 ms.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swirl_jax.environment.calculator import Calculator  # noqa: E402
from tests.test_calculator import HOSTILE  # noqa: E402

ORDINARY = ["2 + 3 * 4", "(17 - 5) / 4", "12.5 * 8", "sqrt(144) + 2 ** 10", "round(7 / 3, 2)"] * 4


def best_seconds(calculator, expression, repeats=5):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    calculator.run(expression)
    best = min(best, time.perf_counter() - start)
  return best


def main():
  calculator = Calculator()
  hostile = sorted(((best_seconds(calculator, e), e) for e in HOSTILE), key=lambda x: x[0], reverse=True)
  ordinary = sum(best_seconds(calculator, e) for e in ORDINARY) / len(ORDINARY)
  worst, expression = hostile[0]
  print(f"{len(HOSTILE)} hostile inputs; slowest {worst * 1e3:.3f} ms ({str(expression)[:40]!r}...)")
  print(f"ordinary expression: mean {ordinary * 1e3:.3f} ms; slowest hostile / ordinary = {worst / ordinary:.1f}")
  print(f"every hostile call under 100 ms: {worst < 0.1}")


if __name__ == "__main__":
  main()
