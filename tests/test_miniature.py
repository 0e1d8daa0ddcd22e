"""The learning test: `make demo`'s configuration, run as a user runs it, shows a significant gain.

Runs the experiment script end to end (a subprocess, `experiments/miniature/demo.gin`: the same
500 held-out problems, seed and settings as `make demo`), then reads the results it wrote: the
process-filtered SWiRL policy's 95% interval lies wholly above the base's.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_demo_s_online_rl_beats_the_base_beyond_the_95_percent_intervals(tmp_path):
  run_dir = tmp_path / "demo"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "miniature", "run.py"),
       "--gin_file=experiments/miniature/demo.gin", f"--gin.MiniatureConfig.run_dir='{run_dir}'"],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  results = json.loads((run_dir / "results.json").read_text())
  reports = {(r["method"], r["task"]): r for r in results["reports"]}
  base, swirl = reports[("base", "builtin_arithmetic")], reports[("swirl", "builtin_arithmetic")]
  assert base["questions"] == swirl["questions"] == 500
  assert swirl["accuracy_95ci"][0] > base["accuracy_95ci"][1], (base["accuracy_95ci"], swirl["accuracy_95ci"])
  assert results["claims"]["calculator"]["beats_base_beyond_95ci"]
  assert swirl["good_step_share"] > base["good_step_share"]
  assert "do not overlap" in done.stdout
  assert (run_dir / "results.png").stat().st_size > 0 and "| swirl |" in (run_dir / "results.md").read_text()
