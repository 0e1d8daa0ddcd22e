"""Loaders for the benchmarks' released file formats (docs/method.md lists them), and TFDS gsm8k.

Each returns questions and, for QA sets, the passages its search corpus is built
from. Record files may be JSON lines or one JSON list (both layouts are shared
for every set). A malformed record, bytes that are not UTF-8, or an empty file
raise ValueError naming the file, the line and the field. Question ids name
their file where the set has no ids of its own (GSM8K: `gsm8k:gsm8k/train.jsonl:7`),
so ids of a training and a test file never collide.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging

from swirl_jax.data.jsonl import read_json, read_records
from swirl_jax.records import Question
from swirl_jax.records import Passage


@dataclasses.dataclass
class Dataset:
  questions: list[Question]
  passages: list[Passage]
  skipped: list[str] = dataclasses.field(default_factory=list)  # records left out, and why


def _checked(path: str, found: list[tuple[str, Question]], passages: list[Passage],
             skipped: list[str] = ()) -> Dataset:
  """The questions of a file, each with an id, a question and a gold answer, no id twice: else a
  ValueError naming the file, the line and the field (both lines for a repeated id). Records a set
  marks as having no answer are left out, counted and logged."""
  seen: dict[str, str] = {}
  for where, question in found:
    if not question.question.strip():
      raise ValueError(f"{where}: field 'question' is empty")
    if not question.answers or not str(question.answers[0]).strip():
      raise ValueError(f"{where}: the gold answer is empty")
    if question.id in seen:
      raise ValueError(f"{where}: id {question.id!r} is already the id of {seen[question.id]}")
    seen[question.id] = where
  if skipped:
    logging.warning("%s: %d records left out (%s)", path, len(skipped), skipped[0])
  return Dataset([q for _, q in found], _dedup(passages), list(skipped))


def _field(record: dict, name: str, where: str, kind=str):
  value = record.get(name) if isinstance(record, dict) else None
  if not isinstance(value, kind):
    kind_name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
    raise ValueError(f"{where}: field {name!r} is missing or not a {kind_name}")
  return value


def gsm8k_answer(solution: str, where: str) -> str:
  """The number after `#### ` on the solution's last line, without thousands commas."""
  match = re.search(r"####\s*(.+?)\s*$", solution.strip())
  if not match:
    raise ValueError(f"{where}: field 'answer' has no '#### ' final answer")
  return match.group(1).replace(",", "")


def _file_id(source: str, path: str, index: int) -> str:
  """An id naming the file (with its folder: train/data.jsonl and dev/data.jsonl differ) and the
  record's index in it, for sets whose records carry none."""
  absolute = os.path.abspath(path)
  return f"{source}:{os.path.basename(os.path.dirname(absolute))}/{os.path.basename(absolute)}:{index}"


def load_gsm8k(path: str) -> Dataset:
  """GSM8K JSONL (or a JSON list): {"question", "answer"}; the gold answer follows `#### `."""
  found = []
  for i, (where, r) in enumerate(read_records(path)):
    found.append((where, Question(_file_id("gsm8k", path, i), _field(r, "question", where),
                                  (gsm8k_answer(_field(r, "answer", where), where),), "gsm8k")))
  return _checked(path, found, [])


def load_gsm8k_tfds(split: str = "test", data_dir: str | None = None) -> Dataset:
  """TFDS `gsm8k`, when the user has prepared it (nothing is downloaded)."""
  import tensorflow_datasets as tfds
  try:
    dataset = tfds.load("gsm8k", split=split, data_dir=data_dir, download=False)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
    raise FileNotFoundError(
        f"TFDS gsm8k is not prepared under {data_dir or '~/tensorflow_datasets'} (nothing is downloaded "
        f"at run time): prepare it with `tfds build gsm8k` where you have network, or use the "
        f"released JSONL with build_task(name='gsm8k', path=...). ({type(e).__name__})") from None
  questions = []
  for i, example in enumerate(tfds.as_numpy(dataset)):
    where = f"tfds:gsm8k/{split}[{i}]"
    question, solution = example["question"].decode(), example["answer"].decode()
    questions.append(Question(f"gsm8k:tfds-{split}:{i}", question, (gsm8k_answer(solution, where),), "gsm8k"))
  return Dataset(questions, [])


def _dedup(passages: list[Passage]) -> list[Passage]:
  return list(dict.fromkeys(passages))


