"""Online steps against a judge that takes seconds: the synchronous loop against the pipelined one.

  python benchmarks/online_overlap.py --model=tiny --states=56 --action_tokens=96
  python benchmarks/online_overlap.py --model=gemma3_270m --states=4 --action_tokens=24

A judge served on 127.0.0.1 (an OpenAI-style chat endpoint) answers each prompt after a latency
drawn from a log-normal distribution (median `--median_s`, 2 s by default; `--sigma` sets its long
right tail), seeded by the prompt, so that both runs meet the same latency for the same request;
its verdict is a hash of the prompt. The trainer judges through `HttpJudge` (a fresh cache for each
run) and `JudgeScorer`, as the pipeline does, `--judge_threads` states at once.

Two runs of `--steps` online steps from the same initial params, data and seed, the same states and
the same number of updates: `OnlineConfig.max_staleness` 0 (sample, judge, update in turn) and 1 (the
next batch sampled, and this one trained on, while the judge works). The first `--warmup` steps
(compiling) are left out. Prints, for each run, the mean step seconds and its parts (sampling, the
update, the batch's judging, and the mesh's wait for verdicts), the mesh's idle share (its wait over
the step), the judge's latency percentiles, and the ratio of the step times.

At max_staleness 1 a batch is judged while the mesh samples the next and updates on this one, so
its step takes about max(S + U, J) against S + U + J synchronously (S sampling, U the update, J the
batch's slowest verdict): the ratio is at most 2, reached where the mesh's work matches the judge's
latency. `--states` and `--action_tokens` set the mesh's work.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def latency_judge(median_s: float, sigma: float):
  """A chat endpoint answering after a log-normal latency seeded by the prompt (a hash verdict)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      prompt = body["messages"][-1]["content"]
      digest = hashlib.sha256(prompt.encode()).digest()
      rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
      time.sleep(median_s * float(np.exp(sigma * rng.standard_normal())))
      label = "GOOD" if digest[8] % 2 == 0 else "BAD"
      answer = json.dumps({"choices": [{"message": {"content": f"VERDICT: {label}"}}]}).encode()
      self.send_response(200)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(answer)))
      self.end_headers()
      self.wfile.write(answer)

    def log_message(self, *args):
      pass

  return Handler


def trajectories(count: int, vocab_size: int, seed: int = 0):
  """Judged trajectories of random tokens, two steps of 32-token contexts: a batch's rows (a state and
  up to 96 action tokens) take 192 tokens, so one update program serves every step."""
  from swirl_jax.records import Step, Trajectory, Verdict
  rng = np.random.default_rng(seed)
  out = []
  for t in range(count):
    steps = []
    for i in range(2):
      context = rng.integers(3, vocab_size - 1, 32).tolist()
      action = rng.integers(3, vocab_size - 1, 4).tolist()
      steps.append(Step(index=i, context_tokens=context, context_text=f"problem {t}, step {i}",
                        action_tokens=action, action_text=f"action {t}.{i}", behaviour_logprobs=[-1.0] * 4,
                        kind="tool", finish_reason="stop_string", process=Verdict("GOOD", 1.0, judge="bench")))
    out.append(Trajectory(id=f"q{t}#0", question_id=f"q{t}", sample_index=0, source="bench",
                          question=f"What is {t} + {t}?", gold_answers=[str(2 * t)], steps=steps,
                          final_answer=str(2 * t), finish="answered", outcome=Verdict("YES", 1.0, judge="bench")))
  return out


class TokenIdVocab:
  """The tiny model's vocabulary for this benchmark: an action reads as its token ids, so that every
  action is its own judge request (no text, and the judge's cache would answer from the state alone)."""

  bos_id, eos_id = 2, 1

  def encode(self, text):
    return [int(t) for t in text.split()]

  def decode(self, ids):
    return " ".join(map(str, ids))


