"""Every stage on 2 CPU processes (gloo, 127.0.0.1) gives what 1 process gives, through the CLI.

One process on one device runs `--mode=pipeline` (base evaluation, Stage 1,
judging, online RL, evaluation); then 2 processes (one device each, data=2) run
the same pipeline, `--mode=generate` and `--mode=evaluate`. Trajectories, reports,
judged counts and final params must agree, and the judge's request logs show
every request sent exactly once over both processes. Then a 2-process x
4-device online run (a hybrid mesh, each process one "slice"), its steps pipelined
(`OnlineConfig.max_staleness=1`), gets SIGTERM in one process: both save the same step and exit
0, and the restarted run ends with the params of an uninterrupted run of 1 process x 8 devices,
having judged every action once.

The pipeline runs train online with tree-packed rows (`OnlineConfig.layout='tree'`, a row per
state), the SIGTERM runs with a row per sample.

The judge is an HTTP judge served on 127.0.0.1 that calls a step GOOD or BAD by a
hash of its prompt: its verdicts vary per action, so the RLOO advantages, and
the updates, are not zero.
"""

import collections
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from swirl_jax.data import trajectory_io
from swirl_jax.rewards.request_log import read_request_logs
from swirl_jax.testing.local_server import serving
from swirl_jax.testing.subprocesses import free_port

pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def _bindings(tokenizer, run_dir, judge_url):
  return [
      "load_policy.source='init'", "load_policy.config_name='tiny'", f"load_policy.tokenizer_gguf='{tokenizer}'",
      "build_task.name='builtin_arithmetic'", "build_task.num_questions=8", "PromptTemplate.examples=()",
      "PromptTemplate.instructions='Solve.'", "build_task.arithmetic_max_steps=2",
      "make_judge.kind='http'", f"make_judge.http_base_url='{judge_url}'", "make_judge.http_model='hash'",
      f"make_judge.cache_dir='{run_dir}/judge_cache'", f"make_judge.request_log_dir='{run_dir}/judge_requests'",
      f"PipelineConfig.run_dir='{run_dir}'", "PipelineConfig.filter_strategy='none'",
      "PipelineConfig.eval_questions=6",
      "GenerateConfig.samples_per_question=2", "GenerateConfig.rows=4", "GenerateConfig.capacity=512",
      "GenerateConfig.questions_per_shard=2", "GenerateConfig.seed=3", f"GenerateConfig.output_dir='{run_dir}/trajectories'",
      "EpisodeConfig.max_action_tokens=12", "EpisodeConfig.max_steps=2", "EpisodeConfig.temperature=1.0",
      "EpisodeConfig.on_malformed='feedback'",
      "EvalConfig.rows=4", "EvalConfig.capacity=512", "EvalConfig.max_action_tokens=12",
      "EvalConfig.questions_per_shard=2", f"EvalConfig.output_dir='{run_dir}/eval'",
      "TrainConfig.mode='online'", f"TrainConfig.steps={STEPS}", "TrainConfig.batch_size=4",
      "OnlineConfig.samples_per_state=2", "OnlineConfig.max_action_tokens=8", "TrainConfig.sequence_length=512",
      "OnlineConfig.temperature=1.0", "OnlineConfig.layout='tree'", "OptimizerConfig.learning_rate=1e-3",
      "OptimizerConfig.warmup_steps=1",
      "TrainConfig.checkpoint_every=100", "TrainConfig.log_every=1",
      f"TrainConfig.checkpoint_dir='{run_dir}/checkpoints'",
      f"run_train.judged_dir='{run_dir}/judged'", "run_train.filter_strategy='none'",
  ]


class _HashJudge(http.server.BaseHTTPRequestHandler):
  """An OpenAI-style chat endpoint whose verdict is a hash of the prompt."""

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    prompt = body["messages"][-1]["content"]
    good = hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0
    labels = ("GOOD", "BAD") if "VERDICT: GOOD" in prompt else ("YES", "NO")
    answer = json.dumps({"choices": [{"message": {"content": f"VERDICT: {labels[0] if good else labels[1]}"}}]})
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(answer.encode())

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def judge_url():
  with serving(_HashJudge) as port:
    yield f"http://127.0.0.1:{port}/v1"



def cpu_env(tmp, devices):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "SWIRL_JAX_CACHE": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _start(tmp, mode, bindings, processes=1, devices=1, log_name="log"):
  """Starts the CLI in `processes` processes; returns (popens, log paths)."""
  port = free_port()
  procs, logs = [], []
  for index in range(processes):
    command = [sys.executable, "-m", "swirl_jax.main", f"--mode={mode}"] + [f"--gin.{b}" for b in bindings]
    if processes > 1:
      command += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                  f"--process_id={index}"]
    log = tmp / f"{log_name}-{mode}-{index}.txt"
    procs.append(subprocess.Popen(command, env=cpu_env(tmp, devices), cwd=REPO, stdout=open(log, "w"),
                                  stderr=subprocess.STDOUT))
    logs.append(log)
  return procs, logs


