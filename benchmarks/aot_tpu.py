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
import json
import os
import sys
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server here
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiles only: several may run at once
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from swirl_jax import compiled_cost, multihost, partitioning  # noqa: E402
from swirl_jax.data import features  # noqa: E402
from swirl_jax.models import init_model, model_config  # noqa: E402
from swirl_jax.models.transformer import KVCache  # noqa: E402
from swirl_jax.sampling import sampler as sampler_lib  # noqa: E402
from swirl_jax.training import objectives  # noqa: E402
from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from swirl_jax.training.step import jit_train_step, train_step_fn  # noqa: E402

GIB = compiled_cost.GIB


def tpu_devices(topology: str, num_slices: int):
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices).devices


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (nothing allocated)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def chip_bytes(tree) -> float:
  """Bytes of one chip's shards of a tree of sharded ShapeDtypeStructs."""
  return float(sum(np.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def report(name: str, lowered, chip: compiled_cost.Chip | None, scanned: bool = False, per: int = 1,
           unit: str = "call", flops: float | None = None, hbm_bytes: float | None = None) -> dict:
  """Compiles `lowered`; prints and returns its per-chip memory, XLA's FLOPs and bytes accessed, its
  collective bytes by kind weighted by loop trips, and (given this program's FLOPs and HBM bytes per
  `unit`, `per` units a call) its lower bounds per unit."""
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
  traffic = compiled_cost.collective_traffic(compiled.as_text())
  row = {"function": name, "fits": True, "compile_s": seconds, "flops": float(cost.get("flops", 0.0)),
         "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
         "argument_gib": memory.argument_size_in_bytes / GIB, "output_gib": memory.output_size_in_bytes / GIB,
         "alias_gib": memory.alias_size_in_bytes / GIB, "temp_gib": memory.temp_size_in_bytes / GIB,
         "collective_bytes": dict(traffic.bytes_by_kind), "collective_bytes_per_" + unit: traffic.total_bytes / per,
         "received_bytes": dict(traffic.received_by_kind), "received_bytes_per_" + unit: traffic.received_bytes / per,
         "unknown_trip_loops": traffic.unknown_trip_loops}
  # Donated outputs alias their arguments: the peak holds arguments, temporaries and new outputs.
  row["total_gib"] = row["argument_gib"] + row["output_gib"] - row["alias_gib"] + row["temp_gib"]
  hbm_gib = chip.hbm_bytes / GIB if chip else None
  fits = "" if hbm_gib is None else f" of {hbm_gib:.0f} GiB ({row['total_gib'] / hbm_gib:.0%})"
  print(f"{name:>8}: arguments {row['argument_gib']:.2f} GiB, outputs {row['output_gib']:.2f} "
        f"(aliased {row['alias_gib']:.2f}), temporaries {row['temp_gib']:.2f}, total {row['total_gib']:.2f} GiB"
        f"{fits} per chip; {row['flops']:.3g} FLOPs per chip{' (XLA counts the scanned layers once)' if scanned else ''}; compiled in {seconds:.1f} s", flush=True)
  print(f"{'':>8}  collectives per chip: {compiled_cost.describe_traffic(traffic, per, unit)} (loops weighted by "
        f"their trips{'; ' + str(traffic.unknown_trip_loops) + ' loop(s) of unknown trips counted once' if traffic.unknown_trip_loops else ''}); "
        f"XLA's bytes accessed {row['bytes_accessed'] / GIB:.3g} GiB per call (loop bodies once)", flush=True)
  if chip is not None and flops is not None and hbm_bytes is not None:
    bound = compiled_cost.bounds(chip, flops, hbm_bytes, traffic.received_bytes / per)
    row.update(compute_s=bound.compute_s, hbm_s=bound.hbm_s, ici_s=bound.ici_s, lower_bound_s=bound.lower_bound_s,
               limited_by=bound.limited_by)
    print(f"{'':>8}  lower bounds per {unit} on {chip.name}: compute {bound.compute_s * 1e3:.3f} ms, HBM "
          f"{bound.hbm_s * 1e3:.3f} ms, ICI {bound.ici_s * 1e3:.3f} ms: at least {bound.lower_bound_s * 1e3:.3f} ms "
          f"({bound.limited_by}; {bound.lower_bound_s / bound.hbm_s:.2f}x the HBM bound)", flush=True)
  return row


def param_count(config) -> int:
  shapes = nnx.state(nnx.eval_shape(lambda: init_model(config)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))


def decode_flops(config, rows: int, span: int) -> float:
  """FLOPs of one decode step for `rows` rows (all chips): every weight once per row (the tied
  embedding as the logits' matmul), attention over `span` slots (a window's on local layers)."""
  attention = sum(4 * config.num_heads * config.head_dim * (span if kind == "global" else min(span, config.sliding_window))
                  for kind in config.layer_types)
  return rows * (2 * param_count(config) + attention)


def parse_mesh(text: str) -> tuple[int, int, int]:
  data, fsdp, tensor = (int(x) for x in text.split(","))
  return data, fsdp, tensor


class Compiler:
  """The project's jitted functions lowered for one model on one slice, nothing allocated."""

  def __init__(self, args, devices, config, rules):
    self.args, self.devices, self.config, self.rules = args, devices, config, rules
    self.chip = compiled_cost.CHIPS.get(devices[0].device_kind)
    self.training_mesh = self.mesh_of(parse_mesh(args.mesh))
    self.graphdef, shapes = nnx.split(nnx.eval_shape(lambda: init_model(config)))
    self.param_shapes = shapes
    self.params = abstract(shapes, partitioning.state_shardings(shapes, self.training_mesh, rules))
    self.tx = make_optimizer(OptimizerConfig(), steps=1000)
    opt_shapes = jax.eval_shape(self.tx.init, self.params)
    self.opt_shardings = partitioning.optimizer_state_shardings(
        self.tx, opt_shapes, jax.tree.map(lambda x: x.sharding, self.params), self.training_mesh)
    self.opt_state = abstract(opt_shapes, self.opt_shardings)
    # What stays on the chips while the sampler runs: params, AdamW's moments, the KL reference.
    self.training_state_bytes = chip_bytes(self.params) * (2 if args.kl else 1) + chip_bytes(self.opt_state)

  def mesh_of(self, shape):
    data, fsdp, tensor = shape
    return partitioning.make_mesh(partitioning.MeshConfig(data=data, fsdp=fsdp, tensor=tensor), self.devices,
                                  num_slices=self.args.num_slices)

  def sampling_params(self, layout: partitioning.SamplingLayout):
    """The sampler's copy in `layout` (its mesh over the training mesh's devices, its dtype)."""
    mesh = layout.mesh_over(self.training_mesh)
    shardings = partitioning.state_shardings(self.param_shapes, mesh, self.rules)
    cast = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(layout.param_dtype)
                                                       if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype),
                        self.param_shapes)
    return mesh, abstract(cast, shardings)

  def train_step(self, name: str):
    args = self.args
    objective = (objectives.RewardWeightedLikelihood() if name == "offline"
                 else objectives.PolicyGradient(kl_coef=0.01 if args.kl else 0.0))
    mesh = self.training_mesh
    step = jit_train_step(train_step_fn(self.graphdef, objective, self.tx, args.grad_accum),
                          (jax.tree.map(lambda x: x.sharding, self.params), self.opt_shardings,
                           NamedSharding(mesh, PartitionSpec())))
    batch = {n: jax.ShapeDtypeStruct((args.rows, args.seq_len), jnp.dtype(dt), sharding=partitioning.batch_sharding(
        mesh, self.rules, (args.rows, args.seq_len))) for n, dt in features.DTYPES.items()}
    reference = jax.tree.map(lambda x: x, self.params) if name == "online" and args.kl else None  # its own leaves
    slots = args.loss_tokens or (args.rows // args.grad_accum) * 256
    tokens = args.rows * args.seq_len
    # The update at least: forward and backward of every weight for every token (6 N), and the
    # reference's forward with a KL term (2 N); attention and remat add to it.
    flops = tokens * param_count(self.config) * (8 if reference is not None else 6) / len(self.devices)
    with partitioning.activate(mesh, self.rules):
      return report(name, step.lower(self.params, self.opt_state, batch, reference, slots), self.chip,
                    args.scan_layers, flops=flops, hbm_bytes=chip_bytes(self.params) * 2 + chip_bytes(self.opt_state) * 2)

  def sampler_function(self, name: str, layout: partitioning.SamplingLayout | None):
    """A sampler program in the training layout (layout None) or in a sampling layout."""
    args, config = self.args, self.config
    mesh, params = (self.training_mesh, self.params) if layout is None else self.sampling_params(layout)
    label = name if layout is None else f"{name} (sampling {','.join(str(v) for v in mesh.shape.values())})"
    b = args.sampler_rows or args.rows
    capacity = args.cache_len or args.seq_len
    batch_of = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=partitioning.batch_sharding(
        mesh, self.rules, shape))
    # As the sampler builds it: window layers in rings of window + decode_steps slots; attention
    # reads the whole capacity (the largest span, the worst case).
    cache_shapes = jax.eval_shape(lambda: KVCache.zeros(
        config, b, capacity, window_slots=config.sliding_window + args.decode_steps))
    cache = abstract(cache_shapes, cache_shapes.shardings(mesh, self.rules))
    hidden = batch_of((b, config.embed_dim), jnp.float32)
    placed = (jax.tree.map(lambda x: x.sharding, cache), hidden.sharding)
    axes = sampler_lib.row_axes(mesh, self.rules, b, jax.tree.map(lambda x: x.sharding, params))
    fork = sampler_lib.fork_per_shard(mesh, axes, placed[0]) if axes else sampler_lib._fork
    append_rows = (sampler_lib.append_rows_per_shard(mesh, self.rules, axes, placed[0]) if axes
                   else sampler_lib._append_rows)
    state_bytes = chip_bytes(params) + chip_bytes(cache)
    with partitioning.activate(mesh, self.rules):
      if name == "prefill":
        fn = jax.jit(sampler_lib._append, static_argnums=0, donate_argnums=(2, 3), static_argnames="span")
        lowered = fn.lower(self.graphdef, params, cache, hidden, batch_of((b, args.prefill_chunk), jnp.int32),
                           batch_of((b,), jnp.int32), span=capacity)
        row = report(label, lowered, self.chip, args.scan_layers)
      elif name == "prefill_rows":  # online sampling: each state's context into one row of its G
        fn = jax.jit(append_rows, static_argnums=0, donate_argnums=(2, 3), out_shardings=placed,
                     static_argnames="span")
        rows_R = (batch_of((b // args.samples,), jnp.int32) if axes else
                  jax.ShapeDtypeStruct((b // args.samples,), jnp.int32))
        lowered = fn.lower(self.graphdef, params, cache, hidden, batch_of((b, args.prefill_chunk), jnp.int32),
                           batch_of((b,), jnp.int32), rows_R, span=capacity)
        row = report(label, lowered, self.chip, args.scan_layers)
      elif name == "fork":  # ... then copied into the other G - 1 rows
        fn = jax.jit(fork, donate_argnums=(0, 1), out_shardings=placed)
        row = report(label, fn.lower(cache, hidden, batch_of((b,), jnp.int32)), self.chip)
      else:
        fn = jax.jit(sampler_lib._decode_chunk, static_argnums=0, donate_argnums=(2, 3),
                     static_argnames=("steps", "span", "temperature", "top_k", "top_p"))
        lowered = fn.lower(self.graphdef, params, cache, hidden, batch_of((b,), jnp.bool_), batch_of((b,), jnp.int32),
                           batch_of((b, 2), jnp.uint32), jax.ShapeDtypeStruct((2,), jnp.int32),
                           batch_of((b,), jnp.int32), steps=args.decode_steps, span=capacity, temperature=1.0, top_k=0,
                           top_p=1.0)
        # Per decode step: every weight and the whole cache read once (a lower bound on HBM traffic).
        row = report(label, lowered, self.chip, args.scan_layers, per=args.decode_steps, unit="decode step",
                     flops=decode_flops(config, b, capacity) / len(self.devices), hbm_bytes=state_bytes)
        if row.get("fits"):
          row["weight_bytes"] = chip_bytes(params)
          row["gathered_share"] = row["collective_bytes"]["all-gather"] / args.decode_steps / chip_bytes(params)
          print(f"{'':>8}  all-gathered per decode step: {row['gathered_share']:.3%} of the chip's weight bytes "
                f"({chip_bytes(params) / GIB:.2f} GiB)", flush=True)
    row["layout"] = "training" if layout is None else "sampling"
    row["mesh"] = dict(mesh.shape)
    # A row's host work (stop strings, tools, judging) runs on one host. Where a shard of rows spans
    # hosts, the sampler owns rows as the training mesh lays them out and moves each call's inputs
    # and outputs between the two layouts on device: that program's traffic is counted here.
    row["rows_on_one_host"] = multihost.rows_held_alone(partitioning.batch_sharding(mesh, self.rules, (b,)), b)
    if not row["rows_on_one_host"] and name == "decode" and row.get("fits"):
      out_bytes, in_bytes = self.staging(mesh, b)
      row["staging_bytes_per_decode_step"] = out_bytes / args.decode_steps
      row["staging_bytes_per_append_chunk"] = in_bytes
      print(f"{'':>8}  a shard of rows spans {mesh.shape['tensor'] * mesh.shape['fsdp']} chips, more than a host's "
            f"{sum(d.process_index == 0 for d in self.devices)}: rows are owned as the training mesh lays them out; "
            f"a chip receives {out_bytes / 2**10:.1f} KiB of a decode chunk's outputs for their owners and "
            f"{in_bytes / 2**10:.1f} KiB of an append chunk's tokens from them", flush=True)
    if row.get("fits"):
      # The sampler's program beside what the trainer keeps (its params are the sampler's own in the
      # training layout, so they count once).
      shared = chip_bytes(params) if layout is None else 0.0
      row["with_training_state_gib"] = row["total_gib"] + (self.training_state_bytes - shared) / GIB
      if self.chip is not None:
        share = row["with_training_state_gib"] * GIB / self.chip.hbm_bytes
        row["hbm_share"] = share
        print(f"{'':>8}  with the training state ({self.training_state_bytes / GIB:.2f} GiB): "
              f"{row['with_training_state_gib']:.2f} GiB, {share:.0%} of HBM", flush=True)
    return row

  def staging(self, mesh, b: int) -> tuple[float, float]:
    """Per-chip bytes received by the programs that move a decode chunk's outputs from the sampling
    mesh's rows to their owners' (the training mesh's), and an append chunk's tokens the other way,
    as `Sampler._get` and `Sampler._put` do."""
    steps, chunk = self.args.decode_steps, self.args.prefill_chunk
    outputs = [((b, steps), jnp.int32), ((b, steps), jnp.float32), ((b,), jnp.bool_), ((b,), jnp.int32),
               ((b,), jnp.int32), ((b,), jnp.int32)]
    inputs = [((b, chunk), jnp.int32), ((b,), jnp.int32)]
    # The two meshes may order the devices differently (the sampler moves with `jax.device_put`);
    # one program writes both shardings on their common mesh.
    common, sampling_runs, training_runs = partitioning.common_mesh(mesh, self.training_mesh)
    on_common = lambda m, runs, shape: NamedSharding(common, partitioning.spec_on_common(
        partitioning.batch_sharding(m, self.rules, shape).spec, runs))

    def received(shapes, source, source_runs, target, target_runs):
      arrays = [jax.ShapeDtypeStruct(shape, dtype, sharding=on_common(source, source_runs, shape))
                for shape, dtype in shapes]
      targets = tuple(on_common(target, target_runs, shape) for shape, _ in shapes)
      compiled = jax.jit(lambda *xs: xs, out_shardings=targets).lower(*arrays).compile()
      return float(compiled_cost.collective_traffic(compiled.as_text()).received_bytes)
    return (received(outputs, mesh, sampling_runs, self.training_mesh, training_runs),
            received(inputs, self.training_mesh, training_runs, mesh, sampling_runs))

  def reshard(self, layout: partitioning.SamplingLayout):
    """The once-per-online-step program that casts the trainer's params and lays them out for the
    sampler; what it moves per chip against one copy of the weights."""
    mesh, target = self.sampling_params(layout)
    fn = partitioning.Reshard(jax.tree.map(lambda x: x.sharding, self.params),
                                 jax.tree.map(lambda x: x.sharding, target), layout.param_dtype)
    copy = chip_bytes(target)
    row = report("reshard", fn.lower(self.params), self.chip, flops=0.0,
                 hbm_bytes=chip_bytes(self.params) + copy)
    if not row.get("fits"):
      return row
    moved, results = sum(row["received_bytes"].values()), sum(row["collective_bytes"].values())
    row["copies_moved"] = moved / copy
    row["copies_at_result_size"] = results / copy
    print(f"{'':>8}  a chip receives {moved / GIB:.2f} GiB: {row['copies_moved']:.2f} x the chip's copy of the "
          f"weights ({copy / GIB:.2f} GiB); the collectives' results hold {row['copies_at_result_size']:.2f} x",
          flush=True)
    return row


def online_step_bound(rows: dict, compiler: Compiler, layout_name: str) -> dict:
  """The lower bound of one online step: (reshard,) prefill of each state once, `action_tokens`
  decode steps, the update."""
  args, chip = compiler.args, compiler.chip
  b = args.sampler_rows or args.rows
  decode = rows[f"decode/{layout_name}"]
  prefill_flops = 2 * param_count(compiler.config) * (b // args.samples) * args.context / len(compiler.devices)
  parts = {"reshard": rows["reshard"]["lower_bound_s"] if layout_name != "training" else 0.0,
           "prefill": max(prefill_flops / chip.bf16_flops, decode["weight_bytes"] / chip.hbm_bytes_per_s),
           "decode": args.action_tokens * decode["lower_bound_s"],
           "update": rows["online"]["lower_bound_s"]}
  total = sum(parts.values())
  print(f"online step ({layout_name} layout): at least {total * 1e3:.4g} ms = "
        + ", ".join(f"{k} {v * 1e3:.4g} ms" for k, v in parts.items()), flush=True)
  return {"layout": layout_name, "total_s": total, **{k + "_s": v for k, v in parts.items()}}


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
  parser.add_argument("--functions", default="offline,online,prefill,decode",
                      help="offline, online, prefill, prefill_rows, fork, decode, reshard")
  parser.add_argument("--sampling_mesh", default="",
                      help="data,fsdp,tensor of a sampling layout: the sampler's functions compile in it too")
  parser.add_argument("--sampling_param_dtype", default="bfloat16")
  parser.add_argument("--propose", default="",
                      help="tensor sizes to try as sampling layouts (data = the rest, fsdp = 1), e.g. 4,8,16: "
                           "the decode chunk is compiled in each and the fastest that fits is proposed")
  parser.add_argument("--headroom", type=float, default=0.10, help="HBM a proposal leaves free")
  parser.add_argument("--context", type=int, default=2048, help="tokens of a state's context (online step bound)")
  parser.add_argument("--action_tokens", type=int, default=256, help="decode steps of an action (online step bound)")
  parser.add_argument("--json", default="", help="write the figures here")
  args = parser.parse_args(argv)

  devices = tpu_devices(args.topology, args.num_slices)
  kind = devices[0].device_kind
  chip = compiled_cost.CHIPS.get(kind)
  overrides = tuple((name, axis or None) for name, _, axis in (r.partition(":") for r in args.rules.split(",") if r))
  rules = partitioning.logical_rules(overrides)
  config = model_config(args.model, param_dtype=args.param_dtype or args.dtype, dtype=args.dtype, remat=args.remat,
                        scan_layers=args.scan_layers, attention_query_block=args.query_block)
  compiler = Compiler(args, devices, config, rules)
  hbm = chip.hbm_bytes / GIB if chip else None
  print(f"{args.model}{' (scanned layers)' if args.scan_layers else ''} on {args.topology} x {args.num_slices} ({len(devices)} chips, {kind}, "
        f"{hbm:.0f} GiB HBM each); mesh {dict(compiler.training_mesh.shape)}; rule overrides {dict(overrides)}; query block {args.query_block}; jax {jax.__version__}, libtpu {libtpu_version()}")
  layout = None
  if args.sampling_mesh:
    data, fsdp, tensor = parse_mesh(args.sampling_mesh)
    layout = partitioning.SamplingLayout(copy_params=True, data=data, fsdp=fsdp, tensor=tensor,
                                         param_dtype=args.sampling_param_dtype)
  rows, results = {}, []
  for name in args.functions.split(","):
    if name in ("offline", "online"):
      rows[name] = compiler.train_step(name)
    elif name in ("prefill", "prefill_rows", "fork", "decode"):
      rows[f"{name}/training"] = compiler.sampler_function(name, None)
      if layout is not None:
        rows[f"{name}/sampling"] = compiler.sampler_function(name, layout)
    elif name == "reshard":
      if layout is None:
        raise SystemExit("--functions=reshard needs --sampling_mesh")
      rows["reshard"] = compiler.reshard(layout)
    else:
      raise SystemExit(f"--functions: unknown {name!r}; use offline, online, prefill, prefill_rows, fork, decode, "
                       "reshard")
  results += [{"key": k, **v} for k, v in rows.items()]
  if chip is not None and "online" in rows and rows["online"].get("fits") and "decode/training" in rows:
    for layout_name in ("training", "sampling"):
      if f"decode/{layout_name}" in rows and (layout_name == "training" or "reshard" in rows):
        results.append({"key": f"online step/{layout_name}", **online_step_bound(rows, compiler, layout_name)})
  if args.propose:
    candidates = propose(compiler, [int(t) for t in args.propose.split(",")], args)
    results += candidates
    best = next((c for c in candidates if c.get("proposed")), None)
    if best is not None and chip is not None and "online" in rows and rows["online"].get("fits"):
      # The whole online step in the proposed layout: its own reshard, its decode.
      proposed = partitioning.SamplingLayout(copy_params=True, data=len(devices) // best["tensor"], fsdp=1,
                                             tensor=best["tensor"], param_dtype=args.sampling_param_dtype)
      chosen = {"online": rows["online"], "decode/proposed": best, "reshard": compiler.reshard(proposed)}
      results.append({"key": "online step/proposed", **online_step_bound(chosen, compiler, "proposed")})
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=str)
  return results


def propose(compiler: Compiler, tensor_sizes, args) -> list[dict]:
  """Compiles the decode chunk in each candidate sampling layout (fsdp 1, the given tensor sizes) and
  proposes the one with the smallest lower bound per decode step that fits beside the training
  state with the headroom left."""
  chips = len(compiler.devices)
  candidates = []
  for tensor in tensor_sizes:
    if chips % tensor:
      continue
    layout = partitioning.SamplingLayout(copy_params=True, data=chips // tensor, fsdp=1, tensor=tensor,
                                         param_dtype=args.sampling_param_dtype)
    row = compiler.sampler_function("decode", layout)
    fits = row.get("fits") and row.get("hbm_share", 1.0) <= 1.0 - args.headroom
    candidates.append({"key": f"proposal/tensor={tensor}", "tensor": tensor, "fits_with_headroom": bool(fits), **row})
  fitting = [c for c in candidates if c["fits_with_headroom"]]
  if not fitting:
    print("proposal: no candidate sampling layout fits beside the training state; sample in the training layout",
          flush=True)
    return candidates
  best = min(fitting, key=lambda c: c["lower_bound_s"])
  best["proposed"] = True
  print(f"proposal: SamplingLayout.copy_params=True, data={chips // best['tensor']}, fsdp=1, tensor={best['tensor']}: "
        f"at least {best['lower_bound_s'] * 1e3:.3f} ms per decode step, {best['hbm_share']:.0%} of HBM with the "
        "training state", flush=True)
  return candidates


def libtpu_version() -> str:
  try:
    from importlib.metadata import version
    return version("libtpu")
  except Exception:  # noqa: BLE001 - a target directory without metadata
    return "unknown"


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
