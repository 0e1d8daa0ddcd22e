"""The Stage 2 trainer: jitted steps on the mesh, AdamW, checkpoints, metrics, resume.

Modes: `online` (the paper's objective: G fresh actions per logged state,
sampled with the current params in the same mesh, scored by the judge,
policy-gradient step), `offline` (reward-weighted likelihood of the logged
actions, prefix-shared rows) and `sft` (the logged actions with weight 1: the
paper's SFT baseline).

Everything a step uses is a function of (seed, step): the batch, the sampling
key. A checkpoint holds params, optimizer state, step, seed and data position,
so a run killed at any moment and restarted ends with exactly the params of an
uninterrupted run. A NaN or inf loss stops the run before anything is saved.
A preemption notice (SIGTERM) makes every process save the same step and stop
(`multihost.Preempted`); the same command then resumes.

Multi-host: in online mode each process samples and judges only the states
whose rows it owns and contributes those rows to the global batch
(`jax.make_array_from_process_local_data`); offline, every process lays out the
batch and contributes its rows. Shapes every process must agree on (row
length, loss slots) and the metrics are agreed through small collectives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from tqdm import tqdm

from swirl_jax import multihost, partitioning, provenance, validation
from swirl_jax.data import decomposition, seqio_tasks
from swirl_jax.data.features import INPUT_TOKENS, LOSS_WEIGHTS, SEGMENT_IDS
from swirl_jax.data.trajectory import Trajectory
from swirl_jax.sampling.sampler import Sampler, SamplingConfig
from swirl_jax.training import losses, online, peak
from swirl_jax.training.logprobs import reward_weighted_nll


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  mode: str = "online"  # online | offline | sft
  steps: int = 100
  batch_size: int = 8  # states per step (online) or trajectory rows per step (offline, sft)
  pack_rows: bool = False  # offline, sft: pack whole trajectories into each row (first fit, in data order)
  samples_per_state: int = 4  # G
  baseline: str = "rloo"  # none | rloo
  judge_failures: str = "exclude"  # a sample the judge gave no verdict: exclude it, or score it "zero"
  kl_coef: float = 0.0
  clip_epsilon: float | None = None  # set to use the clipped ratio (with updates_per_batch > 1)
  updates_per_batch: int = 1
  sft_context_weight: float = 0.0  # sft mode: loss weight on context tokens (teaching a model from scratch)
  temperature: float = 1.0
  max_action_tokens: int = 128
  sequence_length: int = 2048
  learning_rate: float = 1e-5
  warmup_steps: int = 10
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0
  grad_accum_steps: int = 1
  checkpoint_dir: str = "runs/default/checkpoints"
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  log_every: int = 10
  seed: int = 0
  peak_flops: float | None = None  # per device: the MFU denominator, when you know your chip's peak
  measure_peak: bool = False  # or measure it at start (a matmul in the model's compute dtype)

  def __post_init__(self):
    """Refuses a bad setting when the config is built, not at the first step (after sampling
    and judging) or never."""
    validation.check(self.mode in ("online", "offline", "sft"), self, f"mode={self.mode!r}; use online, offline or sft")
    validation.at_least_one(self, ("steps", "batch_size", "samples_per_state", "updates_per_batch", "max_action_tokens",
                                   "sequence_length", "grad_accum_steps", "checkpoint_every", "keep_checkpoints",
                                   "log_every"))
    validation.not_negative(self, ("temperature", "kl_coef", "learning_rate", "warmup_steps", "weight_decay",
                                   "grad_clip_norm", "sft_context_weight"))
    validation.check(self.batch_size % self.grad_accum_steps == 0, self,
                     f"batch_size={self.batch_size} must be a multiple of grad_accum_steps={self.grad_accum_steps}")
    validation.check(self.baseline in ("none", "rloo"), self, f"baseline={self.baseline!r}; use 'none' or 'rloo'")
    validation.check(self.judge_failures in ("exclude", "zero"), self,
                     f"judge_failures={self.judge_failures!r}; use 'exclude' or 'zero'")
    validation.check(self.mode != "online" or self.baseline != "rloo" or self.samples_per_state >= 2, self,
                     f"the rloo baseline needs samples_per_state >= 2 (got {self.samples_per_state})")
    validation.check(self.clip_epsilon is None or self.clip_epsilon > 0, self,
                     f"clip_epsilon={self.clip_epsilon} must be positive")
    validation.check(self.updates_per_batch == 1 or self.clip_epsilon is not None, self,
                     f"updates_per_batch={self.updates_per_batch} reuses each batch: set clip_epsilon "
                     "(the clipped ratio)")
    validation.check(self.peak_flops is None or self.peak_flops > 0, self,
                     f"peak_flops={self.peak_flops} must be positive")


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """Linear warmup then cosine decay, counted in optimizer updates: each trainer step makes
  `updates_per_batch` of them (steps and warmup_steps are in trainer steps)."""
  updates = config.steps * config.updates_per_batch
  warmup = max(config.warmup_steps * config.updates_per_batch, 1)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(updates, warmup + 1))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """AdamW on `learning_rate_schedule`, after global-norm clipping."""
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                     optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay))


class NonFiniteLossError(FloatingPointError):
  pass


def load_trained_params(model, checkpoint_dir: str, step: int | None = None) -> int:
  """Puts the params of a trainer checkpoint (the latest by default) into `model`; returns the step."""
  manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  nnx.update(model, restored["params"])
  return step


def checkpoint_identity(checkpoint_dir: str, step: int) -> dict:
  """Which trained params a checkpoint holds: its step and a digest of its training fingerprint
  (the same wherever the directory lies)."""
  meta = ocp.CheckpointManager(os.path.abspath(checkpoint_dir)).restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return {"step": int(step), "training": provenance.digest(meta.get("fingerprint"))}


class Trainer:
  """Trains `model` in place; `states` are logged trajectories (kept by a filter)."""

  def __init__(self, model, trajectories: Sequence[Trajectory], config: TrainConfig, *, scorer=None,
               vocab=None, stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
               mesh: Mesh | None = None, rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES,
               metrics_dir: str | None = None, model_id: dict | None = None):
    if not trajectories:
      raise ValueError("Trainer: no trajectories to train on (did the filter keep none?)")
    if config.mode == "online" and scorer is None:
      raise ValueError("Trainer: online mode needs a scorer (the judge)")
    self.model, self.config, self.scorer, self.mesh, self.rules = model, config, scorer, mesh, rules
    self.graphdef = nnx.graphdef(model)
    self.tx = make_optimizer(config)
    self.trajectories = list(trajectories)
    # What a checkpoint here must have been trained with to be resumed: the settings that change
    # the result, the data, the starting model and (online) the judge.
    self.fingerprint = json.loads(json.dumps({
        # Where and how often it saves, what it logs, and micro-batching (the update is the same)
        # leave the result alone.
        "config": provenance.config_fields(config, ("checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                                                    "log_every", "peak_flops", "measure_peak",
                                                    "grad_accum_steps")),
        "data": provenance.digest([t.to_json() for t in self.trajectories]),
        "model": model_id or provenance.policy_identity(),
        "judge": provenance.judge_identity(scorer.judge) if scorer is not None and hasattr(scorer, "judge") else None,
    }, default=str))
    self.states = [e for t in self.trajectories for e in decomposition.expand(t)]
    self.sampling = SamplingConfig(temperature=config.temperature, max_new_tokens=config.max_action_tokens,
                                   stop_ids=tuple(stop_ids), stop_strings=tuple(stop_strings))
    self.sampler = None
    if config.mode == "online":
      rows = config.batch_size * config.samples_per_state
      capacity = max(len(s.context) for s in self.states) + config.max_action_tokens
      self.sampler = Sampler(model, rows=rows, capacity=capacity, vocab=vocab, mesh=mesh, rules=rules)
    params = nnx.state(model)
    self.reference = jax.tree.map(jnp.copy, params) if config.kl_coef else None
    self.param_shardings = (partitioning.state_shardings(params, mesh, rules) if mesh is not None else None)
    self.opt_shardings = None
    self.opt_state = self._init_opt_state(params)
    self.step = 0
    self.position = 0  # items of the epoch-permuted data stream consumed so far
    self._orders: dict = {}
    self.metrics_dir = metrics_dir or os.path.join(os.path.dirname(os.path.abspath(config.checkpoint_dir)), "metrics")
    self.checkpoints = ocp.CheckpointManager(
        os.path.abspath(config.checkpoint_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))
    # On a mesh, params and optimizer state leave the step exactly as the rules shard them.
    out_shardings = None
    if mesh is not None:
      out_shardings = (self.param_shardings, self.opt_shardings, NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self._train_step = jax.jit(self._step_fn, donate_argnums=(0, 1), out_shardings=out_shardings,
                               static_argnums=4)
    # MFU only when asked: a given per-device peak, or one measured once here in the compute dtype.
    self.peak_flops = config.peak_flops or (peak.xla_matmul_peak(model.config.dtype) if config.measure_peak
                                            else None)
    self._update_flops: dict = {}

  # -- state -----------------------------------------------------------------

  def _init_opt_state(self, params):
    if self.mesh is None:
      return self.tx.init(params)
    shapes = jax.eval_shape(self.tx.init, params)
    self.opt_shardings = partitioning.optimizer_state_shardings(self.tx, shapes, self.param_shardings, self.mesh)
    return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

  def identity(self) -> dict:
    """The trained params' identity now: as `checkpoint_identity` gives it for a saved step."""
    return {"step": self.step, "training": provenance.digest(self.fingerprint)}

  def _meta(self) -> dict:
    return {"step": self.step, "seed": self.config.seed, "data_position": self.position, "mode": self.config.mode,
            "fingerprint": self.fingerprint}

  def save(self) -> None:
    self.checkpoints.save(self.step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(nnx.state(self.model)),
        opt_state=ocp.args.StandardSave(self.opt_state), meta=ocp.args.JsonSave(self._meta())))
    self.checkpoints.wait_until_finished()

  def restore_latest(self) -> bool:
    """Restores the newest checkpoint, if any; returns whether one was found."""
    step = self.checkpoints.latest_step()
    if step is None:
      return False
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self.checkpoints.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(nnx.state(self.model))),
        opt_state=ocp.args.StandardRestore(abstract(self.opt_state)), meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    fresh = f"remove {self.config.checkpoint_dir} (or set TrainConfig.checkpoint_dir) to train afresh"
    if "fingerprint" not in meta:
      raise ValueError(f"{self.config.checkpoint_dir}: checkpoint {step} records no fingerprint (an older "
                       f"version's); {fresh}")
    if meta["fingerprint"] != self.fingerprint:
      raise ValueError(provenance.mismatch_message(f"{self.config.checkpoint_dir}: checkpoint {step}",
                                                   meta["fingerprint"], self.fingerprint, fresh))
    nnx.update(self.model, restored["params"])
    self.opt_state = restored["opt_state"]
    self.step = int(meta["step"])
    self.position = int(meta.get("data_position", self.step * self.config.batch_size))
    return True

  # -- data --------------------------------------------------------------------

  def _order(self, n: int, epoch: int) -> np.ndarray:
    if self._orders.get((n, epoch)) is None:
      self._orders = {(n, epoch): np.random.default_rng([self.config.seed, epoch]).permutation(n)}
    return self._orders[(n, epoch)]

  def _at(self, items: list, position: int):
    """Item `position` of the data stream: a fresh permutation each epoch, a function of the seed."""
    epoch, index = divmod(position, len(items))
    return items[self._order(len(items), epoch)[index]]

  def _pick(self, items: list) -> list:
    """The next batch_size items of the stream."""
    batch = [self._at(items, i) for i in range(self.position, self.position + self.config.batch_size)]
    self.position += self.config.batch_size
    return batch

  def _pack(self) -> list[list]:
    """batch_size rows filled first-fit with whole trajectories, in stream order, until the next
    one fits nowhere."""
    rows, used, limit = [[] for _ in range(self.config.batch_size)], [0] * self.config.batch_size, \
        self.config.sequence_length
    while True:
      trajectory = self._at(self.trajectories, self.position)
      n = trajectory.num_tokens
      if n > limit:
        raise ValueError(f"trajectory {trajectory.id} has {n} tokens; rows hold {limit} "
                         "(raise TrainConfig.sequence_length)")
      row = next((i for i, u in enumerate(used) if u + n <= limit), None)
      if row is None:
        return rows
      rows[row].append(trajectory)
      used[row] += n
      self.position += 1

  def _offline_batch(self) -> dict:
    batch = self._pack() if self.config.pack_rows else self._pick(self.trajectories)
    return seqio_tasks.prefix_shared_batch(batch, self.config.sequence_length, reward_one=self.config.mode == "sft",
                                           context_weight=self.config.sft_context_weight)

  def _online_batch(self, step: int):
    states = self._pick(self.states)
    batch = online.online_batch(
        self.sampler, self.scorer, states, self.config.samples_per_state, self.sampling,
        self.config.sequence_length, self.config.baseline, key_ids=("online", self.config.seed, step),
        judge_failures=self.config.judge_failures)
    scored = ~np.isnan(batch.rewards)
    reward_sum, scored_count, failures, sampled = np.sum(
        multihost.allgather_json([float(batch.rewards[scored].sum()), int(scored.sum()), int((~scored).sum()),
                                  int(sum(len(a.tokens) for a in batch.actions))]), axis=0)
    g = self.config.samples_per_state
    rows = np.array([slot * g + i for slot in batch.state_slots for i in range(g)], np.int64)
    extra = {"mean_reward": float(reward_sum / max(scored_count, 1)), "judge_failures": int(failures),
             "logged_reward": float(np.mean([s.reward for s in states])), "sampled_tokens": int(sampled)}
    return batch.features, rows, extra

  # -- the step ----------------------------------------------------------------

  def _loss_slots(self, feats, rows: np.ndarray, total_rows: int, local: bool) -> int:
    """Loss positions to gather per micro-batch: the most any micro-batch has, rounded up to a
    power of two (at most every position) so that only a few step shapes ever compile.

    `feats` holds rows `rows` of the global batch; `local`: each process holds only its own rows,
    so the counts are summed over processes.
    """
    k = self.config.grad_accum_steps
    per_row = (np.asarray(feats[LOSS_WEIGHTS]) > 0).sum(axis=1)
    per_micro = np.zeros(k, np.int64)
    np.add.at(per_micro, rows // (total_rows // k), per_row)
    if local:
      per_micro = multihost.sum_over_processes(per_micro)
    positions = (total_rows // k) * feats[LOSS_WEIGHTS].shape[1]
    return min(positions, max(128, 1 << (int(per_micro.max()) - 1).bit_length()))

  def _loss(self, params, feats, reference, n, total_weight):
    model = nnx.merge(self.graphdef, params)
    if self.config.mode != "online":
      return reward_weighted_nll(model, feats, n, total_weight=total_weight), {}
    ref_logp = None
    if reference is not None:
      ref_logp = losses.reference_logprobs(nnx.merge(self.graphdef, reference), feats, n)
    num_sequences = feats[INPUT_TOKENS].shape[0]
    return losses.policy_gradient_loss(model, feats, num_sequences=num_sequences, reference_logprobs_N=ref_logp,
                                       kl_coef=self.config.kl_coef, clip_epsilon=self.config.clip_epsilon,
                                       max_loss_tokens=n)

  def _step_fn(self, params, opt_state, feats, reference, loss_slots):
    k = self.config.grad_accum_steps
    micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), feats)

    # Offline and SFT: each micro-batch's loss is its share of the whole batch's token-mean, so the
    # micro-batches add up to one large batch whatever grad_accum_steps is. Online: each micro-batch
    # holds the same number of sequences and the loss is a mean over sequences, so they average.
    online_mode = self.config.mode == "online"
    total_weight = None if online_mode else jnp.maximum(jnp.sum(feats[LOSS_WEIGHTS]), 1.0)

    def accumulate(grads, batch):
      (loss, aux), g = jax.value_and_grad(self._loss, has_aux=True)(params, batch, reference, loss_slots,
                                                                    total_weight)
      return jax.tree.map(jnp.add, grads, g), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (loss_k, aux_k) = jax.lax.scan(accumulate, zeros, micro)
    if online_mode:
      grads = jax.tree.map(lambda g: g / k, grads)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": jnp.mean(loss_k) if online_mode else jnp.sum(loss_k), "grad_norm": optax.tree.norm(grads),
               **{name: jnp.mean(v) for name, v in aux_k.items()}}
    return params, opt_state, metrics

  def _place_batch(self, feats, rows: np.ndarray, total_rows: int):
    """The global batch on the mesh, from this process's rows (`rows` of the global batch)."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, feats)
    sharding_of = lambda x: partitioning.batch_sharding(self.mesh, self.rules, (total_rows,) + x.shape[1:])
    if not multihost.is_multiprocess():
      return jax.tree.map(lambda x: jax.device_put(x, sharding_of(x)), feats)
    # Every feature is [rows, ...]: the rows a process owns follow from the row count alone.
    owned = multihost.owned_rows(partitioning.batch_sharding(self.mesh, self.rules, (total_rows,)), total_rows)
    whole = len(rows) == total_rows  # every process laid out the whole batch: contribute our rows
    rows_here = owned if whole else np.asarray(rows)
    if not np.array_equal(np.sort(rows_here), owned):  # the same on every process for a given mesh
      raise ValueError(f"process {jax.process_index()} laid out batch rows {rows_here[:4]}...; the mesh gives it "
                       f"{owned[:4]}...")
    one_block = bool(np.all(np.diff(rows_here) == 1))

    def place(x):
      x = x[owned] if whole else x
      shape = (total_rows,) + x.shape[1:]
      if one_block:  # this process's slice of the global batch
        return jax.make_array_from_process_local_data(sharding_of(x), x, shape)
      host = np.zeros(shape, x.dtype)  # rows spread over the batch (some TPU device orders)
      host[rows_here] = x
      return multihost.global_array(host, sharding_of(x))
    return jax.tree.map(place, feats)

  def run_step(self) -> dict:
    """One step: its batch (sampled and scored in online mode), the update(s); returns metrics."""
    start = time.perf_counter()
    if self.config.mode == "online":
      feats, rows, extra = self._online_batch(self.step)
      total_rows, local = self.config.batch_size * self.config.samples_per_state, True
    else:
      feats, extra = self._offline_batch(), {}
      total_rows, local = feats[INPUT_TOKENS].shape[0], False
      rows = np.arange(total_rows)
    batch = self._place_batch(feats, rows, total_rows)
    loss_slots = self._loss_slots(feats, rows, total_rows, local)
    params = nnx.state(self.model)
    flops = self._flops_per_update(params, batch, loss_slots) if self.peak_flops else None
    update_start = time.perf_counter()
    for _ in range(self.config.updates_per_batch):
      with partitioning.activate(self.mesh, self.rules):
        params, self.opt_state, metrics = self._train_step(params, self.opt_state, batch, self.reference,
                                                           loss_slots)
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        latest = self.checkpoints.latest_step()
        raise NonFiniteLossError(
            f"loss is {loss} at step {self.step}; stopped without saving. The last good checkpoint "
            f"({'none' if latest is None else f'step {latest}'}) is in {self.config.checkpoint_dir}")
    update_seconds = time.perf_counter() - update_start  # float(loss) waited for the update
    nnx.update(self.model, params)
    self.step += 1
    seconds = time.perf_counter() - start
    tokens = int(np.sum(feats[SEGMENT_IDS] > 0))
    if local:
      tokens = int(multihost.sum_over_processes([tokens])[0])
    tokens *= self.config.updates_per_batch
    result = {k: float(v) for k, v in metrics.items()} | extra
    result.update(step=self.step, step_seconds=seconds, update_seconds=update_seconds, trained_tokens=tokens,
                  tokens_per_second=tokens / seconds)
    if flops:
      # The update's MFU: XLA's FLOP count of the compiled step (per device, in its dtype), over the
      # time of the update(s) alone; online sampling is timed in step_seconds, not counted here.
      result["update_flops_per_device"] = flops * self.config.updates_per_batch
      result["mfu"] = flops * self.config.updates_per_batch / update_seconds / self.peak_flops
    return result

  def _flops_per_update(self, params, batch, loss_slots: int) -> float | None:
    """FLOPs per device of one update, from XLA's cost analysis of the compiled step (once per
    batch shape). XLA counts a scan's body once, so the micro-batch gradient, which the step runs
    `grad_accum_steps` times, is counted on its own and added for the other runs."""
    key = (loss_slots, tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch)))
    if key not in self._update_flops:
      k = self.config.grad_accum_steps
      with partitioning.activate(self.mesh, self.rules):
        flops = _compiled_flops(self._train_step.lower(params, self.opt_state, batch, self.reference, loss_slots))
        if flops is not None and k > 1:
          micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] // k, *x.shape[1:]), x.dtype,
                                                              sharding=getattr(x, "sharding", None)), batch)
          weight = None if self.config.mode == "online" else jax.ShapeDtypeStruct((), jnp.float32)
          gradient = jax.jit(lambda p, b, r, w: jax.value_and_grad(self._loss, has_aux=True)(p, b, r, loss_slots, w))
          body = _compiled_flops(gradient.lower(params, micro, self.reference, weight))
          flops = None if body is None else flops + (k - 1) * body
      if flops is None:
        logging.warning("XLA gives no FLOP count for the train step on this backend: no MFU is logged")
      self._update_flops[key] = flops
    return self._update_flops[key]

  def train(self) -> dict:
    """Runs to config.steps from the latest checkpoint; returns the last metrics.

    Raises `multihost.Preempted` after saving, on every process at the same step, when a
    preemption notice (SIGTERM) arrives.
    """
    self.restore_latest()
    os.makedirs(self.metrics_dir, exist_ok=True)
    from clu import metric_writers
    writer = metric_writers.create_default_writer(self.metrics_dir, just_logging=jax.process_index() > 0)
    log_path = os.path.join(self.metrics_dir, "metrics.jsonl")
    last: dict = {}
    with multihost.PreemptionWatch() as preemption, \
        tqdm(total=self.config.steps, initial=self.step, desc=f"train ({self.config.mode})", disable=None) as bar:
      while self.step < self.config.steps:
        last = self.run_step()
        if self.step % self.config.log_every == 0 or self.step == self.config.steps:
          writer.write_scalars(self.step, {k: v for k, v in last.items() if k != "step"})
          if jax.process_index() == 0:
            with open(log_path, "a") as f:
              f.write(json.dumps(last) + "\n")
        preempted = preemption.reached(self.step)
        if preempted or self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
          self.save()
        bar.set_postfix(loss=f"{last['loss']:.4f}")
        bar.update(1)
        if preempted and self.step < self.config.steps:
          writer.flush()
          raise multihost.Preempted(self.step, self.config.checkpoint_dir)
    writer.flush()
    return last


def _compiled_flops(lowered) -> float | None:
  """XLA's FLOP count of a lowered computation (None where the backend gives none)."""
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = cost.get("flops") if isinstance(cost, dict) else None
  return float(flops) if flops and flops > 0 else None