def _run(tmp, mode, bindings, processes=1, devices=1, log_name="log"):
  procs, logs = _start(tmp, mode, bindings, processes, devices, log_name)
  codes = [p.wait(timeout=900) for p in procs]
  assert codes == [0] * processes, "\n".join(log.read_text()[-4000:] for log in logs)
  return [log.read_text() for log in logs]


def _trajectories(directory):
  return [(t.id, [(s.context_tokens, s.action_tokens, s.action_text, s.tool_output) for s in t.steps], t.final_answer)
          for t in sorted(trajectory_io.read_all(directory), key=lambda t: t.id)]


def _params(checkpoint_dir):
  from flax import nnx
  from swirl_jax.models import init_model, model_config
  from swirl_jax.training.trainer import load_trained_params
  model = init_model(model_config("tiny"), seed=0)
  step = load_trained_params(model, str(checkpoint_dir))
  return step, {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


def _assert_params_close(a, b, atol=1e-5):
  assert set(a) == set(b) and len(a) > 10
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=atol, err_msg=name)


def _report(path):
  """A report less its time and its model's identity: the 1- and 2-process runs trained on data
  whose behaviour log-probs differ in their last float bits, so their training digests differ."""
  report = json.loads(path.read_text())
  return {k: v for k, v in report.items() if k not in ("seconds", "model")}


def _requests(directory):
  return collections.Counter(json.dumps({k: v for k, v in r.items() if k != "process"}, sort_keys=True)
                             for r in read_request_logs(directory))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_gguf, judge_url):
  """The 1-process and the 2-process pipeline runs."""
  tmp = tmp_path_factory.mktemp("multihost")
  one, two = tmp / "one", tmp / "two"
  bindings = lambda run_dir: _bindings(tokenizer_gguf, run_dir, judge_url)
  _run(tmp, "pipeline", bindings(one), log_name="one")
  _run(tmp, "pipeline", bindings(two), processes=2, log_name="two")
  return tmp, one, two, bindings


def test_pipeline_on_two_processes_matches_one(runs):
  _, one, two, _ = runs
  assert (two / "summary.json").exists()
  assert json.loads((two / "summary.json").read_text())["processes"] == 2
  # Stage 1: the same trajectories (ids, token ids, text), each process wrote its own shards.
  assert _trajectories(one / "trajectories") == _trajectories(two / "trajectories")
  assert len(_trajectories(one / "trajectories")) == 16
  assert sum(len(steps) for _, steps, _ in _trajectories(one / "trajectories")) >= 16
  assert sorted(p.name for p in (two / "trajectories").glob("summary-p*.json")) == ["summary-p000.json",
                                                                                    "summary-p001.json"]
  assert json.loads((one / "trajectories" / "summary.json").read_text()) == \
      {**json.loads((two / "trajectories" / "summary.json").read_text()), "processes": 1}
  # Judging and both evaluations: the same counts and reports.
  assert json.loads((one / "judged" / "judge_summary.json").read_text()) == \
      json.loads((two / "judged" / "judge_summary.json").read_text())
  for name in ("base", "trained"):
    assert _report(one / "eval" / name / "report.json") == _report(two / "eval" / name / "report.json")
  # Online RL: the same params after STEPS steps, and they moved.
  step_one, params_one = _params(one / "checkpoints")
  step_two, params_two = _params(two / "checkpoints")
  assert step_one == step_two == STEPS
  _assert_params_close(params_one, params_two)
  from flax import nnx
  from swirl_jax.models import init_model, model_config
  initial = {"/".join(map(str, k)): np.asarray(v[...])
             for k, v in nnx.to_flat_state(nnx.state(init_model(model_config("tiny"), seed=0)))}
  assert max(np.abs(params_one[k] - initial[k]).max() for k in initial) > 1e-3
  # Every judge request (Stage 1 judging, both evaluations, every sampled action of every
  # online step) was sent exactly once over both processes, and each process sent some.
  requests_one, requests_two = _requests(one / "judge_requests"), _requests(two / "judge_requests")
  assert requests_one == requests_two
  assert {r["process"] for r in read_request_logs(two / "judge_requests")} == {0, 1}
  sampled = sum(n for r, n in requests_two.items() if json.loads(r)["kind"] == "process")
  assert sampled >= STEPS * 2 * 2  # at least the online samples: steps x states x G


