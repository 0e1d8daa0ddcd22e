"""Online step-wise RL data: G fresh actions per logged state, sampled and scored, never executed.

At each recorded state s_i the *current* policy samples G actions in the
training mesh (the sampler runs on the trainer's params); a scorer (the
judge) rates each; advantages become token-aligned features for the loss.

Multi-host: the batch's S x G sampler rows are split by process; a process
samples, judges and lays out only the states whose rows it owns (the G samples
of a state stay together, so RLOO needs no communication). Sampling keys come
from (key ids, state slot, sample), never from the process count.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping, NamedTuple, Protocol, Sequence

import gin
import numpy as np

from swirl_jax import multihost, validation
from swirl_jax.data import features

from swirl_jax.data.decomposition import StateExample
from swirl_jax.environment.protocol import parse_action
from swirl_jax.rewards.judge import Judge, ProcessRequest
from swirl_jax.sampling.interfaces import TurnOutput
from swirl_jax.sampling.sampler import Sampler, SamplingConfig, row_key
from swirl_jax.training import judging
from swirl_jax.training.losses import advantages


LAYOUTS = ("rows", "tree")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OnlineConfig:
  """The online algorithm's settings: how fresh actions are sampled at each state, scored, and
  turned into the policy-gradient loss."""

  samples_per_state: int = 4  # G
  baseline: str = "rloo"  # none | rloo
  judge_failures: str = "exclude"  # a sample the judge gave no verdict: exclude it, or score it "zero"
  kl_coef: float = 0.0  # KL penalty to the initial policy
  clip_epsilon: float | None = None  # set to use PPO's clipped ratio (needed for updates_per_batch > 1)
  # Off-policy correction: weight each token by its importance ratio pi / pi_behaviour truncated at
  # this bound (with clip_epsilon: the dual clip, a negative advantage's term at most cap * |A|).
  # The sampler's recorded log-probs are the behaviour (a bf16 sampling copy differs from the policy).
  importance_cap: float | None = None
  updates_per_batch: int = 1  # optimizer updates on each batch of samples
  temperature: float = 1.0
  max_action_tokens: int = 128
  # How the update lays out a state's G samples: "rows", one row each (context + action); "tree",
  # one row per state holding the context once and the G actions as branches (same loss and
  # gradients, about G times fewer context tokens trained).
  layout: str = "rows"
  # Pipelining (docs/training.md#pipelined-online-steps): a batch is sampled up to this many updates
  # before it is trained on, and judged on host threads meanwhile; 0 samples, judges and updates in
  # turn. A batch trained `max_staleness` updates after it was sampled is weighted by its
  # importance ratio when `importance_cap` (or `clip_epsilon`) is set.
  max_staleness: int = 0
  judge_threads: int = 16  # states judged at once on this process's host threads (one task: G actions)
  # A batch's verdicts not in this long after it was handed to the judge count as failures (None: wait).
  judge_timeout_s: float | None = None

  def __post_init__(self):
    validation.at_least_one(self, ("samples_per_state", "updates_per_batch", "max_action_tokens"))
    validation.not_negative(self, ("temperature", "kl_coef"))
    validation.check(self.baseline in ("none", "rloo"), self, f"baseline={self.baseline!r}; use 'none' or 'rloo'")
    validation.check(self.layout in LAYOUTS, self, f"layout={self.layout!r}; use 'rows' or 'tree'")
    validation.check(self.judge_failures in ("exclude", "zero"), self,
                     f"judge_failures={self.judge_failures!r}; use 'exclude' or 'zero'")
    validation.check(self.baseline != "rloo" or self.samples_per_state >= 2, self,
                     f"the rloo baseline needs samples_per_state >= 2 (got {self.samples_per_state})")
    validation.check(self.clip_epsilon is None or self.clip_epsilon > 0, self,
                     f"clip_epsilon={self.clip_epsilon} must be positive")
    validation.check(self.importance_cap is None or (self.importance_cap >= 1 and (
        self.clip_epsilon is None or self.importance_cap > 1 + self.clip_epsilon)), self,
                     f"importance_cap={self.importance_cap} must be at least 1 (and above 1 + clip_epsilon, "
                     "where the dual clip would otherwise cut inside PPO's own clip)")
    validation.not_negative(self, ("max_staleness",))
    validation.at_least_one(self, ("judge_threads",))
    validation.check(self.judge_timeout_s is None or self.judge_timeout_s > 0, self,
                     f"judge_timeout_s={self.judge_timeout_s} must be positive (or None: wait)")
    validation.check(self.updates_per_batch == 1 or self.clip_epsilon is not None, self,
                     f"updates_per_batch={self.updates_per_batch} reuses each batch: set clip_epsilon "
                     "(the clipped ratio)")


class Scorer(Protocol):
  def score(self, states: Sequence[StateExample], actions: Sequence[TurnOutput]) -> np.ndarray:
    """A reward in [0, 1] for each (state, action) pair."""
    ...


class JudgeScorer:
  """Scores actions with a process judge, in the state's transcript (as Stage 1 steps are judged).
  An action the judge gave no verdict (a failed request, unreadable judge output) scores NaN:
  the trainer counts it, and leaves it out or scores it 0 (OnlineConfig.judge_failures)."""

  def __init__(self, judge: Judge, tags: Sequence[str] = ("math_exp", "search_query")):
    self.judge, self.tags = judge, list(tags)

  def score(self, states: Sequence[StateExample], actions: Sequence[TurnOutput]) -> np.ndarray:
    requests = []
    for state, action in zip(states, actions):
      parsed = parse_action(action.text, self.tags)
      tool = parsed.tag if parsed.kind != "malformed" else ""
      requests.append(ProcessRequest(state.question, state.transcript, action.text.strip(), tool,
                                     state.question_id, state.step_index))
    return np.array([v.score if v.score is not None else np.nan for v in self.judge.judge_steps(requests)],
                    np.float32)


def local_state_slots(sampler: Sampler, num_states: int, samples_per_state: int) -> list[int]:
  """Slots (positions in the batch) of the states whose G rows this process owns.

  State slot s takes rows s*G .. s*G+G-1; each state's rows must be on one
  process (checked the same way on every process, so all raise together).
  """
  if num_states * samples_per_state != sampler.rows:
    raise ValueError(f"{num_states} states x {samples_per_state} samples need {num_states * samples_per_state} "
                     f"sampler rows; the sampler has {sampler.rows}")
  owners = np.asarray(sampler.row_owners).reshape(num_states, samples_per_state)
  split = np.flatnonzero((owners != owners[:, :1]).any(axis=1))
  if split.size:
    raise ValueError(f"the {samples_per_state} samples of state slot {int(split[0])} would be split across "
                     "processes: make the rows per process a multiple of samples_per_state")
  mine = set(sampler.local_rows)
  return [slot for slot in range(num_states) if slot * samples_per_state in mine]


def sample_actions(sampler: Sampler, contexts: dict[int, Sequence[int]], samples_per_state: int,
                   config: SamplingConfig, key_ids: Sequence | None = None,
                   sample_ids: Mapping[int, int] | None = None) -> dict[int, list[TurnOutput]]:
  """G actions for each state slot in `contexts` (this process's), each sampled in its own row; the
  state's context is prefilled once and forked into its G rows (on each shard of rows by itself
  where rows are split over devices; see `Sampler.fork` for where each row prefills it instead).

  Collective: every process calls it together. Sample g of slot s is seeded by
  row_key(*key_ids, sample_ids[s], g) when key_ids are given (sample_ids: the slot itself by
  default; a trainer passes each state's place in its data stream, so that any process count
  draws the same samples for the same state).
  """
  g_count = samples_per_state
  sampler.reset()
  # A fork copies within a shard of rows: where a state's G rows are not on one shard, or a fork
  # would gather the whole cache onto every device (`rows_split`), each row prefills the state.
  if sampler.rows_split or sampler.rows_per_shard % g_count:
    sampler.append({slot * g_count + g: list(c) for slot, c in contexts.items() for g in range(g_count)})
  else:  # each context prefilled once, into its first row, and copied on device into the other G - 1
    sampler.append({slot * g_count: list(c) for slot, c in contexts.items()})
    sampler.fork({slot * g_count + g: slot * g_count for slot in contexts for g in range(1, g_count)})
  rows = [slot * g_count + g for slot in contexts for g in range(g_count)]
  keys = None
  if key_ids is not None:
    ids = sample_ids or {slot: slot for slot in contexts}
    keys = {slot * g_count + g: row_key(*key_ids, ids[slot], g) for slot in contexts for g in range(g_count)}
  turn = sampler.generate(rows, config, row_keys=keys)
  return {slot: [turn[slot * g_count + g] for g in range(g_count)] for slot in contexts}


def row_length_buckets(length: int) -> tuple[int, ...]:
  """The lengths an online batch's rows may take, up to `length`: 128 and 192 times powers of two,
  and `length` itself. Each shape compiles its own update (about 112 s for a scanned 27B step), so
  they are few (9 up to 2,048 tokens, where multiples of 128 were 16), at the cost of padding a
  batch by at most half its longest row (129 tokens padded to 192)."""
  out, base = [], 128
  while base < length:
    out += [b for b in (base, base * 3 // 2) if b < length]
    base *= 2
  return tuple(out) + (length,)


def _padded_length(longest: int, length: int) -> int:
  if longest > length:
    raise ValueError(f"a state and its action need {longest} tokens; rows hold {length} "
                     "(raise TrainConfig.sequence_length)")
  return next(b for b in row_length_buckets(length) if b >= longest)


def online_features(contexts: Sequence[Sequence[int]], actions: Sequence[TurnOutput],
                    advantage_per_action: Sequence[float], length: int, row_length: int | None = None,
                    action_weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """One row per (state, sample): context + action, loss on the action, its advantage per token.
  `action_weights[i]` (default 1) weighs action i's tokens in the loss (0: left out).

  Rows are `length` long at most; shorter batches are padded only to the next of
  `row_length_buckets` (or to `row_length`, when processes agree on one), so a step
  does not pay for much padding and a few shapes compile.
  """
  n = len(actions)
  per_state = n // len(contexts)
  longest = max(len(contexts[i // per_state]) + len(a.tokens) for i, a in enumerate(actions))
  length = row_length if row_length is not None else _padded_length(longest, length)
  if longest > length:
    raise ValueError(f"a state and its action need {longest} tokens; rows hold {length}")
  rows = []
  for i, action in enumerate(actions):
    context, action_tokens = list(contexts[i // per_state]), list(action.tokens)
    weight = 1.0 if action_weights is None else float(action_weights[i])
    on_action = np.concatenate([np.zeros(len(context), np.float32), np.full(len(action_tokens), weight, np.float32)])
    logprobs = np.concatenate([np.zeros(len(context), np.float32), np.asarray(action.logprobs, np.float32)])
    t = len(context) + len(action_tokens)
    rewards = np.where(on_action > 0, np.float32(advantage_per_action[i]), np.float32(0.0))
    rows.append(features.numpy_row(context + action_tokens, on_action, rewards, logprobs, np.ones(t, np.int32),
                                   np.arange(t), length))
  return features.stack(rows)


def tree_length(context: Sequence[int], actions: Sequence[TurnOutput]) -> int:
  """Tokens of a state's tree-packed row: the context once, then each action after a copy of the
  context's last token."""
  return len(context) - 1 + sum(1 + len(a.tokens) for a in actions)


