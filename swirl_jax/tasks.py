"""Tasks: where questions come from, which tool answers them, and how they are prompted."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Sequence

import gin

from swirl_jax import provenance
from swirl_jax.data import builtin_arithmetic, builtin_encyclopedia, loaders
from swirl_jax.environment import protocol
from swirl_jax.environment.calculator import Calculator
from swirl_jax.environment.search import BM25Search, HttpSearch
from swirl_jax.environment.tool import Tool
from swirl_jax.records import Passage, Question
from swirl_jax.sampling.interfaces import Vocabulary

MATH_EXAMPLES = (
    protocol.WorkedExample(
        "A shop has 3 crates with 12 pears each. It sells 10 pears. How many pears are left?",
        (("First the total number of pears.", "math_exp", "3 * 12", "36.0"),
         ("Now take away the pears sold.", "math_exp", "36 - 10", "26.0")),
        "26 pears are left.", "26"),
    protocol.WorkedExample(
        "Mia reads 15 pages a day for 4 days, then splits the pages evenly over 3 reports. "
        "How many pages go in each report?",
        (("Pages read in total.", "math_exp", "15 * 4", "60.0"),
         ("Split them over 3 reports.", "math_exp", "60 / 3", "20.0")),
        "Each report has 20 pages.", "20"),
)

SEARCH_EXAMPLES = (
    protocol.WorkedExample(
        "In which country was the founder of the Ardent Company born?",
        (("I need the founder first.", "search_query", "founder of the Ardent Company",
          "Ardent Company: The Ardent Company was founded in 1820 by Lena Orvo. Its headquarters are "
          "in Pellina."),
         ("Now where Lena Orvo was born.", "search_query", "Lena Orvo born",
          "Lena Orvo: Lena Orvo was born in the city of Tessa. Lena Orvo worked in botany."),
         ("Now the country of Tessa.", "search_query", "Tessa country",
          "Tessa: Tessa is a city in the country of Morland.")),
        "Lena Orvo was born in Tessa, which is in Morland.", "Morland"),
)


@dataclasses.dataclass
class Task:
  name: str
  questions: list[Question]
  tools: list[Tool]
  template: protocol.PromptTemplate
  max_steps: int
  passages: tuple[Passage, ...] = ()  # the local search corpus (none for calculator tasks)

  @property
  def titles(self) -> list[str]:
    """The corpus's titles: what a rule judge accepts as a search step's target."""
    return [p.title for p in self.passages]

  def use_vocabulary(self, vocab: Vocabulary) -> "Task":
    """Tool results are cut to a length in the policy's tokens; the task is built (and its data
    checked) before the policy loads, so the vocabulary comes in afterwards."""
    for tool in self.tools:
      if hasattr(tool, "vocab"):
        tool.vocab = vocab
    return self


@gin.configurable
def build_task(name: str = "builtin_arithmetic", split: str = "train", num_questions: int | None = None,
               path: str | None = None, eval_path: str | None = None, held_out_fraction: float = 0.0,
               seed: int = 0, search: str = "bm25", template: protocol.PromptTemplate | None = None,
               encyclopedia_organizations: int = 200, arithmetic_max_steps: int = 6, vocab: Vocabulary=None,
               allow_training_questions: bool = False) -> Task:
  """A task by name: builtin_arithmetic, builtin_encyclopedia, or a benchmark file.

  Benchmark names (gsm8k, hotpotqa, musique, beerqa, cofca) read `path` for the
  train split. The test split (evaluation) reads `eval_path`, or, when only one
  file is given, the `held_out_fraction` of `path`'s questions chosen by a hash
  of their ids (those are then left out of the train split); with neither, the
  test split is an error rather than the training questions. gsm8k_tfds reads
  a prepared TFDS gsm8k (`path` = its data_dir, optional); QA sets build their
  BM25 corpus from their own file's paragraphs. Step caps follow the paper: 10
  with the calculator, 5 with search. The encyclopedia has 4 questions per
  organization, 30% of them held out; arithmetic problems take 2 to
  `arithmetic_max_steps` calculator steps.

  The tools and the prompt are gin's: `Calculator()`, and for search tasks
  `BM25Search(passages)` (search='bm25') or `HttpSearch()` (search='http', a
  user's service at `HttpSearch.url`); `template` (default: the gin-configured
  `PromptTemplate()`) has its unset fields filled with the tool's instructions
  and worked examples.
  """
  if search not in SEARCH_BACKENDS:
    raise ValueError(f"build_task.search={search!r}; use one of {SEARCH_BACKENDS}")
  if not 0.0 <= held_out_fraction < 1.0:
    raise ValueError(f"build_task.held_out_fraction={held_out_fraction} must be in [0, 1)")
  if eval_path is not None and held_out_fraction > 0.0:
    raise ValueError("build_task: set eval_path (a test file) or held_out_fraction (part of path), not both")
  if name not in loaders.LOADERS and (eval_path is not None or held_out_fraction > 0.0):
    raise ValueError(f"build_task(name={name!r}) has its own test split; eval_path and held_out_fraction apply "
                     f"to benchmark files ({', '.join(loaders.LOADERS)})")
  if name == "builtin_arithmetic":
    questions = builtin_arithmetic.arithmetic_questions(num_questions or 1000, seed=seed, split=split,
                                                        max_steps=arithmetic_max_steps)
    passages = None
  elif name == "builtin_encyclopedia":
    encyclopedia = builtin_encyclopedia.build_encyclopedia(organizations=encyclopedia_organizations, seed=seed)
    questions = builtin_encyclopedia.encyclopedia_split(encyclopedia, split)
    passages = encyclopedia.passages
  elif name == "gsm8k_tfds":
    questions, passages = loaders.load_gsm8k_tfds("train" if split == "train" else "test", path).questions, None
  elif name in loaders.LOADERS:
    questions, passages = _file_questions(name, split, path, eval_path, held_out_fraction)
    if split == "test" and eval_path is not None and path is not None and not allow_training_questions:
      # The test file must not hold the training file's questions (the same file, or a copy).
      refuse_overlap(questions, loaders.LOADERS[name](path).questions,
                     where=f"questions of the training file {path} (build_task.path)")
  else:
    raise ValueError(f"build_task: unknown task {name!r}; known: builtin_arithmetic, "
                     f"builtin_encyclopedia, gsm8k_tfds, {', '.join(loaders.LOADERS)}")
  if num_questions is not None:
    questions = questions[:num_questions]
  template = template or protocol.PromptTemplate()
  if passages is None:
    tools: list[Tool] = [Calculator()]
    template = template.with_defaults(protocol.MATH_INSTRUCTIONS, MATH_EXAMPLES)
    max_steps = 10
  else:
    tools = [BM25Search(passages, vocab=vocab) if search == "bm25" else HttpSearch(vocab=vocab)]
    template = template.with_defaults(protocol.SEARCH_INSTRUCTIONS, SEARCH_EXAMPLES)
    max_steps = 5
  return Task(name, questions, tools, template, max_steps, tuple(passages or ()))


SEARCH_BACKENDS = ("bm25", "http")


QA_SETS = ("hotpotqa", "musique", "beerqa", "cofca")


def _file_questions(name: str, split: str, path: str | None, eval_path: str | None,
                    held_out_fraction: float) -> tuple[list[Question], list | None]:
  """A benchmark file's questions for `split`, and its passages (None for a calculator set)."""
  if split not in ("train", "test"):
    raise ValueError(f"build_task(name={name!r}): split {split!r} is not 'train' or 'test'")
  if split == "train" or eval_path is None:
    if path is None:
      raise ValueError(f"build_task(name={name!r}) needs path= to the dataset file")
    source = path
  else:
    source = eval_path
  if split == "test" and eval_path is None and held_out_fraction == 0.0:
    raise ValueError(
        f"build_task(name={name!r}, split='test'): no held-out questions; set build_task.eval_path to the "
        f"benchmark's test file, or build_task.held_out_fraction to hold out part of {path} (evaluating on "
        f"the training file would measure memorization)")
  dataset = loaders.LOADERS[name](source)
  questions = dataset.questions
  if eval_path is None and held_out_fraction > 0.0:
    questions = [q for q in questions if held_out(q.question, held_out_fraction) == (split == "test")]
    if not questions:
      raise ValueError(f"{source}: held_out_fraction={held_out_fraction} leaves no {split} questions")
  if name not in QA_SETS:
    return questions, None
  if not dataset.passages:
    raise ValueError(f"{source}: no paragraphs in any record; a {name} task searches its own paragraphs")
  return questions, dataset.passages


