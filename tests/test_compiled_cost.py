"""Collective bytes read from compiled HLO, weighted by the trips of the loops around them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from swirl_jax import compiled_cost, partitioning

SYNTHETIC = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %limit = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %limit), direction=LT
}

%gather_piece (x: f32[2]) -> f32[8] {
  %x = f32[2] parameter(0)
  ROOT %all-gather.2 = f32[8]{0} all-gather(%x), channel_id=7, replica_groups={}, dimensions={0}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[2] constant({1, 2})
  %all-gather.1 = bf16[4,16]{1,0} all-gather(%x), channel_id=7, replica_groups={}, dimensions={0}
  %f = f32[8] fusion(%x), kind=kLoop, calls=%gather_piece
  %r = f32[8] all-reduce(%f), channel_id=9, to_apply=%add
  ROOT %t = (s32[], f32[8]) tuple(%i, %r)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8] parameter(0)
  %zero = s32[] constant(2)
  %init = (s32[], f32[8]) tuple(%zero, %x)
  %loop = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  %cp = f32[16]{0} collective-permute(%x), channel_id=11, source_target_pairs={{0,1}}
  ROOT %out = f32[8] get-tuple-element(%loop), index=1
}
"""


def test_collectives_are_weighted_by_loop_trips_and_counted_once_per_channel():
  traffic = compiled_cost.collective_traffic(SYNTHETIC)
  # 12 - 2 = 10 trips; channel 7's two pieces count once (its larger result, 4 x 16 bf16 = 128 bytes).
  assert traffic.bytes_by_kind["all-gather"] == 10 * 128
  assert traffic.bytes_by_kind["all-reduce"] == 10 * 32
  assert traffic.bytes_by_kind["collective-permute"] == 64
  assert traffic.count_by_kind == {"all-gather": 1, "all-reduce": 1, "reduce-scatter": 0, "collective-permute": 1,
                                   "all-to-all": 0}
  assert traffic.unknown_trip_loops == 0 and traffic.total_bytes == 1280 + 320 + 64


def test_a_real_program_gathering_in_a_loop_is_counted_per_trip():
  """XLA:CPU on 8 devices: a weight split 8 ways and gathered at each of 5 loop steps."""
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=8))
  weight = jax.device_put(jnp.ones((64, 32), jnp.float32), NamedSharding(mesh, PartitionSpec("data")))
  x = jax.device_put(jnp.ones((8, 64), jnp.float32), NamedSharding(mesh, PartitionSpec()))

  def run(weight, x):
    def step(i, carry):
      x, weight = carry
      weight = weight * 1.01  # changes at every trip: its gather cannot leave the loop
      whole = jax.lax.with_sharding_constraint(weight, NamedSharding(mesh, PartitionSpec()))
      return jnp.tanh(x @ whole @ whole.T + i), weight
    return jax.lax.fori_loop(0, 5, step, (x, weight))
  text = jax.jit(run).lower(weight, x).compile().as_text()
  traffic = compiled_cost.collective_traffic(text)
  assert traffic.bytes_by_kind["all-gather"] == 5 * 64 * 32 * 4  # the whole weight (fp32) at each trip
  assert traffic.unknown_trip_loops == 0


def test_bounds_take_the_slowest_resource():
  chip = compiled_cost.CHIPS["TPU v5p"]
  bound = compiled_cost.bounds(chip, flops=459e12, hbm_bytes=2 * 2765e9, ici_bytes=600e9)
  assert (bound.compute_s, bound.hbm_s, bound.ici_s) == pytest.approx((1.0, 2.0, 1.0))
  assert bound.lower_bound_s == pytest.approx(2.0) and bound.limited_by == "HBM"
  assert compiled_cost.array_bytes("(bf16[2,3]{1,0}, s32[4], pred[])") == 12 + 16 + 1
  np.testing.assert_equal(compiled_cost.array_bytes("f32[]"), 4)


def test_what_a_chip_receives_follows_the_collective_and_its_group():
  """The group size from each replica_groups form XLA prints (a TPU compile prints mesh axes), and
  the bytes that arrive from other chips: a chip keeps its own part of a gather."""
  mesh_form = ("%all-to-all = f32[4,1,1024]{2,1,0} all-to-all(%r), channel_id=1, "
               "replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=4], device_ids=([4,4]T(1,0)) {'axis_2'}, "
               "dimensions={0}")
  assert compiled_cost.group_size(mesh_form, 16) == 4
  two_axes = "all-gather(%x), replica_groups=mesh['a'=4,'b'=2,'c'=8] {'a','c'}, dimensions={0}"
  assert compiled_cost.group_size(two_axes, 64) == 32
  assert compiled_cost.group_size("all-gather(%x), replica_groups=[2,4]<=[8], dimensions={0}", 8) == 4
  assert compiled_cost.group_size("all-reduce(%x), replica_groups={{0,1,2},{3,4,5}}, to_apply=%add", 6) == 3
  assert compiled_cost.group_size("all-reduce(%x), replica_groups={}, to_apply=%add", 16) == 16
  assert compiled_cost.group_size("all-reduce(%x), to_apply=%add", 16) is None
  gather = "all-gather(%x), replica_groups=[2,4]<=[8], dimensions={0}"
  assert compiled_cost.received_bytes("all-gather", 400.0, gather, 8) == 300.0
  assert compiled_cost.received_bytes("all-to-all", 400.0, gather, 8) == 300.0
  assert compiled_cost.received_bytes("all-reduce", 400.0, gather, 8) == 600.0
  assert compiled_cost.received_bytes("reduce-scatter", 100.0, gather, 8) == 300.0
  assert compiled_cost.received_bytes("collective-permute", 64.0, "source_target_pairs={{0,0},{1,1}}", 2) == 0.0
  assert compiled_cost.received_bytes("collective-permute", 64.0, "source_target_pairs={{0,1},{1,0}}", 2) == 64.0
  assert compiled_cost.received_bytes("all-gather", 400.0, "all-gather(%x), dimensions={0}", None) == 400.0
  # In a program: the module's partition count stands for `{}` groups.
  traffic = compiled_cost.collective_traffic(SYNTHETIC.replace("HloModule m", "HloModule m, num_partitions=4"))
  assert traffic.received_by_kind["all-gather"] == 10 * 128 * 3 / 4
  assert traffic.received_by_kind["all-reduce"] == 10 * 32  # no groups printed: its result, 2 x (n-1)/n unknown
  assert traffic.received_by_kind["collective-permute"] == 64
