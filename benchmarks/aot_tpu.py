"""Compile the project's real jitted functions for a TPU topology on this CPU machine, ahead of time.

  pip install --target .extras "libtpu==0.0.42.1"   # the libtpu of the pinned jax 0.10.2 (tpu-aot extra)
  PYTHONPATH=.extras python benchmarks/aot_tpu.py --model=gemma3_1b --topology=v5e:2x2 --mesh=1,2,2 \
      --rows=16 --seq_len=2048 --functions=offline,online,prefill,decode
  # 27B: --scan_layers --query_block=512 --rules=activation_embed:tensor --param_dtype=float32

Nothing is allocated: params, optimizer state, batches and KV caches are abstract
(`nnx.eval_shape`, `jax.ShapeDtypeStruct` with the shardings the project's rules give). For each
function it prints, per chip, the argument / output / temporary bytes against the chip's HBM,
XLA's FLOPs per call, and the compile time. The functions are the ones the trainer and sampler
jit: `training.step.train_step_fn` with the offline objective (reward-weighted likelihood) and the
online one (policy gradient, with a KL reference when --kl), and the sampler's prefill chunk
(`sampler._append`), decode chunk (`sampler._decode_chunk`), and what online sampling runs: a prefill
of one row in G (`sampler._append_rows`, --functions=prefill_rows) and the fork (`sampler._fork`). A program that does not fit the chip
is reported with XLA's message (the GiB of temporaries it needs); docs/scaling.md has the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server here
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from swirl_jax import partitioning  # noqa: E402
from swirl_jax.data import features  # noqa: E402
from swirl_jax.models import init_model, model_config  # noqa: E402
from swirl_jax.models.transformer import KVCache  # noqa: E402
from swirl_jax.sampling import sampler as sampler_lib  # noqa: E402
from swirl_jax.training import objectives  # noqa: E402
from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from swirl_jax.training.step import jit_train_step, train_step_fn  # noqa: E402

# HBM per chip, GiB (public Cloud TPU figures).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32}
GIB = 1024 ** 3


def tpu_devices(topology: str, num_slices: int):
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices).devices


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (nothing allocated)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def report(name: str, lowered, hbm_gib: float | None, scanned: bool = False) -> dict:
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    # XLA refuses a program whose temporaries exceed the chip's HBM; say so and by how much.
    message = str(error).split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0]
    print(f"{name:>8}: DOES NOT FIT: {message} (after {time.perf_counter() - start:.1f} s)", flush=True)
    return {"function": name, "fits": False, "message": message}
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row = {"function": name, "fits": True, "compile_s": seconds, "flops": float(cost.get("flops", 0.0)),
         "argument_gib": memory.argument_size_in_bytes / GIB, "output_gib": memory.output_size_in_bytes / GIB,
         "alias_gib": memory.alias_size_in_bytes / GIB, "temp_gib": memory.temp_size_in_bytes / GIB}
  # Donated outputs alias their arguments: the peak holds arguments, temporaries and new outputs.
  row["total_gib"] = row["argument_gib"] + row["output_gib"] - row["alias_gib"] + row["temp_gib"]
  fits = "" if hbm_gib is None else f" of {hbm_gib} GiB ({row['total_gib'] / hbm_gib:.0%})"
  print(f"{name:>8}: arguments {row['argument_gib']:.2f} GiB, outputs {row['output_gib']:.2f} "
        f"(aliased {row['alias_gib']:.2f}), temporaries {row['temp_gib']:.2f}, total {row['total_gib']:.2f} GiB"
        f"{fits} per chip; {row['flops']:.3g} FLOPs per chip{' (XLA counts the scanned layers once)' if scanned else ''}; compiled in {seconds:.1f} s", flush=True)
  return row


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tiny")
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--num_slices", type=int, default=1)
  parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1: the rest)")
  parser.add_argument("--rows", type=int, default=8, help="training rows per step (online: states x G)")
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--loss_tokens", type=int, default=0, help="loss slots per micro-batch (0: rows x 256)")
  parser.add_argument("--grad_accum", type=int, default=1)
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
  parser.add_argument("--param_dtype", default="", help="params, and with them AdamW's state (default: --dtype)")
  parser.add_argument("--remat", default="full")
  parser.add_argument("--scan_layers", action="store_true", help="one lax.scan over stacked layers")
  parser.add_argument("--query_block", type=int, default=0, help="attention queries per block (0: all)")
  parser.add_argument("--rules", default="", help="logical rule overrides, e.g. activation_embed:tensor")
  parser.add_argument("--kl", action="store_true", help="online step with a KL reference")
  parser.add_argument("--sampler_rows", type=int, default=0, help="(0: --rows)")
  parser.add_argument("--cache_len", type=int, default=0, help="KV cache capacity (0: --seq_len)")
  parser.add_argument("--prefill_chunk", type=int, default=512)
  parser.add_argument("--decode_steps", type=int, default=16)
  parser.add_argument("--samples", type=int, default=4, help="G: prefill_rows prefills rows / G rows")
  parser.add_argument("--functions", default="offline,online,prefill,decode")
  args = parser.parse_args(argv)

  devices = tpu_devices(args.topology, args.num_slices)
  kind = devices[0].device_kind
  hbm = HBM_GIB.get(kind)
  data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices,
                                num_slices=args.num_slices)
  overrides = tuple((name, axis or None) for name, _, axis in (r.partition(":") for r in args.rules.split(",") if r))
  rules = partitioning.logical_rules(overrides)
  config = model_config(args.model, param_dtype=args.param_dtype or args.dtype, dtype=args.dtype, remat=args.remat,
                        scan_layers=args.scan_layers, attention_query_block=args.query_block)
  print(f"{args.model}{' (scanned layers)' if args.scan_layers else ''} on {args.topology} x {args.num_slices} ({len(devices)} chips, {kind}, "
        f"{hbm} GiB HBM each); mesh {dict(mesh.shape)}; rule overrides {dict(overrides)}; query block {args.query_block}; jax {jax.__version__}, libtpu {libtpu_version()}")

  graphdef, params = nnx.split(nnx.eval_shape(lambda: init_model(config)))
  params = abstract(params, partitioning.state_shardings(params, mesh, rules))
  batch_of = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=partitioning.batch_sharding(
      mesh, rules, shape))
  rows = []

  for name in args.functions.split(","):
    if name in ("offline", "online"):
      tx = make_optimizer(OptimizerConfig(), steps=1000)
      opt_shapes = jax.eval_shape(tx.init, params)
      opt_shardings = partitioning.optimizer_state_shardings(tx, opt_shapes, jax.tree.map(lambda x: x.sharding,
                                                                                          params), mesh)
      opt_state = abstract(opt_shapes, opt_shardings)
      objective = (objectives.RewardWeightedLikelihood() if name == "offline"
                   else objectives.PolicyGradient(kl_coef=0.01 if args.kl else 0.0))
      step = jit_train_step(train_step_fn(graphdef, objective, tx, args.grad_accum),
                            (jax.tree.map(lambda x: x.sharding, params), opt_shardings,
                             NamedSharding(mesh, PartitionSpec())))
      batch = {n: batch_of((args.rows, args.seq_len), jnp.dtype(dt)) for n, dt in features.DTYPES.items()}
      reference = jax.tree.map(lambda x: x, params) if name == "online" and args.kl else None  # its own leaves
      slots = args.loss_tokens or (args.rows // args.grad_accum) * 256
      with partitioning.activate(mesh, rules):
        rows.append(report(name, step.lower(params, opt_state, batch, reference, slots), hbm, args.scan_layers))
    elif name in ("prefill", "prefill_rows", "fork", "decode"):
      b = args.sampler_rows or args.rows
      capacity = args.cache_len or args.seq_len
      # As the sampler builds it: window layers in rings of window + decode_steps slots; attention
      # reads the whole capacity (the largest span, the worst case).
      cache_shapes = jax.eval_shape(lambda: KVCache.zeros(
          config, b, capacity, window_slots=config.sliding_window + args.decode_steps))
      cache = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                           cache_shapes, cache_shapes.shardings(mesh, rules))
      hidden = batch_of((b, config.embed_dim), jnp.float32)
      with partitioning.activate(mesh, rules):
        placed = (jax.tree.map(lambda x: x.sharding, cache), hidden.sharding)
        if name == "prefill":
          fn = jax.jit(sampler_lib._append, static_argnums=0, donate_argnums=(2, 3), static_argnames="span")
          lowered = fn.lower(graphdef, params, cache, hidden, batch_of((b, args.prefill_chunk), jnp.int32),
                             batch_of((b,), jnp.int32), span=capacity)
        elif name == "prefill_rows":  # online sampling: each state's context into one row of its G
          fn = jax.jit(sampler_lib._append_rows, static_argnums=0, donate_argnums=(2, 3), out_shardings=placed,
                       static_argnames="span")
          lowered = fn.lower(graphdef, params, cache, hidden, batch_of((b, args.prefill_chunk), jnp.int32),
                             batch_of((b,), jnp.int32), jax.ShapeDtypeStruct((b // args.samples,), jnp.int32),
                             span=capacity)
        elif name == "fork":  # ... then copied into the other G - 1 rows
          fn = jax.jit(sampler_lib._fork, donate_argnums=(0, 1), out_shardings=placed)
          lowered = fn.lower(cache, hidden, batch_of((b,), jnp.int32))
        else:
          fn = jax.jit(sampler_lib._decode_chunk, static_argnums=0, donate_argnums=(2, 3),
                       static_argnames=("steps", "span", "temperature", "top_k", "top_p"))
          lowered = fn.lower(graphdef, params, cache, hidden, batch_of((b,), jnp.bool_), batch_of((b,), jnp.int32),
                             batch_of((b, 2), jnp.uint32), jax.ShapeDtypeStruct((2,), jnp.int32),
                             batch_of((b,), jnp.int32), steps=args.decode_steps, span=capacity, temperature=1.0, top_k=0,
                             top_p=1.0)
        rows.append(report(name, lowered, hbm, args.scan_layers))
    else:
      raise SystemExit(f"--functions: unknown {name!r}; use offline, online, prefill, prefill_rows, fork, decode")
  return rows


def libtpu_version() -> str:
  try:
    from importlib.metadata import version
    return version("libtpu")
  except Exception:  # noqa: BLE001 - a target directory without metadata
    return "unknown"


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
