"""Synthetic judged trajectories with known tokens and verdicts, for tests and benchmarks."""

import numpy as np

from swirl_jax.records import Step, Trajectory, Verdict


def make_trajectory(rng, tid, step_verdicts, outcome, vocab=512):
  steps = []
  for i, verdict in enumerate(step_verdicts):
    context = rng.integers(3, vocab, rng.integers(4, 12) if i else rng.integers(12, 20)).tolist()
    action = rng.integers(3, vocab, rng.integers(2, 8)).tolist()
    score = None if verdict is None else float(verdict == "GOOD") * 0.5 + 0.25 + 0.1 * i
    steps.append(Step(
        index=i, context_tokens=context, context_text=f"{tid} context {i}", action_tokens=action,
        action_text=f"{tid} action {i}", behaviour_logprobs=(-rng.random(len(action))).tolist(),
        kind="tool", finish_reason="stop_string",
        process=Verdict(verdict, score, judge="test")))
  return Trajectory(id=tid, question_id=tid.split("#")[0], sample_index=0, source="test",
                    question=f"question of {tid}", gold_answers=["a"], steps=steps, final_answer="a", finish="answered",
                    outcome=Verdict(outcome, float(outcome == "YES"), judge="test"))


# id: (step verdicts, outcome verdict)
KNOWN = {
    "all_good_yes#0": (["GOOD", "GOOD", "GOOD"], "YES"),
    "all_good_no#0": (["GOOD", "GOOD"], "NO"),
    "one_bad_yes#0": (["GOOD", "BAD", "GOOD"], "YES"),
    "one_bad_no#0": (["BAD"], "NO"),
    "unjudged_yes#0": (["GOOD", None], "YES"),
    "unjudged_outcome#0": (["GOOD"], None),
}

EXPECTED = {
    "none": set(KNOWN),
    "process": {"all_good_yes#0", "all_good_no#0", "unjudged_outcome#0"},
    "outcome": {"all_good_yes#0", "one_bad_yes#0", "unjudged_yes#0"},
    "process_and_outcome": {"all_good_yes#0"},
}


def known_trajectories(seed=0):
  rng = np.random.default_rng(seed)
  return [make_trajectory(rng, tid, *spec) for tid, spec in KNOWN.items()]
