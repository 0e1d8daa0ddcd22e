"""Forward-pass FLOP/s of a Gemma config over the measured matmul peak of this process.

  python benchmarks/forward_flops.py --config=gemma3_270m --batch=4 --seq_len=512

Times (1) a jitted matmul (XLA, and torch when installed) and (2) the jitted
forward pass (hidden states and logits at every position) in the same dtype,
and prints achieved FLOP/s / peak. FLOPs are the model's useful FLOPs
(causal, windowed attention), not the masked work of dense attention.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import matmul_peak  # noqa: E402
from swirl_jax.models import init_model, model_config  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="gemma3_270m")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()

  config = model_config(args.config, dtype=args.dtype, param_dtype=args.dtype)
  model = init_model(config)
  tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq_len), 1, config.vocab_size)

  @nnx.jit
  def forward(model, tokens):
    return model(tokens)

  seconds = matmul_peak.best_seconds(forward, model, tokens, repeats=3, min_seconds=3.0)
  flops = args.batch * config.forward_flops(args.seq_len)
  achieved = flops / seconds
  # 2048^3 saturates a CPU; an accelerator needs a larger product to reach its peak.
  peak_size = 2048 if jax.default_backend() == "cpu" else 8192
  xla_peak = matmul_peak.xla_matmul_peak(args.dtype, size=peak_size)
  torch_peak = matmul_peak.torch_matmul_peak(args.dtype) if jax.default_backend() == "cpu" else None
  peak, peak_source = max((xla_peak, "xla"), (torch_peak or 0.0, "torch"))
  result = {
      "config": args.config, "dtype": args.dtype, "batch": args.batch, "seq_len": args.seq_len,
      "device": jax.devices()[0].device_kind, "forward_seconds": round(seconds, 4),
      "tokens_per_second": round(args.batch * args.seq_len / seconds, 1),
      "achieved_gflops": round(achieved / 1e9, 2),
      "xla_matmul_peak_gflops": round(xla_peak / 1e9, 2),
      "torch_matmul_peak_gflops": None if torch_peak is None else round(torch_peak / 1e9, 2),
      "ratio_to_peak": round(achieved / peak, 3), "peak_source": peak_source, "peak_matmul_size": peak_size,
  }
  print(json.dumps(result, indent=1))
  print(f"forward {args.config} {args.dtype}: {achieved / 1e9:.1f} GFLOP/s = "
        f"{achieved / peak:.2f} x the {peak_source} matmul peak ({peak / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
  main()