def tree_features(contexts: Sequence[Sequence[int]], actions: Sequence[TurnOutput],
                  advantage_per_action: Sequence[float], length: int, row_length: int | None = None,
                  action_weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """One row per state: its context once (the trunk, branch 0), then its G actions as branches.

  Branch g holds a copy of the context's last token and then action g, at positions continuing from
  the trunk's end, so each action token sees the context and its own branch's earlier tokens exactly
  as in its own row (`online_features`), and the copied token predicts the action's first token. The
  loss and its gradients are those of the one-row-per-sample layout, with G - 1 fewer copies of the
  context per state. The policy-gradient loss must then count G sequences a row
  (`objectives.PolicyGradient.sequences_per_row`).
  """
  per_state = len(actions) // len(contexts)
  grouped = [actions[s * per_state:(s + 1) * per_state] for s in range(len(contexts))]
  longest = max(tree_length(c, group) for c, group in zip(contexts, grouped))
  length = row_length if row_length is not None else _padded_length(longest, length)
  if longest > length:
    raise ValueError(f"a state and its {per_state} actions need {longest} tokens; rows hold {length}")
  rows = []
  for s, (context, group) in enumerate(zip(contexts, grouped)):
    context = list(context)
    trunk = len(context) - 1
    tokens, on_action, logprobs, rewards = context[:-1], [0.0] * trunk, [0.0] * trunk, [0.0] * trunk
    positions, branches = list(range(trunk)), [0] * trunk
    for g, action in enumerate(group):
      n = len(action.tokens)
      advantage = float(advantage_per_action[s * per_state + g])
      weight = 1.0 if action_weights is None else float(action_weights[s * per_state + g])
      tokens += context[-1:] + list(action.tokens)
      on_action += [0.0] + [weight] * n
      logprobs += [0.0] + list(action.logprobs)
      rewards += [0.0] + [advantage] * n
      positions += list(range(trunk, trunk + 1 + n))
      branches += [g + 1] * (1 + n)
    rows.append(features.numpy_row(tokens, on_action, rewards, logprobs, np.ones(len(tokens), np.int32),
                                   positions, length, branch_ids=branches))
  return features.stack(rows)


class OnlineBatch(NamedTuple):
  """This process's part of one online batch: its rows' features, its states' rewards [S_local, G],
  their actions (state-major), and the slots of its states in the global batch."""

  features: dict[str, np.ndarray]
  rewards: np.ndarray  # NaN where the judge gave no verdict
  actions: list[TurnOutput]
  state_slots: list[int]
  sampling_seconds: float = 0.0  # this process's time sampling the actions
  judge_seconds: float = 0.0  # this process's time waiting for the scorer's verdicts


class SampledBatch(NamedTuple):
  """This process's part of one online batch, sampled and not yet trained on: batch `index` of the
  run (its sampling key), sampled by the params after `policy_step` updates."""

  index: int
  policy_step: int
  slots: list[int]  # the states' slots in the global batch
  states: list[StateExample]  # one per slot
  actions: list[TurnOutput]  # state-major, G per state
  sampling_seconds: float


def in_flight_record(batch: SampledBatch, verdicts: judging.Verdicts) -> dict:
  """A batch in flight with its verdicts, as a checkpoint's JSON keeps it (NaN rewards as null)."""
  return {"index": batch.index, "policy_step": batch.policy_step, "slots": list(batch.slots),
          "states": [dataclasses.asdict(s) for s in batch.states],
          "actions": [dataclasses.asdict(a) for a in batch.actions], "sampling_seconds": batch.sampling_seconds,
          "rewards": [[None if np.isnan(r) else float(r) for r in row] for row in verdicts.rewards],
          "latencies": list(verdicts.latencies), "timeouts": verdicts.timeouts, "errors": verdicts.errors,
          "samples_per_state": int(verdicts.rewards.shape[1])}


def from_in_flight_record(record: dict) -> tuple[SampledBatch, judging.PendingVerdicts]:
  """`in_flight_record` read back: the batch, and its verdicts already in."""
  states = [StateExample(**s) for s in record["states"]]
  rewards = np.array([[np.nan if r is None else r for r in row] for row in record["rewards"]], np.float32)
  rewards = rewards.reshape(len(states), int(record["samples_per_state"]))  # (0, G) for a process with no states
  batch = SampledBatch(int(record["index"]), int(record["policy_step"]), [int(x) for x in record["slots"]], states,
                       [TurnOutput(**a) for a in record["actions"]], float(record["sampling_seconds"]))
  return batch, judging.judged(rewards, record["latencies"], record["timeouts"], record["errors"])


def online_batch(sampler: Sampler, scorer: Scorer, states: Sequence[StateExample] | Mapping[int, StateExample],
                 samples_per_state: int, config: SamplingConfig, length: int, baseline: str = "rloo",
                 key_ids: Sequence | None = None, judge_failures: str = "exclude",
                 sample_ids: Mapping[int, int] | None = None, layout: str = "rows") -> OnlineBatch:
  """Samples, scores and lays out this process's part of one online batch. Collective: every
  process calls it together.

  states: the whole batch (a list, the same on every process: each process takes the states whose
  rows it owns), or this process's states by slot (`local_state_slots`), as a trainer reading its
  own shard of the data gives them. judge_failures: "exclude" leaves an unscored sample out of the
  loss and of its state's baseline; "zero" scores it 0 (a failure then reads as a bad action).
  layout: "rows" gives a row per sample (state-major), "tree" a row per state (`tree_features`).
  """
  if judge_failures not in ("exclude", "zero"):
    raise ValueError(f"judge_failures={judge_failures!r}; use 'exclude' or 'zero'")
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; use 'rows' or 'tree'")
  start = time.perf_counter()
  slots, states, sampled = sample_batch(sampler, states, samples_per_state, config, key_ids, sample_ids)
  sampling_seconds = time.perf_counter() - start
  actions = [a for slot in slots for a in sampled[slot]]
  expanded_states = [states[slot] for slot in slots for _ in range(samples_per_state)]
  judge_start = time.perf_counter()
  rewards = (scorer.score(expanded_states, actions) if actions else np.zeros(0, np.float32))
  judge_seconds = time.perf_counter() - judge_start
  rewards = rewards.reshape(len(slots), samples_per_state)
  feats = lay_out_batch([states[slot].context for slot in slots], actions, rewards, length, baseline,
                        judge_failures, layout, collective=sampler.collective)
  return OnlineBatch(feats, rewards, actions, slots, sampling_seconds, judge_seconds)


def sample_batch(sampler: Sampler, states: Sequence[StateExample] | Mapping[int, StateExample],
                 samples_per_state: int, config: SamplingConfig, key_ids: Sequence | None = None,
                 sample_ids: Mapping[int, int] | None = None
                 ) -> tuple[list[int], dict[int, StateExample], dict[int, list[TurnOutput]]]:
  """This process's (state slots, states by slot, G actions by slot) of one batch, sampled and not
  yet judged. Collective. `states` as `online_batch` takes them."""
  num_states = sampler.rows // samples_per_state if isinstance(states, Mapping) else len(states)
  slots = local_state_slots(sampler, num_states, samples_per_state)
  if isinstance(states, Mapping):
    if sorted(states) != slots:
      raise ValueError(f"states for slots {sorted(states)[:4]}...; this process samples slots {slots[:4]}...")
  else:
    states = {slot: states[slot] for slot in slots}
  contexts = {slot: states[slot].context for slot in slots}
  return slots, dict(states), sample_actions(sampler, contexts, samples_per_state, config, key_ids, sample_ids)


def lay_out_batch(contexts: Sequence[Sequence[int]], actions: Sequence[TurnOutput], rewards: np.ndarray,
                  length: int, baseline: str = "rloo", judge_failures: str = "exclude", layout: str = "rows",
                  collective: bool = True) -> dict[str, np.ndarray]:
  """The update's rows of this process's judged states: `rewards` [S_local, G] (NaN: no verdict),
  `actions` state-major. Collective where `collective` (every process pads to one row length)."""
  samples_per_state = rewards.shape[1]
  adv = advantages(np.nan_to_num(rewards, nan=0.0) if judge_failures == "zero" else rewards, baseline).reshape(-1)
  grouped = [actions[s * samples_per_state:(s + 1) * samples_per_state] for s in range(len(contexts))]
  if layout == "tree":
    local_longest = max((tree_length(c, group) for c, group in zip(contexts, grouped)), default=1)
  else:
    local_longest = max((len(c) + len(a.tokens) for c, group in zip(contexts, grouped) for a in group), default=1)
  row_length = _padded_length(multihost.max_over_processes(local_longest) if collective else local_longest, length)
  # No loss on a sample nobody scored (judge_failures "exclude").
  weights = (~np.isnan(rewards)).reshape(-1) if judge_failures == "exclude" else None
  lay_out = tree_features if layout == "tree" else online_features
  return lay_out(contexts, actions, adv, length, row_length, weights) if len(contexts) else {}
