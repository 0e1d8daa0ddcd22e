"""Benchmark loaders on files written here, built-in tasks, and search quality."""

import http.server
import json

import pytest

from swirl_jax import tasks
from swirl_jax.data import loaders
from swirl_jax.data.builtin_arithmetic import arithmetic_questions
from swirl_jax.data.builtin_encyclopedia import build_encyclopedia, encyclopedia_split
from swirl_jax.environment.calculator import Calculator
from swirl_jax.environment.search import BM25Search, HttpSearch, load_passages_jsonl
from swirl_jax.records import Passage
from swirl_jax.testing.local_server import serving


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_gsm8k(tmp_path):
  path = _write_jsonl(tmp_path / "gsm8k.jsonl", [
      {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
      {"question": "Money?", "answer": "so\n#### 1,250"}])
  data = loaders.load_gsm8k(path)
  assert [q.answers for q in data.questions] == [("7",), ("1250",)]
  bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "#### 1"}, {"question": "no answer"}])
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'answer' is missing"):
    loaders.load_gsm8k(bad)
  (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
  with pytest.raises(ValueError, match=r"broken\.jsonl:2: not JSON"):
    loaders.load_gsm8k(str(tmp_path / "broken.jsonl"))
  nofinal = _write_jsonl(tmp_path / "nofinal.jsonl", [{"question": "q", "answer": "7"}])
  with pytest.raises(ValueError, match=r"nofinal\.jsonl:1: field 'answer' has no '#### '"):
    loaders.load_gsm8k(nofinal)


def test_gsm8k_tfds_unprepared_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="TFDS gsm8k is not prepared under .*nothing is downloaded"):
    loaders.load_gsm8k_tfds("test", data_dir=str(tmp_path))


def test_hotpotqa(tmp_path):
  record = {"_id": "h1", "question": "Where?", "answer": "Paris", "type": "bridge", "level": "hard",
            "supporting_facts": [["A", 0]], "context": [["A", ["A is in ", "Paris."]], ["B", ["B."]]]}
  path = tmp_path / "hotpot.json"
  path.write_text(json.dumps([record, {**record, "_id": "h2"}]))  # two questions on the same paragraphs
  data = loaders.load_hotpotqa(str(path))
  assert data.questions[0].answers == ("Paris",)
  assert data.passages == [Passage("A", "A is in Paris."), Passage("B", "B.")]  # deduplicated
  path.write_text(json.dumps([{**record, "context": [["A", "not a list"]]}]))
  with pytest.raises(ValueError, match=r"hotpot\.json:1 \(record 0\): field 'context' entries"):
    loaders.load_hotpotqa(str(path))


def test_musique(tmp_path):
  record = {"id": "m1", "paragraphs": [{"idx": 0, "title": "T", "paragraph_text": "Text.", "is_supporting": True}],
            "question": "Q?", "question_decomposition": [], "answer": "A", "answer_aliases": ["a1"],
            "answerable": True}
  data = loaders.load_musique(_write_jsonl(tmp_path / "m.jsonl", [record]))
  assert data.questions[0].answers == ("A", "a1") and data.passages == [Passage("T", "Text.")]
  bad = {**record, "paragraphs": [{"title": "T"}]}
  with pytest.raises(ValueError, match=r"m2\.jsonl:1: paragraphs\[0\]: field 'paragraph_text'"):
    loaders.load_musique(_write_jsonl(tmp_path / "m2.jsonl", [bad]))


def test_beerqa(tmp_path):
  data = {"version": "1.0", "split": "dev", "data": [
      {"id": "b1", "src": "hotpotqa", "question": "Q?", "answers": ["x", "y"], "context": [["T", "text"]]}]}
  path = tmp_path / "beer.json"
  path.write_text(json.dumps(data))
  loaded = loaders.load_beerqa(str(path))
  assert loaded.questions[0].answers == ("x", "y") and loaded.passages == [Passage("T", "text")]
  data["data"][0]["answers"] = []
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"beer\.json: data\[0\]: field 'answers' is empty"):
    loaders.load_beerqa(str(path))


def test_cofca(tmp_path):
  records = [{"question": "Q?", "answer": 3, "paragraphs": ["plain text", {"title": "T", "text": "t"}]}]
  loaded = loaders.load_cofca(_write_jsonl(tmp_path / "c.jsonl", records))
  assert loaded.questions[0].answers == ("3",) and loaded.passages[1] == Passage("T", "t")
  (tmp_path / "c.json").write_text(json.dumps([{"question": "Q?", "paragraphs": []}]))
  with pytest.raises(ValueError, match=r"c\.json:1 \(record 0\): field 'answer'"):
    loaders.load_cofca(str(tmp_path / "c.json"))


