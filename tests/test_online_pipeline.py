"""Pipelined online steps (`OnlineConfig.max_staleness`): batches sampled ahead and judged on host
threads while the mesh updates; the synchronous loop unchanged at 0; checkpoints that keep the
batches in flight; judges that hang or fail."""

import json
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

from swirl_jax import multihost
from swirl_jax.models import init_model, model_config
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.training import judging, online
from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer
from tests.test_losses import FirstTokenScorer


class CountingScorer(FirstTokenScorer):
  """FirstTokenScorer that counts the actions it scored (from any thread)."""

  def __init__(self, good, on_devices=False):
    super().__init__(good)
    self.runs_on_devices = on_devices
    self.scored = 0
    self._lock = threading.Lock()

  def score(self, states, actions):
    with self._lock:
      self.scored += len(actions)
    return super().score(states, actions)


def _trainer(tmp_path, name, staleness, steps=4, scorer=None, learning_rate=1e-2, cls=Trainer, **settings):
  config = TrainConfig(mode="online", steps=steps, batch_size=8, sequence_length=64, checkpoint_every=100,
                       checkpoint_dir=str(tmp_path / name), log_every=1)
  settings = dict(samples_per_state=4, max_action_tokens=3, temperature=1.0, max_staleness=staleness) | settings
  return cls(init_model(model_config("tiny"), seed=0), known_trajectories(), config,
                 scorer=scorer or CountingScorer(range(100, 300)),
                 optimizer=OptimizerConfig(learning_rate=learning_rate, warmup_steps=1),
                 online_config=OnlineConfig(**settings))


def _params(trainer):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(trainer.model))}


def _assert_same(a, b, atol=0.0):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=str(k))


