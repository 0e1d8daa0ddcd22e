"""The Stage 2 trainer: jitted steps on the mesh, AdamW, checkpoints, metrics, resume.

Modes: `online` (the paper's objective: G fresh actions per logged state,
sampled with the current params in the same mesh, scored by the judge,
policy-gradient step), `offline` (reward-weighted likelihood of the logged
actions, prefix-shared rows) and `sft` (the logged actions with weight 1: the
paper's SFT baseline).

The trainer is assembled from parts a reader can take one at a time:
- data: `batches` (this process's shard of a SeqIO task, a resumable stream);
- the algorithm: `objectives` (a loss over a micro-batch) and, online, `online` (fresh samples,
  judged, into advantages);
- the update: `step` (a pure jitted function of params, optimizer state and batch);
- state: `swirl_jax.checkpoints.train_state` (params, optimizer state, data position, fingerprint);
- measurement: `flops` (XLA's count, for MFU) and the metric writer.

Everything a step uses is a function of (seed, step, data position): the batch, the sampling key.
A checkpoint holds params, optimizer state, step and each process's data position, so a run killed
at any moment and restarted ends with exactly the params of an uninterrupted run. A NaN or inf loss stops the run before anything is saved.
A preemption notice (SIGTERM) makes every process save the same step and stop
(`multihost.Preempted`); the same command then resumes.

Multi-host: each process reads only its shard of the task. Offline it lays out the rows of the
global batch it owns; online it samples and judges the states whose rows it owns; either way it
contributes those rows to the global batch (`jax.make_array_from_process_local_data`). Shapes every process must agree on (row
length, loss slots) and the metrics are agreed through small collectives.
"""

from __future__ import annotations

import collections
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
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from tqdm import tqdm

from swirl_jax import multihost, partitioning, provenance, validation
from swirl_jax.checkpoints import policy
from swirl_jax.checkpoints.train_state import TrainCheckpoints, checkpoint_identity, load_trained_params
from swirl_jax.data import seqio_tasks
from swirl_jax.data.features import INPUT_TOKENS, LOSS_WEIGHTS, SEGMENT_IDS
from swirl_jax.records import Trajectory
from swirl_jax.sampling.sampler import Sampler, SamplingConfig
from swirl_jax.training import batches, judging, objectives, online, peak
from swirl_jax.training.flops import UpdateFlops
from swirl_jax.training.logprobs import loss_slots_for
from swirl_jax.training.objectives import SftConfig
from swirl_jax.training.online import OnlineConfig
from swirl_jax.training.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from swirl_jax.training.step import jit_train_step, micro_batch_gradient, train_step_fn

__all__ = ["NonFiniteLossError", "OnlineConfig", "OptimizerConfig", "SftConfig", "TrainConfig", "Trainer",
           "checkpoint_identity", "learning_rate_schedule", "load_trained_params", "make_optimizer"]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The run: what it trains on and how long, the batch, checkpoints, logging. The algorithm's
  settings are `OnlineConfig` (online) and `SftConfig` (sft); the optimizer's `OptimizerConfig`."""

  mode: str = "online"  # online | offline | sft
  steps: int = 100
  batch_size: int = 32  # rows each step trains on (online: states per step x samples_per_state)
  sequence_length: int = 2048  # tokens per row
  pack_rows: bool = False  # offline, sft: pack several examples into each row (SeqIO's packer, in stream order)
  share_prefixes: bool = True  # offline, sft, given trajectories: one row per trajectory, not one per state
  use_cached_task: bool = False  # read the task from SeqIO's cache (made by its cache_tasks job)
  grad_accum_steps: int = 1  # micro-batches per step (the update is the same)
  # Loss positions gathered per micro-batch: the positions / 2**j (j < loss_slot_levels, at least
  # 128) that hold the batch's; with the row lengths, this bounds the step programs that compile
  # (`Trainer.max_step_programs`). More levels gather fewer padded slots and compile more programs.
  loss_slot_levels: int = 4
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
    validation.at_least_one(self, ("steps", "batch_size", "sequence_length", "grad_accum_steps", "checkpoint_every",
                                   "keep_checkpoints", "log_every", "loss_slot_levels"))
    validation.check(self.batch_size % self.grad_accum_steps == 0, self,
                     f"batch_size={self.batch_size} must be a multiple of grad_accum_steps={self.grad_accum_steps}")
    validation.check(self.peak_flops is None or self.peak_flops > 0, self,
                     f"peak_flops={self.peak_flops} must be positive")


