"""The command line reads and checks its data before loading a model, and fails in one line."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
  env = {**os.environ, "SWIRL_JAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
  # A model that cannot load: a data error must be reported before anything tries to load it.
  no_model = ["--gin.load_policy.source='gguf'", f"--gin.load_policy.path='{tmp_path / 'missing.gguf'}'"]
  return subprocess.run([sys.executable, "-m", "swirl_jax.main", *args, *no_model], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True)


def _latin1_gsm8k(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(json.dumps({"question": "ok", "answer": "#### 1"}).encode() + b"\n"
                   + '{"question": "caf\u00e9", "answer": "#### 2"}\n'.encode("latin-1"))
  return path


def test_a_bad_data_file_fails_in_one_line_before_the_model_loads(tmp_path):
  path = _latin1_gsm8k(tmp_path)
  done = _run(tmp_path, "--mode=generate", "--gin.build_task.name='gsm8k'", f"--gin.build_task.path='{path}'")
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback (most recent" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("swirl_jax: ValueError: ") and f"{path}:2: not UTF-8 text" in last, last
  assert "missing.gguf" not in last and "(in build_task)" in last and "<function" not in last, last
  verbose = _run(tmp_path, "--mode=generate", "--verbose", "--gin.build_task.name='gsm8k'",
                 f"--gin.build_task.path='{path}'")
  assert verbose.returncode != 0 and "Traceback (most recent" in verbose.stderr and "not UTF-8 text" in verbose.stderr


def test_evaluate_without_held_out_questions_fails_before_the_model(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text(json.dumps({"question": "How many?", "answer": "#### 3"}) + "\n")
  done = _run(tmp_path, "--mode=evaluate", "--gin.build_task.name='gsm8k'", f"--gin.build_task.path='{path}'")
  assert done.returncode == 1 and "Traceback (most recent" not in done.stderr, done.stderr[-3000:]
  assert "no held-out questions; set build_task.eval_path" in done.stderr.strip().splitlines()[-1]