class SynchronousLoop(Trainer):
  """The online step as it was before pipelining: `online.online_batch` samples, judges (one call,
  this thread) and lays out the batch in turn; placement and update are the trainer's own."""

  def _online_batch(self, step):
    g = self.online.samples_per_state
    slots = online.local_state_slots(self.sampler, self.config.batch_size // g, g)
    states = self.stream.next_states(len(slots))
    batch = online.online_batch(self.sampler, self.scorer, dict(zip(slots, states)), g, self.sampling,
                                self.config.sequence_length, self.online.baseline,
                                key_ids=("online", self.config.seed, step),
                                sample_ids={slot: i for i, slot in enumerate(slots)},
                                judge_failures=self.online.judge_failures, layout=self.online.layout)
    self.sampler.release()
    rows = np.array([slot * g + i for slot in batch.state_slots for i in range(g)], np.int64)
    return batch.features, rows, {"mean_reward": float(np.nanmean(batch.rewards))}


def test_staleness_zero_is_the_synchronous_loop_exactly(tmp_path):
  """Judged on host threads (one task a state) or on the main thread (as a judge on the devices
  still is): the params of the loop before pipelining, bit for bit. Steps past TrainConfig.steps
  still sample their own batch."""
  def trainer(name, cls=Trainer, on_devices=False):
    return _trainer(tmp_path, name, 0, steps=3, scorer=CountingScorer(range(100, 300), on_devices), cls=cls)
  runs = {"threads": trainer("threads"), "inline": trainer("inline", on_devices=True),
          "before": trainer("before", SynchronousLoop)}
  assert not runs["threads"].verdicts.on_devices and runs["inline"].verdicts.on_devices
  logs = {name: [t.run_step() for _ in range(4)] for name, t in runs.items()}  # one step past steps=3
  for name in ("threads", "inline"):
    _assert_same(_params(runs[name]), _params(runs["before"]))
    assert [r["mean_reward"] for r in logs[name]] == [r["mean_reward"] for r in logs["before"]]
  assert [r["staleness"] for r in logs["threads"]] == [0, 0, 0, 0]


def test_staleness_one_trains_each_batch_one_update_after_sampling_it(tmp_path):
  """At max_staleness=1 batch k is sampled by the params after k - 1 updates (batches 0 and 1 by
  the initial ones), with the same key as the synchronous loop: with a learning rate of 0 both runs
  are the same; with one they part after the first update."""
  runs = {}
  for staleness in (0, 1):
    for lr in (0.0, 1e-2):
      trainer = _trainer(tmp_path, f"s{staleness}-{lr}", staleness, learning_rate=lr)
      log = [trainer.run_step() for _ in range(4)]
      runs[staleness, lr] = trainer, log
  _assert_same(_params(runs[0, 0.0][0]), _params(runs[1, 0.0][0]))
  assert [r["mean_reward"] for r in runs[0, 0.0][1]] == [r["mean_reward"] for r in runs[1, 0.0][1]]
  with pytest.raises(AssertionError):
    _assert_same(_params(runs[0, 1e-2][0]), _params(runs[1, 1e-2][0]), atol=1e-6)
  trainer, log = runs[1, 1e-2]
  assert [r["staleness"] for r in log] == [0, 1, 1, 1]
  assert trainer.staleness_counts == {0: 1, 1: 3}
  assert not trainer._in_flight  # nothing is sampled past the last step
  assert trainer.scorer.scored == 4 * 8  # each batch judged once
  assert {"judge_latency_p50", "judge_latency_p99", "judge_latency_max", "judge_wait_seconds", "late_verdicts",
          "judge_timeouts"} <= set(log[-1])


def test_a_checkpoint_keeps_the_batches_in_flight_and_the_restart_judges_nothing_again(tmp_path):
  uninterrupted = _trainer(tmp_path, "whole", 2, steps=5)
  for _ in range(5):
    uninterrupted.run_step()
  first = _trainer(tmp_path, "parts", 2, steps=5)
  first.run_step()
  first.run_step()
  assert [b.index for b, _ in first._in_flight] == [2, 3]
  first.save()
  scorer = CountingScorer(range(100, 300))
  second = _trainer(tmp_path, "parts", 2, steps=5, scorer=scorer)
  assert second.restore_latest()
  assert second.step == 2 and [b.index for b, _ in second._in_flight] == [2, 3]
  assert [b.policy_step for b, _ in second._in_flight] == [0, 1]
  log = [second.run_step() for _ in range(3)]
  assert [r["staleness"] for r in log] == [2, 2, 2]
  assert scorer.scored == 8  # batch 4 only: batches 2 and 3 came with their verdicts
  _assert_same(_params(second), _params(uninterrupted))


def test_sigterm_mid_pipeline_saves_and_the_restart_ends_where_an_uninterrupted_run_does(tmp_path):
  class Terminating(CountingScorer):
    """Sends the process SIGTERM from a judge thread while the third batch is judged."""

    def score(self, states, actions):
      if self.scored == 2 * 8:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().score(states, actions)

  expected = _trainer(tmp_path, "whole", 1, steps=6)
  expected.train()
  stopped = _trainer(tmp_path, "stopped", 1, steps=6, scorer=Terminating(range(100, 300)), judge_threads=1)
  with pytest.raises(multihost.Preempted) as raised:
    stopped.train()
  assert 1 <= raised.value.step < 6
  resumed = _trainer(tmp_path, "stopped", 1, steps=6)
  resumed.train()
  assert resumed.step == 6
  _assert_same(_params(resumed), _params(expected))


class Hanging(CountingScorer):
  """Never answers for a state whose first action starts with an odd token; raises for one whose
  first action starts with a token divisible by 3 (and even); else scores."""

  def __init__(self, good):
    super().__init__(good)
    self.release = threading.Event()

  def score(self, states, actions):
    first = actions[0].tokens[0] if actions[0].tokens else 0
    if first % 2:
      self.release.wait()
    if first % 3 == 0:
      raise ConnectionError("the judge went away")
    return super().score(states, actions)


@pytest.mark.parametrize("judge_failures", ["exclude", "zero"])
def test_a_judge_that_hangs_or_fails_never_blocks_the_loop(tmp_path, judge_failures):
  scorer = Hanging(range(0, 100_000, 2))  # every answered action scores 1
  trainer = _trainer(tmp_path, judge_failures, 1, steps=3, scorer=scorer, judge_timeout_s=1.0,
                     judge_failures=judge_failures)
  try:
    log = [trainer.run_step() for _ in range(3)]
  finally:
    scorer.release.set()
  assert sum(r["judge_timeouts"] for r in log) > 0, "no state hung: pick other tokens"
  assert sum(r["judge_errors"] for r in log) > 0, "no state's judge raised: pick other tokens"
  for r in log:
    assert r["judge_failures"] == r["judge_timeouts"] + r["judge_errors"]
    assert np.isfinite(r["loss"])
    # Only answered samples count in the mean; they all scored 1.
    assert r["mean_reward"] in (0.0, 1.0)


def test_judging_on_threads_keeps_the_state_order_and_marks_what_failed():
  from swirl_jax.data.decomposition import StateExample
  from swirl_jax.sampling.interfaces import TurnOutput

  class Slow:
    def score(self, states, actions):
      time.sleep(0.2 if states[0].step_index == 0 else 0.0)  # the first state answers last
      if states[0].step_index == 2:
        raise ValueError("unreadable")
      return np.array([states[0].step_index + len(a.tokens) / 10 for a in actions], np.float32)

  states = [StateExample("t", i, [1, 2], [], 0.0, []) for i in range(4)]
  actions = [TurnOutput([5] * (g + 1), [0.0] * (g + 1), "x", "length") for _ in range(4) for g in range(2)]
  verdicts = judging.VerdictPool(Slow(), threads=4).submit(states, actions, 2).wait()
  expected = np.array([[0.1, 0.2], [1.1, 1.2], [np.nan, np.nan], [3.1, 3.2]], np.float32)
  np.testing.assert_allclose(verdicts.rewards, expected)
  assert verdicts.timeouts == 0 and verdicts.errors == 2 and len(verdicts.latencies) == 4
  assert max(verdicts.latencies) >= 0.2 and verdicts.judge_seconds >= 0.2


def test_pipelining_refuses_a_judge_on_the_devices(tmp_path):
  with pytest.raises(ValueError, match="max_staleness=1 .* on the devices"):
    _trainer(tmp_path, "refused", 1, scorer=CountingScorer(range(10), on_devices=True))
  assert judging.runs_on_devices(type("Scorer", (), {"judge": type("J", (), {"runs_on_devices": True})()})())
  from swirl_jax.rewards.model_judge import ModelJudge
  assert ModelJudge.runs_on_devices


def test_online_config_refuses_bad_pipeline_settings():
  for bad in (dict(max_staleness=-1), dict(judge_threads=0), dict(judge_timeout_s=0.0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      OnlineConfig(**bad)


def test_a_judge_scorer_without_a_vocabulary_is_refused(tmp_path):
  """Its judge would read every sampled action as empty text (and an HTTP judge's cache would then
  answer each state's later actions from its first)."""
  from swirl_jax.training.online import JudgeScorer
  with pytest.raises(ValueError, match="without `vocab`"):
    _trainer(tmp_path, "no-vocab", 0, scorer=JudgeScorer(judge=object()))


def test_a_batch_in_flight_of_a_process_with_no_states_reads_back_and_lays_out():
  """On several processes one may own no state of a batch: its record restores to (0, G) rewards,
  which lay out (to no rows) like a fresh empty batch, not into an error before the collective."""
  empty = online.SampledBatch(3, 2, [], [], [], 0.1)
  verdicts = judging.VerdictPool(CountingScorer(range(5)), threads=1).submit([], [], 4).wait()
  assert verdicts.rewards.shape == (0, 4)
  batch, pending = online.from_in_flight_record(json.loads(json.dumps(online.in_flight_record(empty, verdicts))))
  assert batch == empty and pending.wait().rewards.shape == (0, 4)
  assert online.lay_out_batch([], [], pending.wait().rewards, 64, "rloo", collective=False) == {}
