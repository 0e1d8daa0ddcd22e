"""Trajectory records are checked when read: a bad field is an error naming file, line and field."""

import json
import re

import pytest

from swirl_jax.data import trajectory_io
from swirl_jax.testing.judged import known_trajectories


def _shard_with(tmp_path, edit):
  """A shard of known trajectories whose second record is changed by `edit(record)`."""
  records = [json.loads(t.to_json()) for t in known_trajectories()]
  edit(records[1])
  path = tmp_path / "trajectories-s00000.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _set(path, value):
  def edit(record):
    target = record
    for key in path[:-1]:
      target = target[key]
    target[path[-1]] = value
  return edit


def test_a_written_shard_reads_back_equal(tmp_path):
  trajectories = known_trajectories()
  # Model text may hold any character; these three are line breaks to str.splitlines(), not to JSONL.
  trajectories[1].steps[0].action_text = "a\u2028b\x85c\u2029d\re"
  trajectory_io.write_shard(str(tmp_path / "trajectories-s00000.jsonl"), trajectories)
  assert list(trajectory_io.read_all(str(tmp_path))) == trajectories


@pytest.mark.parametrize("edit, field, problem", [
    # Fewer log-probs than action tokens would shift every later feature by one.
    (lambda r: r["steps"][0]["behaviour_logprobs"].pop(), "steps[0].behaviour_logprobs", r"has \d+ entries for \d+ action"),
    # A string is iterable: it would become one token per character.
    (_set(("steps", 0, "action_tokens"), "abc"), "steps[0].action_tokens", "is not a list of token ids"),
    (_set(("steps", 1, "context_tokens"), [1, -2]), "steps[1].context_tokens", "is not a list of token ids"),
    (_set(("steps", 0, "process", "score"), "high"), "steps[0].process.score", "is 'high', not a number"),
    (_set(("steps", 0, "process", "verdict"), "MAYBE"), "steps[0].process.verdict", "is 'MAYBE'"),
    (_set(("outcome", "score"), 3.0), "outcome.score", r"is 3\.0, not a number in \[0, 1\]"),
    (_set(("steps", 1, "index"), 5), "steps[1].index", "is 5, not 1"),
    (_set(("steps", 0, "kind"), "guess"), "steps[0].kind", "is 'guess'"),
    (_set(("steps", 0, "behaviour_logprobs", 0), 0.5), "steps[0].behaviour_logprobs", "is not a list of finite log"),
    (_set(("sample_index",), "0"), "sample_index", "is not a whole number"),
    (_set(("finish",), "done"), "finish", "is 'done'"),
    (_set(("gold_answers",), "a"), "gold_answers", "is not a list of strings"),
    (lambda r: r.pop("question"), "question", "is missing"),
    (_set(("extra",), 1), "extra", "is not a field"),
])
def test_a_malformed_record_names_file_line_and_field(tmp_path, edit, field, problem):
  path = _shard_with(tmp_path, edit)
  with pytest.raises(ValueError, match=rf"trajectories-s00000\.jsonl:2: field '{re.escape(field)}' {problem}"):
    list(trajectory_io.read_shard(path))


def test_non_utf8_bytes_in_a_shard_name_the_line(tmp_path):
  path = tmp_path / "trajectories-s00000.jsonl"
  trajectory_io.write_shard(str(path), known_trajectories()[:2])
  path.write_bytes(path.read_bytes() + b'{"id": "\xff"}\n')
  with pytest.raises(ValueError, match=r"trajectories-s00000\.jsonl:3: not UTF-8"):
    list(trajectory_io.read_shard(str(path)))
