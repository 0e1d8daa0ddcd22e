"""Grading and the report. The pipeline mode itself, end to end and resumed, is tested in
tests/test_multihost_stages.py (on 1 and on 2 processes)."""


from swirl_jax.evaluation import grade, wilson_interval, write_comparison
from swirl_jax.testing.judged import known_trajectories


def test_grading_and_report(tmp_path):
  low, high = wilson_interval(45, 100)
  assert 0.35 < low < 0.36 and 0.54 < high < 0.55
  assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
  trajectories = known_trajectories()
  trajectories[0].final_answer = "A"  # gold "a": correct after normalization
  trajectories[1].final_answer = None
  report = grade(trajectories)
  assert report["questions"] == 6 and report["correct"] == 5 and report["answered"] == 5 / 6
  report.update(name="base", task="test")
  table = write_comparison([report, {**report, "name": "trained"}], str(tmp_path))
  assert "| base | test | 0.833 |" in table
  assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
