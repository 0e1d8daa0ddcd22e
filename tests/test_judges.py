"""Judges: the HTTP judge against a flaky local server, the rule judge, the judge stage."""

import hashlib
import http.server
import json
import logging
import os
import threading
import time

import pytest

from swirl_jax import judging
from swirl_jax.data import trajectory_io
from swirl_jax.records import Question
from swirl_jax.rewards.http_judge import HttpJudge
from swirl_jax.rewards.judge import OutcomeRequest, ProcessRequest, parse_label
from swirl_jax.rewards.rule_judge import RuleJudge
from swirl_jax.testing.judged import known_trajectories
from swirl_jax.testing.local_server import serving

SECRET = "sk-test-7f3a9c1e-DO-NOT-LEAK"


class FlakyJudgeServer(http.server.BaseHTTPRequestHandler):
  """An OpenAI-style chat endpoint whose behaviour depends on the prompt's hash."""

  healthy = False
  requests = 0
  lock = threading.Lock()

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    with self.lock:
      type(self).requests += 1
    assert self.headers.get("Authorization") == f"Bearer {SECRET}"
    prompt = body["messages"][0]["content"]
    kind = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 5
    if kind == 0 and not self.healthy:
      self.send_response(500)
      self.end_headers()
      return
    if kind == 1 and not self.healthy:
      time.sleep(1.0)  # past the client's timeout
    if kind == 2:
      content = "I am not sure what you mean."  # garbage: no verdict
    else:
      label = "YES" if "Correct answer" in prompt else "GOOD"
      content = f"The step uses the right numbers.\nVERDICT: {label}"
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    try:
      self.send_response(200)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
      pass

  def log_message(self, *args):
    pass


@pytest.fixture()
def server():
  FlakyJudgeServer.healthy, FlakyJudgeServer.requests = False, 0
  with serving(FlakyJudgeServer) as port:
    yield f"http://127.0.0.1:{port}/v1"


def _verdicts(directory):
  trajectories = list(trajectory_io.read_all(directory))
  return [s.process for t in trajectories for s in t.steps] + [t.outcome for t in trajectories]


