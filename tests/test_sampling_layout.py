"""The sampling layout: the sampler's own mesh and copy of the params samples what the training
layout samples, forks and prefills a few rows per shard of rows, and trains the same online."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from swirl_jax import partitioning
from swirl_jax.data import trajectory_io
from swirl_jax.models import init_model, model_config
from swirl_jax.sampling.sampler import Sampler, SamplingConfig, row_key
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.training import online
from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer
from tests.test_losses import FirstTokenScorer

SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=10)
# fp32 copies, so that the two layouts can be compared to 1e-5 (bf16 is the layout's default).
LAYOUT = partitioning.SamplingLayout(copy_params=True, data=-1, fsdp=1, tensor=2, param_dtype="float32")


def _layout(on_mesh: bool) -> partitioning.SamplingLayout:
  return LAYOUT if on_mesh else dataclasses.replace(LAYOUT, tensor=1)  # one device: a 1x1x1 mesh


def _placed_model(on_mesh: bool, seed: int = 11):
  model, mesh = init_model(model_config("tiny"), seed=seed), None
  if on_mesh:
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    model = partitioning.shard_model(model, mesh, partitioning.DEFAULT_RULES)
  return model, mesh


def _contexts(count: int):
  rng = np.random.default_rng(5)
  return [rng.integers(2, 512, n).tolist() for n in rng.integers(3, 30, count)]


@pytest.mark.parametrize("on_mesh", [False, True])
def test_the_sampling_layout_samples_what_the_training_layout_samples(on_mesh):
  model, mesh = _placed_model(on_mesh)
  contexts = _contexts(8)
  keys = {row: row_key("layout", row) for row in range(8)}
  turns = {}
  for name, layout in (("training", None), ("sampling", _layout(on_mesh))):
    sampler = Sampler(model, rows=8, capacity=64, buckets=(8, 32), mesh=mesh, layout=layout)
    sampler.append(dict(enumerate(contexts)))
    turns[name] = sampler.generate(range(8), SAMPLED, row_keys=keys)
    turns[name + " again"] = sampler.generate(range(8), SAMPLED, row_keys={r: row_key("more", r) for r in range(8)})
    if layout is not None:
      copy = sampler.params()
      q = copy["blocks"][0]["attn"]["q"][...]
      assert q.sharding.mesh.shape == ({"data": 4, "fsdp": 1, "tensor": 2} if on_mesh else
                                       {"data": 1, "fsdp": 1, "tensor": 1})
      assert q.sharding.mesh.devices.size == (8 if on_mesh else 1)
      assert len(sampler.reshard_seconds) == 1  # made once, kept for the next call
      sampler.release()
      assert q.is_deleted() and sampler._params is None
  for name in ("", " again"):
    for row in range(8):
      assert turns["sampling" + name][row].tokens == turns["training" + name][row].tokens
      np.testing.assert_allclose(turns["sampling" + name][row].logprobs, turns["training" + name][row].logprobs,
                                 atol=1e-5)
  assert len({tuple(t.tokens) for t in turns["training"].values()}) > 4  # the rows drew different samples


def test_a_bf16_copy_is_cast_and_placed_once_per_refresh():
  model, mesh = _placed_model(True)
  sampler = Sampler(model, rows=8, capacity=32, mesh=mesh, layout=partitioning.SamplingLayout(copy_params=True))
  q = sampler.params()["blocks"][0]["attn"]["q"][...]
  # data=8, fsdp=1, tensor=1: every device holds the whole weight, in bf16.
  assert q.dtype == np.dtype("bfloat16") and q.sharding.shard_shape(q.shape) == q.shape
  assert q.sharding.mesh.shape == {"data": 8, "fsdp": 1, "tensor": 1}
  original = nnx.state(model)["blocks"][0]["attn"]["q"][...]
  np.testing.assert_array_equal(np.asarray(q), np.asarray(original.astype("bfloat16")))
  sampler.refresh()
  assert len(sampler.reshard_seconds) == 2 and q.is_deleted()
  # A model loaded straight into the sampling layout (Stage 1, evaluation) is used as it is.
  layout = partitioning.SamplingLayout(copy_params=True, tensor=2, param_dtype="float32")
  straight = partitioning.shard_model(init_model(model_config("tiny"), seed=11), layout.mesh_over(mesh),
                                      partitioning.DEFAULT_RULES)
  direct = Sampler(straight, rows=8, capacity=32, mesh=mesh, layout=layout)
  assert direct.params()["blocks"][0]["attn"]["q"][...] is nnx.state(straight)["blocks"][0]["attn"]["q"][...]
  direct.release()
  assert not nnx.state(straight)["blocks"][0]["attn"]["q"][...].is_deleted()  # the model's own: kept
  assert direct.reshard_seconds == []


def test_each_state_is_prefilled_once_on_a_mesh_whose_rows_are_split():
  """In the sampling layout (rows split over data=4) a state's context is prefilled into one of its
  G rows on its own shard and forked there: each state prefilled once, with what prefilling every
  row samples (the training layout on the 2x2x2 mesh, whose params are split over fsdp too)."""
  model, mesh = _placed_model(True)
  g, contexts = 2, dict(enumerate(_contexts(4)))
  results, samplers = {}, {}
  for name, layout in (("training", None), ("sampling", LAYOUT)):
    sampler = Sampler(model, rows=8, capacity=64, buckets=(8, 32), mesh=mesh, layout=layout)
    results[name] = online.sample_actions(sampler, contexts, g, SAMPLED, key_ids=("count",))
    samplers[name] = sampler
  sampled, trained = samplers["sampling"], samplers["training"]
  assert sampled.row_axes == ("data", "fsdp") and sampled.row_shards == 4 and sampled.rows_per_shard == 2
  assert trained.rows_split and not trained.row_axes
  assert sampled.prefill_tokens == sum(len(c) for c in contexts.values())  # once per state
  assert trained.prefill_tokens == g * sum(len(c) for c in contexts.values())  # once per row
  # 4 of the 8 rows were computed: one of each shard's two, on its shard.
  assert "prefill[32, 4 rows, span 64]" in sampled.compile_seconds, sampled.compile_seconds
  assert "fork" in sampled.compile_seconds and "fork" not in trained.compile_seconds
  for slot in contexts:
    for got, expected in zip(results["sampling"][slot], results["training"][slot]):
      assert got.tokens == expected.tokens
      np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)
  with pytest.raises(ValueError, match="another shard of rows"):
    sampled.fork({1: 2})


@pytest.mark.parametrize("on_mesh", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_online_rl_in_the_sampling_layout_trains_what_the_training_layout_trains(tmp_path, on_mesh):
  params = {}
  for name, layout in (("training", None), ("sampling", _layout(on_mesh))):
    model, mesh = _placed_model(on_mesh, seed=0)
    trainer = Trainer(model, known_trajectories(),
                      TrainConfig(mode="online", steps=3, batch_size=8, sequence_length=128,
                                  checkpoint_dir=str(tmp_path / name)),
                      online_config=OnlineConfig(samples_per_state=2, max_action_tokens=3),
                      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1),
                      scorer=FirstTokenScorer(range(100, 300)), mesh=mesh, sampling_layout=layout)
    for _ in range(3):  # the first update has learning rate 0
      trainer.run_step()
      assert trainer.sampler._params is None  # the copy is freed before each update
    params[name] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]
    assert len(trainer.sampler.reshard_seconds) == (3 if layout is not None else 0)
  initial = [np.asarray(x) for x in jax.tree.leaves(nnx.state(init_model(model_config("tiny"), seed=0)))]
  assert max(float(np.abs(a - b).max()) for a, b in zip(params["training"], initial)) > 1e-3
  for a, b in zip(params["sampling"], params["training"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_stage_1_loads_the_policy_straight_into_the_gin_sampling_layout(tmp_path, tokenizer_gguf):
  """With `SamplingLayout.copy_params` bound, `--mode=generate` loads the policy in the sampling
  mesh and dtype (no training-layout copy, no reshard) and writes what the training layout writes."""
  import gin
  from swirl_jax import generation, main, runtime, tasks
  from swirl_jax.checkpoints import policy
  from swirl_jax.environment import protocol
  from swirl_jax.environment.episode import EpisodeConfig
  os.environ.setdefault("SWIRL_JAX_CACHE", str(tmp_path / "cache"))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
  rt = runtime.Runtime(mesh, partitioning.DEFAULT_RULES)
  task = tasks.build_task("builtin_arithmetic", num_questions=4, template=protocol.PromptTemplate("Solve.", ()),
                          arithmetic_max_steps=2)
  config = generation.GenerateConfig(samples_per_question=2, rows=8, capacity=512, questions_per_shard=4)
  episode = EpisodeConfig(max_action_tokens=8, max_steps=2)
  written = {}
  for name, bindings in (("training", []), ("sampling", ["SamplingLayout.copy_params = True",
                                                         "SamplingLayout.tensor = 2",
                                                         "SamplingLayout.param_dtype = 'float32'"])):
    with gin.unlock_config():
      gin.parse_config(bindings + ["load_policy.source = 'init'", "load_policy.config_name = 'tiny'",
                                   f"load_policy.tokenizer_gguf = '{tokenizer_gguf}'"])
    try:
      model, vocab = main._decoding_policy(rt)
      q = nnx.state(model)["blocks"][0]["attn"]["q"][...]
      assert dict(q.sharding.mesh.shape) == ({"data": 2, "fsdp": 2, "tensor": 2} if name == "training" else
                                             {"data": 4, "fsdp": 1, "tensor": 2})
      out = tmp_path / name
      summary = generation.generate(task, model, vocab, dataclasses.replace(config, output_dir=str(out)), episode,
                                    mesh=mesh, model_id=policy.policy_identity())
      assert summary["trajectories"] == 8
      written[name] = {t.id: t for t in trajectory_io.read_all(str(out))}
      assert json.loads((out / "fingerprint.json").read_text())["sampling"]["copy_params"] == (name == "sampling")
    finally:
      gin.clear_config()
  assert sorted(written["sampling"]) == sorted(written["training"])
  for trajectory_id, expected in written["training"].items():
    got = written["sampling"][trajectory_id]
    assert [s.action_tokens for s in got.steps] == [s.action_tokens for s in expected.steps]
    for a, b in zip(got.steps, expected.steps):
      np.testing.assert_allclose(a.behaviour_logprobs, b.behaviour_logprobs, atol=1e-5)


def test_the_reshard_between_meshes_of_other_tensor_sizes_casts_and_places_every_weight():
  """(1, 4, 2) -> (2, 1, 4): run on the meshes' common refinement (XLA gathers whole arrays when it
  reshards between meshes of other shapes: Gemma 3 27B on v5e-256 did not fit), the result is the
  cast params, placed as the sampling mesh says. What it moves is measured on TPU compiles
  (benchmarks/aot_tpu.py, docs/scaling.md): XLA:CPU moves bf16 as fp32, through other collectives."""
  model, _ = _placed_model(False)
  training = partitioning.make_mesh(partitioning.MeshConfig(1, 4, 2))
  partitioning.shard_model(model, training, partitioning.DEFAULT_RULES)
  sampling = partitioning.SamplingLayout(copy_params=True, data=2, fsdp=1, tensor=4).mesh_over(training)
  common, training_runs, sampling_runs = partitioning.common_mesh(training, sampling)
  assert dict(common.shape) == {"common0": 2, "common1": 2, "common2": 2}
  assert training_runs == {"data": (), "fsdp": ("common0", "common1"), "tensor": ("common2",)}
  assert sampling_runs == {"data": ("common0",), "fsdp": (), "tensor": ("common2", "common1")}
  state = nnx.state(model)
  source = partitioning.state_shardings(state, training, partitioning.DEFAULT_RULES)
  target = partitioning.state_shardings(state, sampling, partitioning.DEFAULT_RULES)
  reshard = partitioning.Reshard(source, target, "bfloat16")
  assert reshard.on_common_mesh
  out = reshard(state)
  for x, y, s in zip(jax.tree.leaves(out), jax.tree.leaves(state), jax.tree.leaves(target)):
    assert x.sharding == s and x.dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype("bfloat16")))