class NonFiniteLossError(FloatingPointError):
  pass


def register_data(trajectories: Sequence[Trajectory], mode: str, share_prefixes: bool = True) -> str:
  """The SeqIO task a trainer given trajectories in memory reads (named by their digest)."""
  return seqio_tasks.register_trajectories(None, trajectories).for_mode(mode, share_prefixes)


def _objective(mode: str, online_config: OnlineConfig) -> objectives.Objective:
  if mode == "online":
    tree = online_config.layout == "tree"
    return objectives.PolicyGradient(kl_coef=online_config.kl_coef, clip_epsilon=online_config.clip_epsilon,
                                     importance_cap=online_config.importance_cap,
                                     sequences_per_row=online_config.samples_per_state if tree else 1)
  return objectives.RewardWeightedLikelihood()


class Trainer:
  """Trains `model` in place on a SeqIO task (`data`: its name), or on trajectories in memory
  (registered as a task here). The optimizer's and the algorithm's settings default to gin's
  `OptimizerConfig()`, `OnlineConfig()` and `SftConfig()`."""

  def __init__(self, model, data: str | Sequence[Trajectory], config: TrainConfig, *,
               optimizer: OptimizerConfig | None = None, online_config: OnlineConfig | None = None,
               sft: SftConfig | None = None, scorer=None, vocab=None, stop_ids: Sequence[int] = (),
               stop_strings: Sequence[str] = (), mesh: Mesh | None = None,
               rules: partitioning.LogicalRules = partitioning.DEFAULT_RULES, metrics_dir: str | None = None,
               model_id: dict | None = None, sampling_layout: partitioning.SamplingLayout | None = None,
               training_questions: Sequence[str] | None = None):
    if config.mode == "online" and scorer is None:
      raise ValueError("Trainer: online mode needs a scorer (the judge)")
    if config.mode == "online" and vocab is None and isinstance(scorer, online.JudgeScorer):
      raise ValueError("Trainer: a JudgeScorer judges the sampled actions' text; without `vocab` every action "
                       "reads as empty text")
    self.model, self.config, self.scorer, self.mesh, self.rules = model, config, scorer, mesh, rules
    # The questions the params learn from, recorded (as digests) with every checkpoint, so that an
    # evaluation of them refuses these questions (given trajectories: theirs).
    if training_questions is None and not isinstance(data, str):
      training_questions = [t.question for t in data]
    self.training_question_digests = (provenance.question_digests(training_questions)
                                      if training_questions is not None else None)
    self.optimizer = optimizer or OptimizerConfig()
    self.online = online_config or OnlineConfig()
    self.sft = sft or SftConfig()
    g = self.online.samples_per_state
    if config.mode == "online" and config.batch_size % g:
      raise ValueError(f"TrainConfig.batch_size={config.batch_size} rows must be a multiple of "
                       f"OnlineConfig.samples_per_state={g} (each state's samples fill {g} rows)")
    # Tree-packed online rows: the update trains one row per state (its G samples as branches).
    self.tree_rows = config.mode == "online" and self.online.layout == "tree"
    if self.tree_rows and (config.batch_size // g) % config.grad_accum_steps:
      raise ValueError(f"OnlineConfig.layout='tree' trains {config.batch_size // g} rows a step (one per state), "
                       f"not a multiple of TrainConfig.grad_accum_steps={config.grad_accum_steps}")
    self.updates_per_step = self.online.updates_per_batch if config.mode == "online" else 1
    self.task = data if isinstance(data, str) else register_data(data, config.mode, config.share_prefixes)
    facts = batches.task_facts(self.task, config.use_cached_task)
    self._check_task(facts)
    # What a checkpoint here must have been trained with to be resumed: the settings that change
    # the result, the data, the starting model and (online) the judge.
    sampling_layout = (sampling_layout or partitioning.SamplingLayout()) if config.mode == "online" else None
    self.fingerprint = json.loads(json.dumps({
        # Where and how often it saves, what it logs, and micro-batching (the update is the same)
        # leave the result alone.
        "config": provenance.config_fields(config, ("checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                                                    "log_every", "peak_flops", "measure_peak",
                                                    "grad_accum_steps", "loss_slot_levels")),
        "optimizer": provenance.config_fields(self.optimizer),
        # (How many threads judge, and how long they may take, leave the result alone.)
        "algorithm": provenance.config_fields({"online": self.online, "sft": self.sft}.get(config.mode),
                                              ("judge_threads", "judge_timeout_s"))
                     if config.mode != "offline" else None,
        "data": facts.identity,
        # The sampling layout's param dtype changes what is sampled online (its mesh does not).
        "sampling": sampling_layout.identity() if sampling_layout is not None else None,
        "model": model_id or policy.policy_identity(),
        "judge": provenance.judge_identity(scorer.judge) if scorer is not None and hasattr(scorer, "judge") else None,
    }, default=str))

    # Data: this process's shard of the task.
    self.sampler = None
    if config.mode == "online":
      self.stream = batches.StateStream(self.task, config.seed, config.use_cached_task)
      self.sampling = SamplingConfig(temperature=self.online.temperature,
                                     max_new_tokens=self.online.max_action_tokens, stop_ids=tuple(stop_ids),
                                     stop_strings=tuple(stop_strings))
      # Online sampling decodes in the sampling layout where one is set (gin's SamplingLayout): the
      # sampler reshards the params into it at each step and frees that copy before the update.
      self.sampler = Sampler(model, rows=config.batch_size, capacity=facts.longest + self.online.max_action_tokens,
                             vocab=vocab, mesh=mesh, rules=rules, layout=sampling_layout)
      # Each batch's actions are judged on host threads; with max_staleness > 0 the next batches
      # are sampled (and the last one trained on) meanwhile. `_in_flight` holds the batches
      # sampled and not yet trained on, oldest first; `_next_batch` is the next to sample.
      self.verdicts = judging.VerdictPool(scorer, self.online.judge_threads, self.online.judge_timeout_s)
      if self.online.max_staleness and self.verdicts.on_devices:
        raise ValueError(f"OnlineConfig.max_staleness={self.online.max_staleness} judges while the mesh samples "
                         "and updates; this judge runs on the devices, in step with every process (a model "
                         "judge): use max_staleness=0, or a judge served over HTTP")
      self._in_flight: collections.deque[tuple[online.SampledBatch, judging.PendingVerdicts]] = collections.deque()
      self._next_batch = 0
    else:
      self.stream = batches.RowStream(self.task, config.sequence_length, seed=config.seed, pack=config.pack_rows,
                                      reward_one=config.mode == "sft", context_weight=self.sft.context_weight,
                                      use_cached=config.use_cached_task)
    self.total_rows = config.batch_size // g if self.tree_rows else config.batch_size  # rows the update trains
    if self.sampler is not None:
      self._check_row_owners()

    # The algorithm, the optimizer and the step.
    self.objective = _objective(config.mode, self.online)
    self.graphdef = nnx.graphdef(model)
    self.tx = make_optimizer(self.optimizer, config.steps, self.updates_per_step)
    params = nnx.state(model)
    self.reference = jax.tree.map(jnp.copy, params) if config.mode == "online" and self.online.kl_coef else None
    self.param_shardings = (partitioning.state_shardings(params, mesh, rules) if mesh is not None else None)
    self.opt_shardings = None
    self.opt_state = self._init_opt_state(params)
    out_shardings = None
    if mesh is not None:  # params and optimizer state leave the step exactly as the rules shard them
      out_shardings = (self.param_shardings, self.opt_shardings, NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self._train_step = jit_train_step(train_step_fn(self.graphdef, self.objective, self.tx, config.grad_accum_steps),
                                      out_shardings)

    # State and measurement.
    self.step = 0
    self.staleness_counts: collections.Counter = collections.Counter()  # online: steps by their batch's staleness
    self.step_programs: set = set()  # the update's shapes met: each compiled a program
    self.checkpoints = TrainCheckpoints(config.checkpoint_dir, config.keep_checkpoints)
    self.metrics_dir = metrics_dir or os.path.join(os.path.dirname(os.path.abspath(config.checkpoint_dir)), "metrics")
    # MFU only when asked: a given per-device peak, or one measured once here in the compute dtype.
    # Not for scanned layers: XLA's cost analysis counts a loop body once, so the step would report
    # a fraction of its FLOPs (and the peak is then not measured for nothing).
    wants_mfu = bool(config.peak_flops or config.measure_peak)
    if wants_mfu and model.config.scan_layers:
      logging.warning("no MFU with GemmaConfig.scan_layers: XLA counts the scanned layers once")
    self.peak_flops = None if not wants_mfu or model.config.scan_layers else (
        config.peak_flops or peak.xla_matmul_peak(model.config.dtype))
    self._update_flops = UpdateFlops(self._train_step, micro_batch_gradient(self.graphdef, self.objective),
                                     config.grad_accum_steps, self.objective.shares_of_batch_weight)

  def _check_task(self, facts: seqio_tasks.TaskInfo) -> None:
    """What every process must find alike, found from facts they agree on (a problem met by one
    process in its own shard would leave the others waiting in a collective)."""
    config = self.config
    if config.use_cached_task and seqio_tasks.info(self.task) is not None:
      raise ValueError(f"TrainConfig.use_cached_task: {self.task!r} shuffles inside its source, which a cache would "
                       "lose; cache a task of your own with a shuffle buffer (docs/training.md)")
    if facts.examples < jax.process_count():
      raise ValueError(f"SeqIO task {self.task!r} has {facts.examples} examples for {jax.process_count()} processes "
                       "(each reads its own shard)")
    # (Online, a state with its sampled action is checked at each step, over all processes.)
    if facts.longest > config.sequence_length:
      raise ValueError(f"SeqIO task {self.task!r} has an example of {facts.longest} tokens; rows hold "
                       f"{config.sequence_length} (raise TrainConfig.sequence_length)")

  def _check_row_owners(self) -> None:
    """A process lays out, for the update, the rows of the states it sampled: the sampler's mesh
    must give each process the same states as the training mesh gives it rows."""
    if self.mesh is None or not multihost.is_multiprocess() or self.sampler.mesh is self.mesh:
      return
    g = self.online.samples_per_state
    sampled = self.sampler.row_owners
    trained = multihost.row_owners(partitioning.batch_sharding(self.mesh, self.rules, (self.total_rows,)),
                                   self.total_rows)
    if not np.array_equal(sampled[::g] if self.tree_rows else sampled, trained):
      raise ValueError(f"the sampler's rows ({partitioning.describe(self.sampler.mesh)}) are owned by other "
                       f"processes than the training mesh's ({partitioning.describe(self.mesh)}) rows")

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

  def save(self) -> None:
    """Collective. Each process's data position is recorded (they read different shards)."""
    positions = multihost.allgather_json(self.stream.position)
    meta = {"step": self.step, "data_positions": positions, "data_position_unit": "examples",
            "fingerprint": self.fingerprint, "training_question_digests": self.training_question_digests}
    if self.config.mode == "online" and self.online.max_staleness:
      # The batches sampled ahead (their states are past the data positions), with their verdicts,
      # waited for here: a restart trains on them as this run would, sampling and judging nothing again.
      meta["in_flight"] = multihost.allgather_json(
          [online.in_flight_record(sampled, pending.wait()) for sampled, pending in self._in_flight])
    self.checkpoints.save(self.step, nnx.state(self.model), self.opt_state, meta)

  def restore_latest(self) -> bool:
    """Restores the newest checkpoint, if any; returns whether one was found."""
    step = self.checkpoints.latest_step()
    if step is None:
      return False
    params, opt_state, meta = self.checkpoints.restore(step, nnx.state(self.model), self.opt_state)
    where = f"{self.config.checkpoint_dir}: checkpoint {step}"
    fresh = f"remove {self.config.checkpoint_dir} (or set TrainConfig.checkpoint_dir) to train afresh"
    if "fingerprint" not in meta or "data_positions" not in meta:
      raise ValueError(f"{where} records no fingerprint or data positions (an older version's); {fresh}")
    if meta["fingerprint"] != self.fingerprint:
      raise ValueError(provenance.mismatch_message(where, meta["fingerprint"], self.fingerprint, fresh))
    positions = meta["data_positions"]
    if getattr(self.stream, "pack", False) and meta.get("data_position_unit") != "examples":
      raise ValueError(f"{where} counts packed rows read, not examples (an older version's); {fresh}")
    if len(positions) != jax.process_count():
      raise ValueError(f"{where} was written by {len(positions)} processes reading {len(positions)} shards of "
                       f"{self.task!r}; resume it with {len(positions)} processes (the shards, and so the data "
                       f"order, depend on the count), or {fresh}")
    nnx.update(self.model, params)
    self.opt_state = opt_state
    self.step = int(meta["step"])
    self.stream.seek(positions[jax.process_index()])
    if self.config.mode == "online":
      records = (meta.get("in_flight") or [[]] * jax.process_count())[jax.process_index()]
      self._in_flight = collections.deque(online.from_in_flight_record(r) for r in records)
      self._next_batch = self.step + len(self._in_flight)
    return True

  # -- data ------------------------------------------------------------------

  def _own_rows(self) -> np.ndarray:
    """The rows of the global batch this process lays out (all of them in one process)."""
    if self.mesh is None or not multihost.is_multiprocess():
      return np.arange(self.total_rows)
    sharding = partitioning.batch_sharding(self.mesh, self.rules, (self.total_rows,))
    return multihost.owned_rows(sharding, self.total_rows)

  def _offline_batch(self):
    rows = self._own_rows()
    return self.stream.next_rows(len(rows)), rows, {}

  def _sample_batch(self, index: int) -> tuple[online.SampledBatch, judging.PendingVerdicts]:
    """Samples batch `index` with the current params and hands it to the judge. Collective."""
    g = self.online.samples_per_state
    slots = online.local_state_slots(self.sampler, self.config.batch_size // g, g)
    local_states = self.stream.next_states(len(slots))
    # A state's sampling key is its place in the batch's share of the global stream, which SeqIO
    # deals out to processes by example: the i-th state read here is item i * P + p of that share.
    p, count = jax.process_index(), jax.process_count()
    start = time.perf_counter()
    sampled = online.sample_actions(
        self.sampler, {slot: state.context for slot, state in zip(slots, local_states)}, g, self.sampling,
        key_ids=("online", self.config.seed, index), sample_ids={slot: i * count + p for i, slot in enumerate(slots)})
    self.sampler.release()  # the sampling layout's copy of the params is not kept through the update
    batch = online.SampledBatch(index, self.step, slots, local_states, [a for slot in slots for a in sampled[slot]],
                                time.perf_counter() - start)
    return batch, self.verdicts.submit(batch.states, batch.actions, g)

  def _online_batch(self, step: int):
    """Batch `step`'s rows, judged: sampled now (max_staleness 0), or up to max_staleness updates ago
    while the batches before it were judged. Samples ahead first, so that the judge works on the
    batches in flight while this one is waited for and trained on."""
    g = self.online.samples_per_state
    states_per_step = self.config.batch_size // g
    last = max(step, min(step + self.online.max_staleness, self.config.steps - 1))  # (steps past config.steps too)
    while self._next_batch <= last:
      self._in_flight.append(self._sample_batch(self._next_batch))
      self._next_batch += 1
    sampled, pending = self._in_flight.popleft()
    if sampled.index != step:  # the queue and the step move together; a mismatch is a bug here
      raise RuntimeError(f"online step {step} found batch {sampled.index} first in flight")
    verdicts = pending.wait()
    feats = online.lay_out_batch([s.context for s in sampled.states], sampled.actions, verdicts.rewards,
                                 self.config.sequence_length, self.online.baseline, self.online.judge_failures,
                                 self.online.layout, collective=self.sampler.collective)
    rewards = verdicts.rewards
    scored = ~np.isnan(rewards)
    # Counts add up over processes; times are the slowest process's (the update starts when the
    # slowest has its verdicts: the mesh waits for the longest); latencies are pooled.
    gathered = multihost.allgather_json({
        "sum": {"reward": float(rewards[scored].sum()), "scored": int(scored.sum()), "failures": int((~scored).sum()),
                "tokens": int(sum(len(a.tokens) for a in sampled.actions)),
                "logged": float(sum(s.reward for s in sampled.states)), "timeouts": verdicts.timeouts,
                "errors": verdicts.errors, "late": verdicts.late},
        "max": {"sampling": sampled.sampling_seconds, "judge": verdicts.judge_seconds, "wait": verdicts.wait_seconds},
        "latencies": verdicts.latencies})
    total = {k: sum(r["sum"][k] for r in gathered) for k in gathered[0]["sum"]}
    longest = {k: max(r["max"][k] for r in gathered) for k in gathered[0]["max"]}
    latencies = np.asarray([x for r in gathered for x in r["latencies"]], np.float64)
    rows = np.array(sampled.slots if self.tree_rows else
                    [slot * g + i for slot in sampled.slots for i in range(g)], np.int64)
    staleness = step - sampled.policy_step
    extra = {"mean_reward": float(total["reward"] / max(total["scored"], 1)), "judge_failures": int(total["failures"]),
             "judge_timeouts": int(total["timeouts"]), "judge_errors": int(total["errors"]),
             "late_verdicts": int(total["late"]), "logged_reward": float(total["logged"] / states_per_step),
             "sampled_tokens": int(total["tokens"]), "sampling_seconds": float(longest["sampling"]),
             "judge_seconds": float(longest["judge"]), "judge_wait_seconds": float(longest["wait"]),
             "staleness": staleness}
    if latencies.size:  # seconds a state's G verdicts took, over every process's states
      for q in (50, 90, 99):
        extra[f"judge_latency_p{q}"] = float(np.percentile(latencies, q))
      extra["judge_latency_max"] = float(latencies.max())
    self.staleness_counts[staleness] += 1
    return feats, rows, extra

  # -- the step ----------------------------------------------------------------

  def _loss_slots(self, feats, rows: np.ndarray) -> int:
    """Loss positions to gather per micro-batch: the most any micro-batch has (over processes), as
    one of `loss_slot_levels` sizes of the row length (`logprobs.loss_slots_for`). `feats` holds
    rows `rows` of the global batch."""
    k, total_rows = self.config.grad_accum_steps, self.total_rows
    per_row = (np.asarray(feats[LOSS_WEIGHTS]) > 0).sum(axis=1)
    per_micro = np.zeros(k, np.int64)
    np.add.at(per_micro, rows // (total_rows // k), per_row)
    per_micro = multihost.sum_over_processes(per_micro)
    positions = (total_rows // k) * feats[LOSS_WEIGHTS].shape[1]
    return loss_slots_for(int(per_micro.max()), positions, self.config.loss_slot_levels)

  def max_step_programs(self) -> int:
    """The most update programs this run compiles: one per (row length, loss slots) its batches
    can take. Online rows take `online.row_length_buckets`; offline and SFT rows are
    `sequence_length` long."""
    lengths = (len(online.row_length_buckets(self.config.sequence_length)) if self.config.mode == "online"
               else 1)
    return lengths * self.config.loss_slot_levels

  def _count_program(self, batch, loss_slots: int) -> None:
    """Counts the update programs met (a new shape compiles one), and logs each as it comes."""
    key = (loss_slots,) + tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch))
    if key not in self.step_programs:
      self.step_programs.add(key)
      logging.info("train step: a program for rows %s and %d loss slots (%d of at most %d)",
                   tuple(jax.tree.leaves(batch)[0].shape), loss_slots, len(self.step_programs),
                   self.max_step_programs())

  def _place_batch(self, feats, rows: np.ndarray):
    """The global batch on the mesh, from this process's rows (`rows` of the global batch)."""
    total_rows = self.total_rows
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, feats)
    sharding_of = lambda x: partitioning.batch_sharding(self.mesh, self.rules, (total_rows,) + x.shape[1:])
    if not multihost.is_multiprocess():
      return jax.tree.map(lambda x: jax.device_put(x, sharding_of(x)), feats)
    # Every feature is [rows, ...]: the rows a process owns follow from the row count alone.
    owned = multihost.owned_rows(partitioning.batch_sharding(self.mesh, self.rules, (total_rows,)), total_rows)
    rows = np.asarray(rows)
    if not np.array_equal(np.sort(rows), owned):  # the same on every process for a given mesh
      raise ValueError(f"process {jax.process_index()} laid out batch rows {rows[:4]}...; the mesh gives it "
                       f"{owned[:4]}...")
    one_block = bool(np.all(np.diff(rows) == 1))

    def place(x):
      shape = (total_rows,) + x.shape[1:]
      if one_block:  # this process's slice of the global batch
        return jax.make_array_from_process_local_data(sharding_of(x), x, shape)
      host = np.zeros(shape, x.dtype)  # rows spread over the batch (some TPU device orders)
      host[rows] = x
      return multihost.global_array(host, sharding_of(x))
    return jax.tree.map(place, feats)

  def run_step(self) -> dict:
    """One step: its batch (sampled and scored in online mode), the update(s); returns metrics."""
    start = time.perf_counter()
    feats, rows, extra = self._online_batch(self.step) if self.config.mode == "online" else self._offline_batch()
    batch = self._place_batch(feats, rows)
    loss_slots = self._loss_slots(feats, rows)
    self._count_program(batch, loss_slots)
    params = nnx.state(self.model)
    flops = None
    if self.peak_flops:
      with partitioning.activate(self.mesh, self.rules):
        flops = self._update_flops(params, self.opt_state, batch, self.reference, loss_slots)
    update_start = time.perf_counter()
    for _ in range(self.updates_per_step):
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
    tokens = int(multihost.sum_over_processes([int(np.sum(feats[SEGMENT_IDS] > 0))])[0])
    tokens *= self.updates_per_step
    result = {k: float(v) for k, v in metrics.items()} | extra
    result.update(step=self.step, step_seconds=seconds, update_seconds=update_seconds, trained_tokens=tokens,
                  tokens_per_second=tokens / seconds, step_programs=len(self.step_programs))
    if flops:
      # The update's MFU: XLA's FLOP count of the compiled step (per device, in its dtype), over the
      # time of the update(s) alone; online sampling is timed in step_seconds, not counted here.
      result["update_flops_per_device"] = flops * self.updates_per_step
      result["mfu"] = flops * self.updates_per_step / update_seconds / self.peak_flops
    return result

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