def run(args, staleness: int, url: str, workdir: str) -> list[dict]:
  from swirl_jax.checkpoints import embedded
  from swirl_jax.models import init_model, model_config
  from swirl_jax.rewards.http_judge import HttpJudge
  from swirl_jax.training.online import JudgeScorer
  from swirl_jax.training.trainer import OnlineConfig, OptimizerConfig, TrainConfig, Trainer

  if args.model == "tiny":
    model, vocab = init_model(model_config("tiny"), seed=0), TokenIdVocab()
  else:
    model, vocab = embedded.load_gemma3_270m()
  judge = HttpJudge(url, "latency", cache_dir=os.path.join(workdir, f"cache{staleness}"), concurrency=8,
                    timeout_s=60.0)
  g = args.samples
  config = TrainConfig(mode="online", steps=args.steps, batch_size=args.states * g, sequence_length=192,
                       loss_slot_levels=1, checkpoint_every=10_000, log_every=10_000,
                       checkpoint_dir=os.path.join(workdir, f"ckpt{staleness}"))
  trainer = Trainer(model, trajectories(64, model.config.vocab_size), config, scorer=JudgeScorer(judge), vocab=vocab,
                    optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=1),
                    online_config=OnlineConfig(samples_per_state=g, max_action_tokens=args.action_tokens,
                                               temperature=1.0, max_staleness=staleness,
                                               judge_threads=args.judge_threads))
  log = []
  for step in range(args.steps):
    log.append(trainer.run_step())
    print(f"  staleness {staleness} step {step}: {log[-1]['step_seconds']:.2f} s "
          f"(waited {log[-1]['judge_wait_seconds']:.2f} s)", flush=True)
  return log[args.warmup:]


def summary(log: list[dict]) -> dict:
  mean = lambda key: statistics.fmean(r[key] for r in log)
  return {"step": mean("step_seconds"), "sampling": mean("sampling_seconds"), "update": mean("update_seconds"),
          "judge": mean("judge_seconds"), "wait": mean("judge_wait_seconds"),
          "idle": sum(r["judge_wait_seconds"] for r in log) / sum(r["step_seconds"] for r in log),
          "p50": mean("judge_latency_p50"), "p99": mean("judge_latency_p99"), "max": mean("judge_latency_max")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("tiny", "gemma3_270m"), default="tiny")
  parser.add_argument("--states", type=int, default=56)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--action_tokens", type=int, default=96)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--median_s", type=float, default=2.0)
  parser.add_argument("--sigma", type=float, default=0.25)
  parser.add_argument("--judge_threads", type=int, default=64)
  args = parser.parse_args()

  import jax

  print(f"device: {jax.devices()[0].device_kind}; model {args.model}; {args.states} states x {args.samples} "
        f"samples of {args.action_tokens} tokens; judge latency log-normal, median {args.median_s} s, "
        f"sigma {args.sigma}; {args.steps} steps, the first {args.warmup} not timed")
  results = {}
  # A listen backlog for every request of a batch at once (socketserver's default of 5 turns a burst
  # of connections into SYN retries: seconds of latency the judge did not set).
  server = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 4096, "daemon_threads": True})(
      ("127.0.0.1", 0), latency_judge(args.median_s, args.sigma))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    with tempfile.TemporaryDirectory() as workdir:
      for staleness in (0, 1):
        results[staleness] = summary(run(args, staleness, f"http://127.0.0.1:{server.server_address[1]}/v1", workdir))
  finally:
    server.shutdown()
    server.server_close()
  print("| max_staleness | step s | sampling s | update s | judging s (batch) | mesh waited s | mesh idle | "
        "a state's verdicts p50 / p99 / max s |")
  print("|---|---|---|---|---|---|---|---|")
  for staleness, r in results.items():
    print(f"| {staleness} | {r['step']:.2f} | {r['sampling']:.2f} | {r['update']:.2f} | {r['judge']:.2f} | "
          f"{r['wait']:.2f} | {100 * r['idle']:.0f}% | {r['p50']:.2f} / {r['p99']:.2f} / {r['max']:.2f} |")
  print(f"step time, max_staleness 0 / 1: {results[0]['step'] / results[1]['step']:.2f}x")


if __name__ == "__main__":
  main()
