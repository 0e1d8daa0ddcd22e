"""Train-step speed of Gemma 3 270M: our offline and online steps, and the same step in torch.

  python benchmarks/train_step.py --batch=4 --seq_len=512 --action_tokens=64

Each measurement runs in its own process so peak memory (max RSS) is its own.
  ours-offline: the jitted reward-weighted step (AdamW), logits only at the action tokens;
  ours-online:  one online RL step: sample G=4 actions for each of `batch` states in the
                same params, score them, the policy-gradient update (4 rows per micro-batch);
  torch:        transformers' Gemma3ForCausalLM (same GGUF weights, fp32), the same batch,
                cross-entropy on the action tokens only, AdamW (torch's usual path: full logits).
Prints tokens/s, step time, peak RSS, the offline ratio ours / torch, and for our steps the
update's achieved FLOP/s over the XLA matmul peak measured in the same process and dtype: FLOPs
from XLA's cost analysis of the compiled update (what it computes: every position of the
forward and backward, dense masked attention, logits only at the gathered loss slots), time
from the update alone (online sampling is in the step time, not in the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _batch(batch, seq_len, action_tokens, vocab=262_144, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (batch, seq_len)).astype(np.int32)
  tokens[:, 0] = 2
  weights = np.zeros((batch, seq_len), np.float32)
  weights[:, seq_len - action_tokens - 1:seq_len - 1] = 1.0  # predict the last action_tokens tokens
  return tokens, weights


def run_ours(args, mode):
  sys.path.insert(0, HERE)
  import numpy as np
  import matmul_peak
  from swirl_jax.models import init_model, model_config
  from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer
  from swirl_jax.records import Step, Trajectory, Verdict

  config = model_config("gemma3_270m")
  model = init_model(config)
  tokens, weights = _batch(args.batch, args.seq_len, args.action_tokens)
  n_ctx = args.seq_len - args.action_tokens
  trajectories = [Trajectory(f"t{i}#0", f"t{i}", 0, "bench", "", ["1"], [Step(
      0, tokens[i, :n_ctx].tolist(), "", tokens[i, n_ctx:].tolist(), "", [0.0] * args.action_tokens, "tool",
      "stop_string", process=Verdict("GOOD", 1.0))], "1", "answered") for i in range(args.batch)]

  class RandomScorer:
    def score(self, states, actions):
      return np.random.default_rng(0).random(len(actions)).astype(np.float32)

  # The peak in the step's compute dtype (fp32 here), measured in this process; given to the
  # trainer, which then reports XLA's FLOP count of the compiled update and the update's time.
  peak = matmul_peak.xla_matmul_peak(config.dtype)
  # Online: batch x 4 sampled rows per step; accumulate over micro-batches of 4 rows to fit 24 GB.
  rows = args.batch * 4 if mode == "online" else args.batch
  train = TrainConfig(mode=mode, steps=10_000, batch_size=rows, grad_accum_steps=args.batch if mode == "online" else 1,
                      sequence_length=args.seq_len + 128, checkpoint_every=10_000,
                      checkpoint_dir=os.path.join(args.tmp, f"ckpt_{mode}"), log_every=10_000, peak_flops=peak)
  trainer = Trainer(model, trajectories, train, optimizer=OptimizerConfig(learning_rate=1e-6),
                    online_config=OnlineConfig(samples_per_state=4, max_action_tokens=args.action_tokens),
                    scorer=RandomScorer() if mode == "online" else None,
                    metrics_dir=os.path.join(args.tmp, f"metrics_{mode}"))
  steps = []
  for i in range(args.steps + 1):
    metrics = trainer.run_step()
    if i:  # the first step compiles
      steps.append(metrics)
  median = lambda key: float(np.median([m[key] for m in steps]))
  seconds, update_seconds = median("step_seconds"), median("update_seconds")
  flops = float(np.mean([m["update_flops_per_device"] for m in steps]))
  tokens = float(np.mean([m["trained_tokens"] + m.get("sampled_tokens", 0) for m in steps]))
  return {"step_seconds": seconds, "update_seconds": update_seconds, "tokens_per_second": tokens / seconds,
          "update_gflops": flops / 1e9, "achieved_gflops": flops / update_seconds / 1e9,
          "ratio_to_peak": flops / update_seconds / peak, "peak_gflops": peak / 1e9,
          "old_count_gflops": 6 * config.num_params() * float(np.mean([m["trained_tokens"] for m in steps])) / 1e9}


def run_torch(args):
  import numpy as np
  import torch
  import transformers
  from swirl_jax.checkpoints import embedded
  torch.set_num_threads(os.cpu_count())
  directory, name = os.path.split(embedded.gemma3_270m_gguf_path())
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
  tokens, weights = _batch(args.batch, args.seq_len, args.action_tokens)
  ids = torch.from_numpy(tokens).long()
  labels = ids.clone()
  labels[torch.from_numpy(np.roll(weights, 1, axis=1) == 0)] = -100  # loss only on action tokens
  times = []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if i:
      times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return {"step_seconds": seconds, "tokens_per_second": tokens.size / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--action_tokens", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--which", default="all", choices=["all", "offline", "online", "torch"])
  parser.add_argument("--tmp", default="/tmp/swirl_train_bench")
  args = parser.parse_args()
  if args.which != "all":
    result = run_torch(args) if args.which == "torch" else run_ours(args, args.which)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))
    return
  results = {}
  for which in ("offline", "online", "torch"):
    out = subprocess.run([sys.executable, __file__, f"--which={which}", f"--batch={args.batch}",
                          f"--seq_len={args.seq_len}", f"--action_tokens={args.action_tokens}",
                          f"--steps={args.steps}", f"--tmp={args.tmp}"], capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
      raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    results[which] = json.loads(line[0][len("RESULT "):])
    print(which, json.dumps(results[which]), flush=True)
  ratio = results["torch"]["step_seconds"] / results["offline"]["step_seconds"]
  print(f"\nbatch {args.batch} x {args.seq_len} tokens, loss on {args.action_tokens} action tokens per row")
  for which, r in results.items():
    extra = (f", update {r['update_seconds']:.2f} s: {r['update_gflops']:.0f} GFLOP (XLA) at "
             f"{r['achieved_gflops']:.0f} GFLOP/s = {r['ratio_to_peak']:.2f} x peak {r['peak_gflops']:.0f}"
             if "ratio_to_peak" in r else "")
    print(f"{which:>8}: {r['step_seconds']:.2f} s/step, {r['tokens_per_second']:.0f} tokens/s{extra}, "
          f"peak RSS {r['peak_rss_gb']:.1f} GB")
  print(f"offline step: ours is {ratio:.2f}x faster than torch")


if __name__ == "__main__":
  main()
