"""One online step-wise RL step, a row per sample against tree-packed rows (a row per state).

  python benchmarks/online_step.py --states=8 --context=1000 --samples=4 --action_tokens=32

Gemma 3 270M (the embedded weights, fp32, remat "full", attention in query blocks of 256),
`micro_rows` rows per micro-batch in both layouts (on XLA:CPU an 8 x 1,024-token micro-batch of
this model needs 19.6 GiB of temporaries), `states` contexts of `context` random
tokens, G = `samples` actions of `action_tokens` tokens each at temperature 1 (no stop). The step's
three parts, as the trainer runs them:
- sampling: each context prefilled once and forked into its G rows (`online.sample_actions`);
- judging: the rule judge (`RuleJudge` through `JudgeScorer`) on every action;
- the update (AdamW, PolicyGradient with RLOO advantages), timed for both layouts of the same
  samples: `online_features` (S x G rows of context + action) and `tree_features` (S rows, the
  context once and the G actions as branches; `OnlineConfig.layout='tree'`).
Sampling and judging are the same for both layouts; the update of each is compiled first and then
timed (median of `repeats`). Prints tokens trained per step, each part's seconds, the update's loss
under both layouts (they must agree), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--states", type=int, default=8)
  parser.add_argument("--context", type=int, default=1000)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--action_tokens", type=int, default=32)
  parser.add_argument("--micro_rows", type=int, default=2,
                      help="rows per micro-batch in both layouts (grad accumulation over the rest)")
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()

  import jax
  from flax import nnx

  from swirl_jax.checkpoints import embedded
  from swirl_jax.data import features
  from swirl_jax.data.decomposition import StateExample
  from swirl_jax.records import Question
  from swirl_jax.rewards.rule_judge import RuleJudge
  from swirl_jax.sampling.sampler import Sampler, SamplingConfig
  from swirl_jax.training.losses import advantages
  from swirl_jax.training.objectives import PolicyGradient
  from swirl_jax.training.online import JudgeScorer, online_features, sample_actions, tree_features
  from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
  from swirl_jax.training.step import jit_train_step, train_step_fn

  print(f"device: {jax.devices()[0].device_kind}")
  model, vocab = embedded.load_gemma3_270m(remat="full", attention_query_block=256)
  s_count, g = args.states, args.samples
  rng = np.random.default_rng(0)
  contexts = {s: rng.integers(3, vocab.vocab_size - 1, args.context).tolist() for s in range(s_count)}
  questions = [Question(f"q{s}", f"What is {s} + {s}?", (str(2 * s),), "builtin_arithmetic") for s in range(s_count)]
  states = [StateExample(f"t{s}", 1, contexts[s], [], 0.0, [], f"q{s}", questions[s].question,
                         questions[s].question) for s in range(s_count)]
  scorer = JudgeScorer(RuleJudge(questions))
  sampler = Sampler(model, rows=s_count * g, capacity=args.context + args.action_tokens, buckets=(128, 512, 1024))
  config = SamplingConfig(temperature=1.0, max_new_tokens=args.action_tokens)

  def sample():
    sampled = sample_actions(sampler, contexts, g, config, key_ids=("online_step",))
    return [a for s in range(s_count) for a in sampled[s]]
  sample()  # compiles
  start = time.perf_counter()
  actions = sample()
  sampling_seconds = time.perf_counter() - start
  start = time.perf_counter()
  rewards = scorer.score([states[i // g] for i in range(len(actions))], actions)
  judging_seconds = time.perf_counter() - start
  adv = advantages(rewards.reshape(s_count, g), "rloo").reshape(-1)
  if not np.any(adv):  # random contexts: the rule judge may score every action alike
    adv = rng.normal(size=adv.shape).astype(np.float32)
  context_list = [contexts[s] for s in range(s_count)]
  row_length = args.context + args.action_tokens
  layouts = {
      "rows": (online_features(context_list, actions, adv, row_length), 1),
      "tree": (tree_features(context_list, actions, adv, args.context + g * (args.action_tokens + 1)), g),
  }
  graphdef, params = nnx.split(model)
  tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, warmup_steps=0), steps=10)
  results = {}
  for name, (feats, per_row) in layouts.items():
    micro_batches = feats[features.INPUT_TOKENS].shape[0] // args.micro_rows
    loss_slots = s_count * g * args.action_tokens // micro_batches  # loss positions per micro-batch
    step = jit_train_step(train_step_fn(graphdef, PolicyGradient(sequences_per_row=per_row), tx, micro_batches))
    batch = jax.tree.map(jax.numpy.asarray, dict(feats))
    copy = lambda: jax.tree.map(jax.numpy.copy, params)  # the step donates params and optimizer state
    fresh = copy()
    _, _, metrics = jax.block_until_ready(step(fresh, tx.init(fresh), batch, None, loss_slots))  # compiles
    seconds = []
    for _ in range(args.repeats):
      fresh = copy()
      opt_state = tx.init(fresh)
      start = time.perf_counter()
      jax.block_until_ready(step(fresh, opt_state, batch, None, loss_slots))
      seconds.append(time.perf_counter() - start)
    trained = int((feats[features.SEGMENT_IDS] > 0).sum())
    results[name] = {"rows": int(feats[features.INPUT_TOKENS].shape[0]), "row_length": int(feats[features.INPUT_TOKENS].shape[1]),
                     "tokens_trained": trained, "update_s": round(statistics.median(seconds), 2),
                     "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
  for name, r in results.items():
    step_seconds = sampling_seconds + judging_seconds + r["update_s"]
    print(json.dumps({"layout": name, **r, "sampling_s": round(sampling_seconds, 2),
                      "judging_s": round(judging_seconds, 3), "online_step_s": round(step_seconds, 2)}))
  rows, tree = results["rows"], results["tree"]
  whole = lambda r: sampling_seconds + judging_seconds + r["update_s"]
  print(json.dumps({"fewer_tokens_trained": round(rows["tokens_trained"] / tree["tokens_trained"], 2),
                    "update_speedup": round(rows["update_s"] / tree["update_s"], 2),
                    "online_step_speedup": round(whole(rows) / whole(tree), 2),
                    "same_loss": bool(np.isclose(rows["loss"], tree["loss"], rtol=1e-4, atol=1e-6))}))


if __name__ == "__main__":
  main()