def test_corpus_jsonl(tmp_path):
  path = _write_jsonl(tmp_path / "corpus.jsonl", [{"title": "A", "text": "a"}, {"title": "B"}])
  with pytest.raises(ValueError, match=r"corpus\.jsonl:2: field 'text'"):
    load_passages_jsonl(path)


def test_builtin_arithmetic_is_deterministic_and_solvable():
  a, b = arithmetic_questions(50, seed=3), arithmetic_questions(50, seed=3)
  assert a == b and a != arithmetic_questions(50, seed=3, split="test")
  calculator = Calculator()
  for q in a:
    assert 2 <= len(q.gold_steps) <= 6
    values = [calculator.run(step).output for step in q.gold_steps]
    assert values[-1] == f"{q.answers[0]}.0"  # the gold steps compute the gold answer


def test_builtin_search_ranks_the_gold_paragraph_first():
  """The paragraph that holds each gold sub-query's answer ranks first >= 90% of the time."""
  encyclopedia = build_encyclopedia(seed=0)
  search = BM25Search(encyclopedia.passages)
  by_title = {p.title: p for p in encyclopedia.passages}
  hits = total = 0
  for q in encyclopedia.questions:
    for sub_query in q.gold_steps:
      subject = max((t for t in by_title if t in sub_query), key=len)  # the entity asked about
      top = search.search(sub_query, 1)
      hits += bool(top) and top[0][0] == by_title[subject]
      total += 1
  assert total > 1000 and hits / total >= 0.9, hits / total
  train, test = encyclopedia_split(encyclopedia, "train"), encyclopedia_split(encyclopedia, "test")
  assert not set(q.id for q in train) & set(q.id for q in test) and len(test) >= 200


class _Handler(http.server.BaseHTTPRequestHandler):
  calls = 0
  mode = "ok"

  def do_POST(self):
    type(self).calls += 1
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    if self.mode == "fail_once" and type(self).calls == 1:
      self.send_response(500)
      self.end_headers()
      return
    payload = {"results": [{"title": "T", "text": f"about {body['query']}"}]} if self.mode != "garbage" else [1]
    data = json.dumps(payload).encode()
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.mark.parametrize("mode", ["ok", "fail_once", "garbage"])
def test_http_search_against_a_local_server(mode):
  _Handler.calls, _Handler.mode = 0, mode
  with serving(_Handler) as port:
    tool = HttpSearch(f"http://127.0.0.1:{port}/search", retries=2, backoff_s=0.01, timeout_s=5)
    result = tool.run("zebra facts")
  if mode == "garbage":
    assert result.error and "unavailable" in result.output and _Handler.calls == 3
  else:
    assert not result.error and result.output == "T: about zebra facts"
    assert _Handler.calls == (2 if mode == "fail_once" else 1)
  assert HttpSearch("http://127.0.0.1:9/none", retries=0, timeout_s=0.5).run("x").error


# -- bad input: named file and line, both layouts, no silent emptiness -------------------------

_MUSIQUE = {"id": "m1", "paragraphs": [{"title": "T", "paragraph_text": "Text."}], "question": "Q?",
            "answer": "A"}
_HOTPOT = {"_id": "h1", "question": "Where?", "answer": "Paris", "context": [["A", ["A is in ", "Paris."]]]}


@pytest.mark.parametrize("loader, record", [(loaders.load_musique, _MUSIQUE), (loaders.load_hotpotqa, _HOTPOT)])
def test_musique_and_hotpotqa_read_both_layouts(tmp_path, loader, record):
  second = {**record, "id": "m2", "_id": "h2", "question": "Q2?"}
  as_lines = _write_jsonl(tmp_path / "lines.jsonl", [record, second])
  as_list = tmp_path / "list.json"
  as_list.write_text(json.dumps([record, second], indent=2))
  from_lines, from_list = loader(as_lines), loader(str(as_list))
  assert from_lines.questions == from_list.questions and len(from_list.questions) == 2
  assert from_lines.passages == from_list.passages
  # An error in the list layout names the line the bad record starts on, and its index.
  as_list.write_text("[\n" + json.dumps(record) + ",\n" + json.dumps({**second, "question": 7}) + "\n]")
  with pytest.raises(ValueError, match=r"list\.json:3 \(record 1\): field 'question'"):
    loader(str(as_list))
  # The released one-line layout, with a byte-order mark: the record index tells records apart.
  as_list.write_text("\ufeff" + json.dumps([record, record, {**second, "question": 7}]), encoding="utf-8")
  with pytest.raises(ValueError, match=r"list\.json:1 \(record 2\): field 'question'"):
    loader(str(as_list))


