"""The fast variant of the miniature reproduction: online RL improves held-out accuracy over the base.

Runs the experiment script end to end as a user would (a subprocess, its own
gin file), with a fixed seed, then reads the results it wrote.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fast_miniature_online_rl_beats_the_base(tmp_path):
  run_dir = tmp_path / "miniature_fast"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "miniature", "run.py"),
       "--gin_file=experiments/miniature/fast.gin", f"--gin.MiniatureConfig.run_dir='{run_dir}'"],
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  results = json.loads((run_dir / "results.json").read_text())
  reports = {(r["method"], r["task"]): r for r in results["reports"]}
  base, swirl = reports[("base", "builtin_arithmetic")], reports[("swirl", "builtin_arithmetic")]
  assert base["questions"] == swirl["questions"] == 200
  assert swirl["accuracy"] > base["accuracy"], (base["accuracy"], swirl["accuracy"])
  assert swirl["good_step_share"] > base["good_step_share"]
  assert (run_dir / "results.png").stat().st_size > 0 and "| swirl |" in (run_dir / "results.md").read_text()