def test_pipeline_reports_and_resumes_without_redoing_anything(runs):
  tmp, one, _, make_bindings = runs
  summary = json.loads((one / "summary.json").read_text())
  assert summary["train_steps"] == STEPS and summary["filter_survival"]["none"] == 16
  for name in ("report.md", "report.png", "comparison.json"):
    assert (one / "eval" / name).stat().st_size > 0
  printed = (tmp / "one-pipeline-0.txt").read_text()
  shown = re.search(r"^base accuracy (\S+) \[.*\] -> trained (\S+) \[.*\]$", printed, re.MULTILINE)
  assert shown and float(shown.group(1)) == round(summary["base_accuracy"], 3), printed[-2000:]
  assert float(shown.group(2)) == round(summary["trained_accuracy"], 3)
  trained_report = json.loads((one / "eval" / "trained" / "report.json").read_text())
  assert trained_report["checkpoint_step"] == STEPS and trained_report["model"]["checkpoint"]["step"] == STEPS
  assert "One held-out episode of the trained model" in printed and "--- step 0: action" in printed
  assert (one / "metrics" / "metrics.jsonl").exists()
  stamps = {p: os.stat(p).st_mtime_ns for p in one.rglob("trajectories-s*.jsonl")}
  _run(tmp, "pipeline", make_bindings(one) + [f"make_judge.request_log_dir='{one}/judge_requests_again'"],
       log_name="one-again")
  assert {p: os.stat(p).st_mtime_ns for p in one.rglob("trajectories-s*.jsonl")} == stamps  # nothing redone
  assert json.loads((one / "trajectories" / "summary-p000.json").read_text())["shards_generated_now"] == 0
  assert json.loads((one / "summary.json").read_text())["train_steps"] == STEPS


def test_generate_and_evaluate_modes_on_two_processes(runs):
  tmp, one, two, make_bindings = runs
  three = tmp / "three"
  bindings = make_bindings(three)
  _run(tmp, "generate", bindings, processes=2, log_name="three")
  assert _trajectories(three / "trajectories") == _trajectories(one / "trajectories")
  # Resume per process: only process 1's shard 3 is missing, so process 0 has nothing to do but
  # must keep up with process 1's collective sampling until it is done.
  os.unlink(trajectory_io.shard_path(str(three / "trajectories"), 3))
  _run(tmp, "generate", bindings, processes=2, log_name="three-again")
  assert _trajectories(three / "trajectories") == _trajectories(one / "trajectories")
  summaries = [json.loads((three / "trajectories" / f"summary-p{p:03d}.json").read_text()) for p in (0, 1)]
  assert [s["shards_generated_now"] for s in summaries] == [0, 1]
  _run(tmp, "evaluate", bindings + ["run_evaluate.name='trained'", f"run_evaluate.checkpoint_dir='{two}/checkpoints'",
                                    "build_task.num_questions=6"], processes=2, log_name="three")
  assert _report(three / "eval" / "trained" / "report.json") == _report(one / "eval" / "trained" / "report.json")
  # A checkpoint evaluated from its directory is named as the pipeline named the trained model it
  # saved: by its step and training fingerprint, not by where it lies.
  model = lambda run: json.loads((run / "eval" / "trained" / "report.json").read_text())["model"]
  assert model(three) == model(two) and model(three)["checkpoint"]["step"] == STEPS


def test_sigterm_saves_one_step_everywhere_and_the_restart_ends_where_an_uninterrupted_run_does(runs):
  tmp, one, _, make_bindings = runs
  four = tmp / "four"
  mesh = ["MeshConfig.data=2", "MeshConfig.fsdp=2", "MeshConfig.tensor=2", "RuntimeConfig.num_slices=2",
          "RuntimeConfig.slice_granule='process'"]
  # These runs pipeline their steps (each batch sampled one update before it is trained on, judged
  # meanwhile), and train a row per sample (the pipeline runs trained tree-packed rows in turn).
  pipelined = [f"run_train.judged_dir='{one}/judged'", "OnlineConfig.layout='rows'", "OnlineConfig.max_staleness=1"]
  bindings = make_bindings(four) + mesh + pipelined
  procs, logs = _start(tmp, "train", bindings, processes=2, devices=4, log_name="four")
  metrics = four / "metrics" / "metrics.jsonl"
  deadline = time.time() + 600
  while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
    assert time.time() < deadline and all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=600) for p in procs]
  texts = [log.read_text() for log in logs]
  assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
  assert all("preempted: saved step " in t for t in texts), "the run ended before the notice reached it:\n" + \
      "\n".join(t[-2000:] for t in texts)
  saved = [int(t.split("preempted: saved step ")[1].split()[0]) for t in texts]
  assert saved[0] == saved[1] and 1 <= saved[0] < STEPS, saved
  assert _params(four / "checkpoints")[0] == saved[0]

  _run(tmp, "train", bindings, processes=2, devices=4, log_name="four-again")
  step, resumed = _params(four / "checkpoints")
  assert step == STEPS

  # 1 process x 8 devices, same mesh shape, uninterrupted.
  five = tmp / "five"
  _run(tmp, "train", make_bindings(five) + mesh[:3] + pipelined, devices=8, log_name="five")
  _assert_params_close(resumed, _params(five / "checkpoints")[1])
  # The batch in flight at the notice was saved with its verdicts: across the stop and the restart
  # every sampled action was judged once, as in the uninterrupted run.
  assert _requests(four / "judge_requests") == _requests(five / "judge_requests")
  logged = [json.loads(line) for line in (five / "metrics" / "metrics.jsonl").read_text().splitlines()]
  assert [r["staleness"] for r in logged] == [0] + [1] * (STEPS - 1)