def held_out(question: str, fraction: float) -> bool:
  """Whether a question belongs to the held-out part: a hash of its normalized text, so the split
  does not move when records are added, removed or reordered, and a question asked twice lands
  on one side."""
  digest = hashlib.blake2b(_normalized(question).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "big") < fraction * 2 ** 64


def _normalized(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip().lower()


def refuse_overlap(evaluation: Sequence[Question], training: Sequence[Question] = (),
                   training_digests: Sequence[str] = (), where: str = "the training questions",
                   allowed_by: str = "build_task.allow_training_questions") -> None:
  """Refuses evaluation questions that training also saw: the same id, or the same normalized text
  (a copy of the training file, or its digests recorded with a checkpoint)."""
  ids = {q.id for q in training}
  digests = set(provenance.question_digests(q.question for q in training)) | set(training_digests)
  shared = [q.id for q in evaluation if q.id in ids or provenance.question_digests([q.question])[0] in digests]
  if shared:
    raise ValueError(
        f"{len(shared)} of {len(evaluation)} evaluation questions are also {where} (e.g. {', '.join(shared[:3])}): "
        "evaluating on them measures memorization. Give the test split its own file (build_task.eval_path) or hold "
        f"out part of one file (build_task.held_out_fraction); set {allowed_by}=True to evaluate on them anyway")


def check_held_out(train: Task, evaluation: Task) -> None:
  """Refuses evaluation questions that Stage 1 also sees (the same id or the same question text)."""
  refuse_overlap(evaluation.questions, train.questions, where=f"training questions of {train.name}")