def test_http_judge_survives_a_flaky_server_and_resumes_from_its_cache(server, tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("SWIRL_JUDGE_API_KEY", SECRET)
  caplog.set_level(logging.DEBUG)
  source, judged, cache = tmp_path / "trajectories", tmp_path / "judged", tmp_path / "cache"
  trajectories = known_trajectories()
  for t in trajectories:  # Stage 1 files carry no verdicts
    t.outcome = None
    for s in t.steps:
      s.process = None
  trajectory_io.write_shard(trajectory_io.shard_path(str(source), 0), trajectories[:3])
  trajectory_io.write_shard(trajectory_io.shard_path(str(source), 1), trajectories[3:])
  judge = HttpJudge(server, "judge-model", str(cache), concurrency=4, timeout_s=0.3, retries=1, backoff_s=0.01)

  judging.judge_directory(str(source), str(judged), judge)
  first = _verdicts(str(judged))
  assert len(first) == sum(len(t.steps) + 1 for t in trajectories)
  failed = [v for v in first if v.verdict is None and v.error.startswith("judge request failed")]
  garbage = [v for v in first if v.error == "unparseable judge output"]
  good = [v for v in first if v.verdict is not None]
  assert failed and garbage and good and len(failed) + len(garbage) + len(good) == len(first)
  assert all(v.score in (0.0, 1.0) for v in good)

  FlakyJudgeServer.healthy, FlakyJudgeServer.requests = True, 0
  judging.judge_directory(str(source), str(judged), judge)
  second = _verdicts(str(judged))
  # Only what failed was asked again; the rest came from the cache.
  assert FlakyJudgeServer.requests == len(failed)
  assert sum(v.verdict is not None for v in second) == len(good) + len(failed)
  assert [v for v in second if v.verdict is None] == garbage

  FlakyJudgeServer.requests = 0
  judging.judge_directory(str(source), str(judged), judge)  # nothing left to do
  assert FlakyJudgeServer.requests == 0

  # The key is in no file the run wrote, nor in its log.
  for root, _, files in os.walk(tmp_path):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert SECRET.encode() not in f.read(), name
  assert SECRET not in caplog.text


def test_parse_label():
  assert parse_label("blah\nVERDICT: GOOD", ("GOOD", "BAD")) == "GOOD"
  assert parse_label("It is GOOD... no, BAD", ("GOOD", "BAD")) == "BAD"
  assert parse_label("verdict: **bad**", ("GOOD", "BAD")) == "BAD"
  assert parse_label("YES", ("GOOD", "BAD")) is None
  assert parse_label("", ("YES", "NO")) is None


def test_rule_judge_on_builtin_steps():
  math = Question("m", "...", ("26",), "builtin_arithmetic", ("3 * 12", "36 - 10"))
  search = Question("s", "...", ("Morland",), "builtin_encyclopedia",
                    ("founder of the Ardent Company", "Lena Orvo born", "Tessa country"))
  judge = RuleJudge([math, search], search_titles=["Ardent Company", "Lena Orvo", "Tessa", "Pellina"])
  step = lambda q, action, context="Question: ...": judge.judge_step(
      ProcessRequest("...", context, action, "", q, 0)).verdict
  assert step("m", "total <math_exp>12 * 3</math_exp>") == "GOOD"
  assert step("m", "<math_exp>36 - 10</math_exp>", "<start_of_turn>model\n<math_exp>3*12</math_exp>") == "GOOD"
  assert step("m", "<math_exp>3 * 12</math_exp>", "<start_of_turn>model\n<math_exp>3*12</math_exp>") == "BAD"
  assert step("m", "<math_exp>3 * 12</math_exp>", "Step 1: <math_exp>3*12</math_exp>\nResult: 3*12 -> 36.0") == "BAD"
  assert step("m", "<math_exp>3 + 12</math_exp>") == "BAD"
  assert step("m", "<answer>26</answer>") == "GOOD" and step("m", "<answer>25</answer>") == "BAD"
  assert step("m", "no tag") == "BAD"
  assert step("s", "<search_query>Lena Orvo birthplace</search_query>") == "GOOD"
  assert step("s", "<search_query>Pellina</search_query>") == "BAD"
  assert step("s", "<search_query>Tessa</search_query>",
              "Result: Tessa country -> Tessa: Tessa is a city") == "BAD"  # already retrieved
  outcome = judge.judge_outcomes([OutcomeRequest("...", "$26.00", ("26",)), OutcomeRequest("...", None, ("26",))])
  assert [v.verdict for v in outcome] == ["YES", "NO"]


def test_online_scorer_judges_fresh_actions_in_the_state_s_transcript():
  """Stage 2 scores a sampled action with the question id and transcript of its logged state,
  exactly as Stage 1 steps are judged (the rule judge needs both)."""
  from swirl_jax.data.decomposition import expand
  from swirl_jax.records import Step, Trajectory
  from swirl_jax.sampling.interfaces import TurnOutput
  from swirl_jax.training.online import JudgeScorer
  math = Question("m", "...", ("26",), "builtin_arithmetic", ("3 * 12", "36 - 10"))
  first = Step(0, [2, 5], "", [7], "<math_exp>3 * 12</math_exp>", [0.0], "tool", "stop_string", "math_exp",
               "3 * 12", "36.0")
  second = Step(1, [8], "", [9], "<answer>26</answer>", [0.0], "answer", "stop_string")
  states = expand(Trajectory("m#0", "m", 0, "builtin_arithmetic", "...", ["26"], [first, second], "26",
                             "answered"))
  assert states[1].question_id == "m" and "Result: 3 * 12 -> 36.0" in states[1].transcript
  actions = [TurnOutput([1], [0.0], text, "stop_string") for text in
             ("<math_exp>36 - 10</math_exp>", "<math_exp>3 * 12</math_exp>", "<answer>26</answer>", "oops")]
  scores = JudgeScorer(RuleJudge([math])).score([states[1]] * 4, actions)
  assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_the_rule_judge_refuses_a_task_without_gold_steps():
  from swirl_jax.records import Question
  from swirl_jax.judging import make_judge
  from swirl_jax.tasks import build_task
  gsm8k_like = [Question("gsm8k-test-0", "How many?", ("3",), "gsm8k")]
  with pytest.raises(ValueError, match="have none; use make_judge.kind='model' or 'http'"):
    make_judge(kind="rule", questions=gsm8k_like, task=build_task(num_questions=2))
  assert make_judge(kind="rule", task=build_task(num_questions=2)).name == "rule"