def test_non_utf8_empty_and_truncated_files_are_named_errors(tmp_path):
  latin1 = tmp_path / "latin1.jsonl"
  latin1.write_bytes(json.dumps({"question": "ok", "answer": "#### 1"}).encode() + b"\n"
                     + '{"question": "caf\u00e9", "answer": "#### 2"}\n'.encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte \d+"):
    loaders.load_gsm8k(str(latin1))
  for name, text in [("empty.jsonl", ""), ("blank.json", " \n\n"), ("nothing.json", "[]")]:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: (the file is empty|holds no records)"):
      loaders.load_musique(str(tmp_path / name))
  (tmp_path / "open.json").write_text("[\n" + json.dumps(_HOTPOT) + ",\n")
  with pytest.raises(ValueError, match=r"open\.json:3: not JSON"):
    loaders.load_hotpotqa(str(tmp_path / "open.json"))
  (tmp_path / "beer.json").write_text(json.dumps({"data": []}))
  with pytest.raises(ValueError, match=r"beer\.json: field 'data' holds no records"):
    loaders.load_beerqa(str(tmp_path / "beer.json"))


def test_a_qa_file_without_paragraphs_is_refused_not_a_calculator_task(tmp_path):
  path = _write_jsonl(tmp_path / "bare.jsonl", [{"question": "Q?", "answer": "A", "paragraphs": []}])
  with pytest.raises(ValueError, match=r"bare\.jsonl: no paragraphs in any record"):
    tasks.build_task("cofca", path=path)


# -- held-out evaluation ---------------------------------------------------------------------------

def _gsm8k_file(path, questions):
  return _write_jsonl(path, [{"question": q, "answer": f"#### {i}"} for i, q in enumerate(questions)])


def test_the_test_split_of_a_file_task_is_never_the_training_file(tmp_path):
  train = _gsm8k_file(tmp_path / "train.jsonl", [f"train question {i}?" for i in range(40)])
  test = _gsm8k_file(tmp_path / "test.jsonl", [f"test question {i}?" for i in range(10)])
  with pytest.raises(ValueError, match="no held-out questions; set build_task.eval_path"):
    tasks.build_task("gsm8k", split="test", path=train)
  # A separate file: ids name their file, so the two files' ids cannot collide.
  train_task = tasks.build_task("gsm8k", split="train", path=train, eval_path=test)
  test_task = tasks.build_task("gsm8k", split="test", path=train, eval_path=test)
  assert [q.question for q in test_task.questions] == [f"test question {i}?" for i in range(10)]
  folder = tmp_path.name
  assert train_task.questions[0].id == f"gsm8k:{folder}/train.jsonl:0"
  assert test_task.questions[0].id == f"gsm8k:{folder}/test.jsonl:0"
  # Files of one name in two folders (train/data.jsonl, dev/data.jsonl) keep apart.
  for split in ("train", "dev"):
    (tmp_path / split).mkdir()
    _gsm8k_file(tmp_path / split / "data.jsonl", [f"{split} question?"])
  ids = [tasks.build_task("gsm8k", path=str(tmp_path / s / "data.jsonl")).questions[0].id for s in ("train", "dev")]
  assert ids == ["gsm8k:train/data.jsonl:0", "gsm8k:dev/data.jsonl:0"]
  tasks.check_held_out(train_task, test_task)
  # A held-out part of one file: disjoint from the train split, and together they are the file.
  kept = tasks.build_task("gsm8k", split="train", path=train, held_out_fraction=0.25)
  held = tasks.build_task("gsm8k", split="test", path=train, held_out_fraction=0.25)
  assert 0 < len(held.questions) < 40 and len(kept.questions) + len(held.questions) == 40
  assert not {q.id for q in kept.questions} & {q.id for q in held.questions}
  tasks.check_held_out(kept, held)
  # The split follows the text: reordered records, or one asked twice, stay on their side.
  texts = [f"train question {i}?" for i in range(40)]
  shuffled = _gsm8k_file(tmp_path / "shuffled.jsonl", texts[::-1] + texts[:5])
  held_again = tasks.build_task("gsm8k", split="test", path=shuffled, held_out_fraction=0.25)
  kept_again = tasks.build_task("gsm8k", split="train", path=shuffled, held_out_fraction=0.25)
  assert {q.question for q in held_again.questions} == {q.question for q in held.questions}
  tasks.check_held_out(kept_again, held_again)
  with pytest.raises(ValueError, match="eval_path .* or held_out_fraction .*, not both"):
    tasks.build_task("gsm8k", path=train, eval_path=test, held_out_fraction=0.1)
  with pytest.raises(ValueError, match="has its own test split"):
    tasks.build_task("builtin_arithmetic", split="test", eval_path=test)


def test_evaluation_questions_seen_in_training_are_refused(tmp_path):
  train = _gsm8k_file(tmp_path / "train.jsonl", [f"question {i}?" for i in range(10)])
  copy = _gsm8k_file(tmp_path / "copy.jsonl", ["Question   3?", "a new question?"])  # same text, other file
  train_task = tasks.build_task("gsm8k", split="train", path=train)
  # build_task's test split refuses them itself (every mode builds it), the same file or a copy ...
  with pytest.raises(ValueError, match=r"1 of 2 evaluation questions are also questions of the training file "
                                       rf".*train\.jsonl \(build_task\.path\) \(e\.g\. gsm8k:{tmp_path.name}/copy\.jsonl:0\)"
                                       r".*allow_training_questions=True"):
    tasks.build_task("gsm8k", split="test", path=train, eval_path=copy)
  with pytest.raises(ValueError, match="10 of 10 evaluation questions are also questions of the training file"):
    tasks.build_task("gsm8k", split="test", path=train, eval_path=train)
  # ... unless allowed explicitly; the pipeline's check against Stage 1's task still refuses them.
  allowed = tasks.build_task("gsm8k", split="test", path=train, eval_path=copy, allow_training_questions=True)
  with pytest.raises(ValueError, match=r"1 of 2 evaluation questions are also training questions of gsm8k"):
    tasks.check_held_out(train_task, allowed)


def test_builtin_arithmetic_train_and_test_texts_never_meet():
  for seed in range(3):  # the old generator shared 1 of 1000 test texts with 5000 train texts for seeds 0 and 2
    train = {q.question for q in arithmetic_questions(5000, seed=seed)}
    test = arithmetic_questions(1000, seed=seed, split="test")
    assert not [q for q in test if q.question in train]


def test_empty_questions_and_answers_and_repeated_ids_are_refused_with_file_and_line(tmp_path):
  for loader, record, field, bad, message in [
      (loaders.load_musique, _MUSIQUE, "answer", "", "the gold answer is empty"),
      (loaders.load_hotpotqa, _HOTPOT, "question", "  ", "field 'question' is empty"),
      (loaders.load_hotpotqa, _HOTPOT, "answer", "", "the gold answer is empty")]:
    path = _write_jsonl(tmp_path / f"bad-{field}.jsonl", [{**record, "id": "a", "_id": "a"}, {**record, field: bad}])
    with pytest.raises(ValueError, match=rf"bad-{field}\.jsonl:2: {message}"):
      loader(path)
  # A repeated id names both lines, when the task is built (before any model loads).
  path = _write_jsonl(tmp_path / "twice.jsonl", [_MUSIQUE, {**_MUSIQUE, "question": "Other?"}, _MUSIQUE])
  with pytest.raises(ValueError, match=r"twice\.jsonl:2: id 'm1' is already the id of .*twice\.jsonl:1"):
    tasks.build_task("musique", path=path)


def test_unanswerable_musique_records_are_left_out_and_counted(tmp_path):
  records = [_MUSIQUE, {**_MUSIQUE, "id": "m2", "answerable": False, "answer": ""},
             {**_MUSIQUE, "id": "m3", "answerable": True}]
  data = loaders.load_musique(_write_jsonl(tmp_path / "full.jsonl", records))
  assert [q.id for q in data.questions] == ["m1", "m3"]
  assert len(data.skipped) == 1 and "full.jsonl:2: answerable is false" in data.skipped[0]


def test_hotpotqa_in_ircot_s_processed_layout_reads_as_the_released_one(tmp_path):
  ircot = {"question_id": "h1", "question_text": "Where?",
           "answers_objects": [{"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Paris"]}],
           "contexts": [{"idx": 0, "title": "A", "paragraph_text": "A is in Paris.", "is_supporting": True},
                        {"idx": 1, "title": "B", "paragraph_text": "B is elsewhere.", "is_supporting": False}]}
  released = {"_id": "h1", "question": "Where?", "answer": "Paris",
              "context": [["A", ["A is in ", "Paris."]], ["B", ["B is elsewhere."]]]}
  expected = loaders.load_hotpotqa(_write_jsonl(tmp_path / "released.jsonl", [released]))
  as_lines = loaders.load_hotpotqa(_write_jsonl(tmp_path / "ircot.jsonl", [ircot]))
  (tmp_path / "ircot.json").write_text(json.dumps([ircot]))
  as_list = loaders.load_hotpotqa(str(tmp_path / "ircot.json"))
  assert as_lines.questions == as_list.questions == expected.questions
  assert as_lines.passages == as_list.passages == expected.passages
  with pytest.raises(ValueError, match=r"bad\.jsonl:1: contexts\[0\]: field 'paragraph_text'"):
    loaders.load_hotpotqa(_write_jsonl(tmp_path / "bad.jsonl", [{**ircot, "contexts": [{"title": "A"}]}]))
