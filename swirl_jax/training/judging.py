"""Verdicts in flight: an online batch's actions judged on host threads while the mesh works.

An LLM judge served elsewhere answers in seconds. `VerdictPool` sends each state's G actions to the
scorer as one task on a few daemon threads, so the trainer can sample the next batch and update on
the last one meanwhile (`OnlineConfig.max_staleness`). Waiting for a batch never blocks past its
deadline (`OnlineConfig.judge_timeout_s`, counted from when the batch was handed over): a state whose
verdicts are not in by then scores NaN, which `OnlineConfig.judge_failures` then treats as any
failed verdict, and a hung judge thread is left behind (a daemon: it never holds the process).

A scorer that runs on the devices (`runs_on_devices`: a model judge on the mesh) is called on the
calling thread, as every process's collectives must stay in lock-step.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np
from absl import logging

from swirl_jax.data.decomposition import StateExample
from swirl_jax.sampling.interfaces import TurnOutput


def runs_on_devices(scorer) -> bool:
  """Whether `scorer` computes on the devices (then only the main thread, in step, may call it)."""
  judge = getattr(scorer, "judge", None)
  return bool(getattr(scorer, "runs_on_devices", False) or getattr(judge, "runs_on_devices", False))


class Verdicts(NamedTuple):
  """One batch's verdicts, as the update takes them."""

  rewards: np.ndarray  # [S_local, G]; NaN where no verdict came (failed, or not in by the deadline)
  latencies: list[float]  # seconds each state's task took, for those that finished in time
  timeouts: int  # samples whose verdict was not in by the deadline
  errors: int  # samples whose scorer raised (their state's G verdicts are NaN)
  late: int  # samples whose verdict was not in when the caller asked (it then waited)
  judge_seconds: float  # from hand-over until the last verdict was in (or the deadline)
  wait_seconds: float  # how long the caller waited in `wait` (the mesh's idle time)


class PendingVerdicts:
  """One batch's verdicts on their way: `wait()` returns them, by the deadline at the latest."""

  def __init__(self, futures: list[concurrent.futures.Future], samples_per_state: int, submitted: float,
               timeout_seconds: float | None):
    self.futures, self.samples_per_state = futures, samples_per_state
    self.submitted, self.timeout_seconds = submitted, timeout_seconds
    self._result: Verdicts | None = None

  def wait(self) -> Verdicts:
    if self._result is not None:
      return self._result._replace(wait_seconds=0.0)  # (waited for already: by a checkpoint's save)
    start = time.perf_counter()
    late = self.samples_per_state * sum(not f.done() for f in self.futures)
    remaining = None
    if self.timeout_seconds is not None:
      remaining = max(0.0, self.submitted + self.timeout_seconds - start)
    concurrent.futures.wait(self.futures, timeout=remaining)
    end = time.perf_counter()
    g = self.samples_per_state
    rewards = np.full((len(self.futures), g), np.nan, np.float32)
    latencies, timeouts, errors, last = [], 0, 0, self.submitted
    for i, future in enumerate(self.futures):
      # Past the deadline: a task not yet started never will be (its thread goes to later batches);
      # one that is running is left to finish, its verdicts unused.
      if not future.done():
        future.cancel()
        timeouts += g
        last = end if remaining is None else min(end, self.submitted + self.timeout_seconds)
        continue
      if future.exception() is not None:  # (`_score_one` catches a scorer's own errors)
        errors += g
        continue
      scores, started, finished, failed = future.result()
      rewards[i] = scores
      errors += g if failed else 0
      latencies.append(finished - started)
      last = max(last, finished)
    self._result = Verdicts(rewards, latencies, timeouts, errors, late, last - self.submitted, end - start)
    return self._result


def _score_one(scorer, states: Sequence[StateExample], actions: Sequence[TurnOutput], g: int):
  """(rewards [G], start, end, whether it failed) of one state's task. A scorer that raises gives G
  failures (NaN), as a judge that answered nothing readable does, counted as `judge_errors` and
  logged with its error, so that a broken scorer shows at once."""
  started = time.perf_counter()
  try:
    scores = np.asarray(scorer.score(states, actions), np.float32).reshape(g)
  except Exception as error:  # noqa: BLE001 - a judge's failure is a missing verdict, not a crash
    logging.warning("the judge failed on state %s step %s (%d samples scored NaN): %r",
                    getattr(states[0], "trajectory_id", "?"), getattr(states[0], "step_index", "?"), g, error)
    return np.full(g, np.nan, np.float32), started, time.perf_counter(), True
  return scores, started, time.perf_counter(), False


class VerdictPool:
  """Judges batches on `threads` daemon threads, one task per state (its G actions)."""

  def __init__(self, scorer, threads: int, timeout_seconds: float | None = None):
    if threads < 1:
      raise ValueError(f"VerdictPool: threads={threads} must be at least 1")
    self.scorer, self.timeout_seconds = scorer, timeout_seconds
    self.on_devices = runs_on_devices(scorer)
    self._tasks: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable]] = queue.SimpleQueue()
    self._threads: list[threading.Thread] = []
    self._size = threads

  def _worker(self) -> None:
    while True:
      future, task = self._tasks.get()
      if future.set_running_or_notify_cancel():
        try:
          future.set_result(task())
        except BaseException as error:  # noqa: BLE001 - the waiter sees it; this thread lives on
          future.set_exception(error)

  def _start(self) -> None:
    while len(self._threads) < self._size:
      thread = threading.Thread(target=self._worker, name=f"judge-{len(self._threads)}", daemon=True)
      thread.start()
      self._threads.append(thread)

  def submit(self, states: Sequence[StateExample], actions: Sequence[TurnOutput],
             samples_per_state: int) -> PendingVerdicts:
    """Hands a batch over: `states` one per state, `actions` state-major (G per state)."""
    g = samples_per_state
    submitted = time.perf_counter()
    if self.on_devices:  # on this thread, now, in one call: the devices' collectives stay in step
      rewards = np.asarray(self.scorer.score([s for s in states for _ in range(g)], actions),
                           np.float32).reshape(len(states), g)
      finished = time.perf_counter()
      futures = []
      for row in rewards:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result((row, submitted, finished, False))
        futures.append(future)
      return PendingVerdicts(futures, g, submitted, None)
    self._start()
    futures = []
    for i, state in enumerate(states):
      task = (lambda s=state, a=list(actions[i * g:(i + 1) * g]): _score_one(self.scorer, [s] * g, a, g))
      future = concurrent.futures.Future()
      self._tasks.put((future, task))
      futures.append(future)
    return PendingVerdicts(futures, g, submitted, self.timeout_seconds)


def judged(rewards: np.ndarray, latencies: Sequence[float] = (), timeouts: int = 0, errors: int = 0) -> PendingVerdicts:
  """Verdicts already in (as a checkpoint restores them)."""
  pending = PendingVerdicts([], rewards.shape[1] if rewards.ndim == 2 else 0, time.perf_counter(), None)
  pending._result = Verdicts(np.asarray(rewards, np.float32), list(latencies), int(timeouts), int(errors), 0, 0.0, 0.0)
  return pending