def load_hotpotqa(path: str) -> Dataset:
  """HotPotQA: a JSON list (as released) or JSON lines of {_id, question, answer, context: [[title,
  [sentences]]]}; or IRCoT's processed layout (the 500-question dev sample with paragraphs), JSON
  lines or a list of {question_id, question_text, answers_objects: [{spans: [...]}], contexts:
  [{title, paragraph_text, is_supporting}]}."""
  found, passages = [], []
  for where, r in read_records(path):
    if isinstance(r, dict) and "question_text" in r:
      found.append((where, _ircot_record(r, where, passages)))
      continue
    for title_and_sentences in _field(r, "context", where, list):
      if not (isinstance(title_and_sentences, list) and len(title_and_sentences) == 2
              and isinstance(title_and_sentences[1], list)):
        raise ValueError(f"{where}: field 'context' entries must be [title, [sentences]]")
      title, sentences = title_and_sentences
      passages.append(Passage(str(title), "".join(map(str, sentences)).strip()))
    found.append((where, Question(_field(r, "_id", where), _field(r, "question", where),
                                  (_field(r, "answer", where),), "hotpotqa")))
  return _checked(path, found, passages)


def _ircot_record(r: dict, where: str, passages: list[Passage]) -> Question:
  """One record of IRCoT's processed layout; its paragraphs go into `passages`."""
  for j, p in enumerate(_field(r, "contexts", where, list)):
    passages.append(Passage(str(_field(p, "title", f"{where}: contexts[{j}]")),
                            _field(p, "paragraph_text", f"{where}: contexts[{j}]")))
  answers = []
  for j, answer in enumerate(_field(r, "answers_objects", where, list)):
    spans = _field(answer, "spans", f"{where}: answers_objects[{j}]", list)
    answers += [str(span) for span in spans]
  return Question(str(_field(r, "question_id", where, (str, int))), _field(r, "question_text", where),
                  tuple(answers), "hotpotqa")


def load_musique(path: str) -> Dataset:
  """MuSiQue: JSON lines (as released) or a JSON list of {id, paragraphs: [{title, paragraph_text}],
  question, answer, answer_aliases}."""
  found, passages, skipped = [], [], []
  for where, r in read_records(path):
    if isinstance(r, dict) and r.get("answerable") is False:  # MuSiQue-full: no answer exists
      skipped.append(f"{where}: answerable is false")
      continue
    for j, p in enumerate(_field(r, "paragraphs", where, list)):
      passages.append(Passage(_field(p, "title", f"{where}: paragraphs[{j}]"),
                              _field(p, "paragraph_text", f"{where}: paragraphs[{j}]")))
    aliases = r.get("answer_aliases") or []
    if not isinstance(aliases, list):
      raise ValueError(f"{where}: field 'answer_aliases' is not a list")
    found.append((where, Question(_field(r, "id", where), _field(r, "question", where),
                                  (_field(r, "answer", where), *map(str, aliases)), "musique")))
  return _checked(path, found, passages, skipped)


def load_beerqa(path: str) -> Dataset:
  """BeerQA JSON {"version", "split", "data": [{id, question, answers: [...], context: [[title, text]]}]}."""
  data = read_json(path)
  records = _field(data, "data", path, list) if isinstance(data, dict) else None
  if records is None:
    raise ValueError(f"{path}: expected an object with a 'data' list")
  if not records:
    raise ValueError(f"{path}: field 'data' holds no records")
  found, passages = [], []
  for i, r in enumerate(records):
    where = f"{path}: data[{i}]"
    for entry in _field(r, "context", where, list):
      if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"{where}: field 'context' entries must be [title, text]")
      passages.append(Passage(str(entry[0]), str(entry[1])))
    answers = _field(r, "answers", where, list)
    if not answers:
      raise ValueError(f"{where}: field 'answers' is empty")
    found.append((where, Question(_field(r, "id", where), _field(r, "question", where),
                                  tuple(map(str, answers)), "beerqa")))
  return _checked(path, found, passages)


def load_cofca(path: str) -> Dataset:
  """CofCA (format varies): JSON list or JSONL of {question, answer, paragraphs}.

  `paragraphs` entries are {"title", "text"} objects or plain strings; an `id`
  is used when present.
  """
  found, passages = [], []
  for i, (where, r) in enumerate(read_records(path)):
    for j, p in enumerate(_field(r, "paragraphs", where, list)):
      if isinstance(p, str):
        passages.append(Passage(f"paragraph {i}.{j}", p))
      else:
        passages.append(Passage(_field(p, "title", f"{where}: paragraphs[{j}]"),
                                _field(p, "text", f"{where}: paragraphs[{j}]")))
    answer = _field(r, "answer", where, (str, int, float))
    found.append((where, Question(str(r.get("id", _file_id("cofca", path, i))), _field(r, "question", where),
                                  (str(answer),), "cofca")))
  return _checked(path, found, passages)


LOADERS = {"gsm8k": load_gsm8k, "hotpotqa": load_hotpotqa, "musique": load_musique,
           "beerqa": load_beerqa, "cofca": load_cofca}
